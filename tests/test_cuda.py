"""`--device cuda`: CUDA artifacts build on any host; they run where an NVIDIA GPU is (tests marked `cuda`)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import tvm
from conftest import TINY_RECIPE, run_cli
from tvm.s_tir import meta_schedule as ms

from harness.compile import compile_onnx, import_onnx, kernels, runners, tuning
from harness.compile.target import build_target, target_key, target_spec
from harness.device import load_device
from harness.errors import HarnessError
from harness.export import export_onnx
from harness.models import build_model
from harness.specs import CompileOptions

HAS_GPU = tvm.cuda(0).exist
CUDA_RECIPE = TINY_RECIPE | {"train": {"epochs": 0}}


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_cuda_artifact_builds_without_a_gpu(fp16: bool, tmp_path: Path) -> None:
    model = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval()
    onnx_model = export_onnx(model, tmp_path / "m.onnx", resolution=32)
    artifact = compile_onnx(onnx_model, load_device("cuda"), tmp_path / "m.so",
                           options=CompileOptions(fp16=fp16))
    assert artifact.bytes > 0 and '"kind": "cuda"' in artifact.target
    assert artifact.report.schedules == "dlight" and bool(artifact.report.fp16) == fp16
    if not HAS_GPU:  # the library holds CUDA kernels, which only a CUDA runtime loads
        with pytest.raises(RuntimeError, match="cuda"):
            tvm.runtime.load_module(str(artifact.path))


@pytest.mark.skipif(HAS_GPU, reason="this host has a CUDA GPU: the run goes through")
@pytest.mark.parametrize("steps", [[], [{"quantize": {"dtype": "int8"}}]], ids=["fp32", "int8"])
def test_run_without_a_gpu_compiles_then_stops_with_one_line(steps: list, write_recipe, tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = run_cli("-q", "run", str(write_recipe(CUDA_RECIPE | {"steps": steps})), "--device", "cuda",
                  "--results", str(results))
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: device cuda: no CUDA device 0 found") and "artifact is kept at" in line
    assert Path(line.rpartition("kept at ")[2]).is_file()
    assert not (results / "results.csv").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with its driver")
def test_run_on_the_gpu_gives_a_row_per_batch(write_recipe, tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = run_cli("-q", "run", str(write_recipe(CUDA_RECIPE)), "--device", "cuda", "--batch", "1,4",
                  "--results", str(results))
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(results / "results.csv")
    assert list(rows["batch"]) == [1, 4]
    assert rows["gpu_name"].notna().all() and (rows["images_per_s"] > 0).all()
    assert rows["torch_latency_ms"].notna().all() and rows["torch_fp16_latency_ms"].notna().all()
    assert (rows["max_abs_diff"] < 1e-3).all()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with its driver")
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_fp16_and_int8_run_on_the_gpu(dtype: str, write_recipe, tmp_path: Path) -> None:
    results = tmp_path / "results"
    recipe = write_recipe(CUDA_RECIPE | {"steps": [{"quantize": {"dtype": dtype}}]})
    out = run_cli("-q", "run", str(recipe), "--device", "cuda", "--results", str(results))
    assert out.returncode == 0, out.stderr
    row = pd.read_csv(results / "results.csv").iloc[-1]
    assert row["dtype"] == dtype and row["images_per_s"] > 0 and row["max_abs_diff"] < 0.05, row.to_dict()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with its driver")
def test_tune_on_the_gpu_then_run_takes_its_schedules(write_recipe, tmp_path: Path) -> None:
    results, recipe = tmp_path / "results", write_recipe(CUDA_RECIPE)
    out = run_cli("-q", "tune", str(recipe), "--device", "cuda", "--trials", "32", "--results", str(results))
    assert out.returncode == 0, out.stderr
    out = run_cli("-q", "run", str(recipe), "--device", "cuda", "--results", str(results))
    assert out.returncode == 0, out.stderr
    row = pd.read_csv(results / "results.csv").iloc[-1]
    tuned, total = map(int, row["tuned_kernels"].split("/"))
    assert 0 < tuned <= total and row["max_abs_diff"] < 1e-3, row.to_dict()


def test_cuda_target_has_the_limits_meta_schedule_needs_and_keeps_its_key() -> None:
    spec = target_spec(load_device("cuda"))
    target = tvm.target.Target(spec)
    assert int(target.attrs["max_threads_per_block"]) == 1024
    assert int(target.attrs["max_shared_memory_per_block"]) == 49152
    assert target_key(spec) == "cuda-sm_90"  # the limits every CUDA GPU shares add nothing to the key
    assert target_key(spec | {"max_shared_memory_per_block": 98304}) != "cuda-sm_90"


def test_tuning_workers_see_the_profiles_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runners.visible_gpu(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-8a1b")  # this process's GPU 1 is the host's GPU-8a1b
    assert runners.visible_gpu(0) == "3" and runners.visible_gpu(1) == "GPU-8a1b"


def _conv_relu(tmp_path: Path) -> tvm.IRModule:
    """A 3x3 convolution and ReLU on an 8x8 input, imported from ONNX."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    return import_onnx(export_onnx(model, tmp_path / "m.onnx", resolution=8))


