#!/usr/bin/env bash
# The GPU checks of the CUDA path in one command, for a lent GPU machine whose Python has torch, onnx and
# onnxruntime but no TVM (see README, "CUDA"): unpacks TVM from ../shared/tools/gpu-bundle's pieces, records the
# machine, writes the CUDA table (scripts/cuda_table.py) and runs the tests marked `cuda`. Each step has its
# share of SECONDS (default 540) and writes into OUT_DIR as it goes, so a step cut short keeps what it measured.
#
#   bash scripts/gpu_session.sh OUT_DIR [SECONDS]
#
# The bundle's first two pieces are stashed by earlier calls (mkdir -p /root/stash && cp .gpu1/* /root/stash/,
# then .gpu2 likewise; GPU_STASH names another folder); .gpu3 is in the project root. Where `import tvm` works
# already, nothing is unpacked. OUT_DIR receives at most 9 files: session.log, env.txt, cuda_table.csv,
# cuda_table.md, table.log, pytest.log, results.csv, and with tuning tune.log and cuda-db.tar.xz.
#
# GPU_TUNE_MINUTES=N first tunes MobileNet v1/v2 fp32 at batch 1 and 32 on the GPU for N minutes (the table then
# takes those schedules) and returns the database as cuda-db.tar.xz (its `tuning/` folder; unpack it into a
# results folder here and pack it with `harness tune --shipped --device cuda --batch 1,32 --trials 0`). The table
# and tests keep 360 s of SECONDS; with GPU_ONLY_TUNE=1 tuning takes it all and the script ends there (a next call
# on the still-warm machine then writes the table with those schedules: they stay in /tmp/cuda-table).
set -uo pipefail
out=${1:?usage: bash scripts/gpu_session.sh OUT_DIR [SECONDS]}
budget=${2:-540}
[[ $budget =~ ^[0-9]+$ ]] || { echo "SECONDS must be a whole number, not '$budget'" >&2; exit 2; }
root=$(pwd)
end=$((SECONDS + budget))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/session.log"; }
# step NAME SECONDS LOG COMMAND...: COMMAND within SECONDS (skipped, with a line, when under 30 are left)
step() {
  local name=$1 seconds=$2 file=$3; shift 3
  if ((seconds < 30)); then log "$name: skipped (${seconds} s left)"; return; fi
  log "$name (at most ${seconds} s)"
  timeout "$seconds" "$@" > "$file" 2>&1
  log "$name: exit $?"
}

if ! python3 -c "import tvm" 2>/dev/null; then
  stash=${GPU_STASH:-/root/stash} site=/tmp/site
  mkdir -p "$site"
  if ! (cd "$site" && tar xJf "$root/.gpu3/rest.tar.xz" \
        && cat "$stash/compiler.xz.0" "$stash/compiler.xz.1" "$root/.gpu3/compiler.xz.2" | xz -dc > tvm/lib/libtvm_compiler.so) \
     || ! python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$root"/.gpu3/*.whl >>"$out/session.log" 2>&1
  then
    log "could not unpack TVM from $stash and .gpu3 (see ../shared/tools/gpu-bundle)"; exit 1
  fi
  export PYTHONPATH="$site:$PYTHONPATH"
fi

need="torch torchvision onnx onnxruntime onnxscript numpy pandas yaml sklearn tqdm psutil cloudpickle tornado xgboost
      torch_pruning pytest"
missing=$(python3 -c "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if not u.find_spec(m)))" $need)
if [[ -n $missing ]]; then
  log "missing Python modules: $missing (add them to GPU_BUNDLE_EXTRA; see README, CUDA): stopping"; exit 1
fi
{ nvidia-smi; python3 -c "import tvm, torch, onnx, onnxruntime as ort, numpy, harness
print('tvm', tvm.__version__, 'cuda', tvm.cuda(0).exist, tvm.cuda(0).device_name if tvm.cuda(0).exist else None)
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'onnx', onnx.__version__, 'onnxruntime',
      ort.__version__, ort.get_available_providers(), 'numpy', numpy.__version__)"
  lscpu | grep -E 'Model name|^CPU\(s\)'; } > "$out/env.txt" 2>&1
log "machine: $(grep -E '^tvm' "$out/env.txt")"
grep -q "cuda True" "$out/env.txt" || { log "TVM sees no CUDA GPU here: stopping (env.txt says why)"; exit 1; }

ws=/tmp/cuda-table
minutes=${GPU_TUNE_MINUTES:-0}
[[ $minutes =~ ^[0-9]+$ ]] || { log "GPU_TUNE_MINUTES must be a whole number, not '$minutes'"; exit 2; }
only=${GPU_ONLY_TUNE:-0}
reserve=$((only == 1 ? 0 : 360))  # unless only tuning: the table keeps at least 120 s and the tests 240
# tuning takes the export, task extraction and the last chunk's overrun (120 s) beyond its minutes
if ((minutes > 0 && minutes * 60 + 120 > end - SECONDS - reserve)); then
  log "GPU_TUNE_MINUTES=$minutes does not fit in $budget s (give SECONDS >= $((minutes * 60 + 120 + reserve))):" \
    "not tuning"
elif ((minutes > 0)); then
  step "tune v1/v2 fp32, batch 1 and 32, $minutes min" $((minutes * 60 + 120)) "$out/tune.log" \
    python3 -m harness tune v1_fp32 v2_fp32 --device cuda --batch 1,32 --minutes "$minutes" --trials 100000 \
    --results "$ws"
  [[ -d $ws/tuning ]] && tar -C "$ws" -cJf "$out/cuda-db.tar.xz" tuning \
    && log "database: $(du -h "$out/cuda-db.tar.xz" | cut -f1)"
fi
((only == 1)) && exit 0
step "CUDA table" $((end - SECONDS - 240)) "$out/table.log" \
  python3 scripts/cuda_table.py "$out" "$ws" "${GPU_JOBS:-8}"  # the cuda tests keep 240 s
cp "$ws/results.csv" "$out/results.csv" 2>/dev/null
step "tests marked cuda" $((end - SECONDS - 5)) "$out/pytest.log" \
  python3 -m pytest -m cuda -v -rs -p no:cacheprovider tests/test_cuda.py
log "tests: $(tail -1 "$out/pytest.log" 2>/dev/null)"