@pytest.mark.skipif(HAS_GPU, reason="this host has a CUDA GPU: its candidates run")
def test_cuda_candidates_build_here_and_a_session_where_none_runs_is_an_error(tmp_path: Path) -> None:
    """MetaSchedule's GPU rules get their target limits and the warm builder builds CUDA candidates on this
    GPU-less host; their runs fail, and a session in which no candidate ran says so instead of ending quietly."""
    mod = _conv_relu(tmp_path)
    db = tmp_path / "tuning"
    with pytest.raises(HarnessError, match=r"tuning for cuda: none of the \d+ candidates ran; the first error: ") as e:
        tuning.tune([mod], build_target(load_device("cuda")), db, trials=8, progress=False)
    assert "build" not in str(e.value).lower(), e.value  # they built; running them is what failed
    assert kernels.coverage([mod], build_target(load_device("cuda")), db).tuned == 0


def test_cuda_build_with_a_database_takes_the_cuda_lowering(tmp_path: Path) -> None:
    """The path a tuned CUDA artifact takes (schedules from a database, DLight for the rest, then the CUDA
    backend's lowering), built on this host: TVM 0.27's relax.pipeline cannot lower for CUDA by itself."""
    mod = _conv_relu(tmp_path)
    executable = kernels.compile_with_database(mod, build_target(load_device("cuda")), ms.database.MemoryDatabase())
    executable.export_library(str(tmp_path / "m.so"))
    assert (tmp_path / "m.so").stat().st_size > 0


@pytest.mark.skipif(HAS_GPU, reason="this host has a CUDA GPU")
def test_tune_without_a_gpu_is_one_line(write_recipe, tmp_path: Path) -> None:
    out = run_cli("-q", "tune", str(write_recipe(CUDA_RECIPE)), "--device", "cuda", "--trials", "8",
                  "--results", str(tmp_path / "results"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == ("error: device cuda: tuning times candidates on the GPU, and no CUDA device 0 "
                                  "found on this host (no NVIDIA GPU, or its driver is not loaded)")
    assert not list((tmp_path / "results").rglob("*.onnx"))  # checked before anything is exported


def test_fp16_cuda_compile_loads_only_the_cuda_tensor_intrinsics(tmp_path: Path) -> None:
    """DLight's GPU matmul rule imports TVM's tensor intrinsics; all of them took minutes beside torch."""
    script = f"""
import inspect, sys
import subprocess
import sys
from pathlib import Path
from harness.compile import compile_onnx
from harness.device import load_device
from harness.export import export_onnx
from harness.models import build_model
from harness.specs import CompileOptions
from tvm.s_tir import TensorIntrin
stack = inspect.stack
model = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval()
onnx_model = export_onnx(model, Path({str(tmp_path)!r}) / "m.onnx", resolution=32)
compile_onnx(onnx_model, load_device("cuda"), Path({str(tmp_path)!r}) / "m.so", options=CompileOptions(fp16=True))
assert inspect.stack is stack and TensorIntrin.get("wmma_sync_16x16x16_f16f16f32") is not None
print(sorted(m.rpartition(".")[2] for m in sys.modules if m.startswith("tvm.s_tir.tensor_intrin.")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['cuda']"
