"""The CUDA table: MobileNet v1/v2 (fp32, fp16, int8) and the ResNet baselines on a GPU, TVM against PyTorch.

Compiles every artifact first, several at a time (the GPU is idle while TVM compiles on the CPUs), then, one run
per model and batch size (1 and 32), measures the fp32 model and its fp16 and int8 variants with `harness run`'s
pipeline on `--device cuda`, and writes one CSV and one Markdown table after each run. Untrained weights
(`train.epochs: 0`): latency does not depend on them, and training every model would cost the GPU time this is
run in. Usage: python scripts/cuda_table.py OUT_DIR [RESULTS_DIR [JOBS]] (RESULTS_DIR, default OUT_DIR/results:
the harness workspace with its caches, artifacts and results table; JOBS: compiles at a time, default 8).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd

from harness.device import load_device
from harness.pipeline import run_variants
from harness.recipe import recipe_from_dict
from harness.specs import Recipe
from harness.workspace import Workspace

MODELS = {"mobilenet_v1": ("fp32", "fp16", "int8"), "mobilenet_v2": ("fp32", "fp16", "int8"), "resnet18": ("fp32",),
          "resnet50": ("fp32",)}
BATCHES = (1, 32)
COLUMNS = ["model", "dtype", "batch", "latency_ms_median", "images_per_s", "torch_latency_ms", "torch_fp16_latency_ms",
           "ort_latency_ms", "max_abs_diff", "tuned_kernels", "schedules", "integer_ops", "integer_fallback",
           "compile_s", "gpu_name"]


def recipe(model: str, dtype: str, batch: int) -> Recipe:
    steps = [] if dtype == "fp32" else [{"quantize": {"dtype": dtype}}]
    return recipe_from_dict({"model": {"name": model}, "data": {"name": "digits", "resolution": 224,
                                                                 "eval_samples": 64},
                             "train": {"epochs": 0}, "steps": steps, "measure": {"batch": batch, "repeats": 30}},
                            f"{model}_{dtype}", default_name=f"{model}_{dtype}")


def prebuild(model: str, dtype: str, batch: int, results: Path) -> str:
    """Export and compile one variant into the workspace's caches (where the measuring run finds it)."""
    from harness.build import compile_variant, export_variant
    from harness.data import load_data
    from harness.tune import tuning_database

    start, variant, ws, profile = time.time(), recipe(model, dtype, batch), Workspace(results), load_device("cuda")
    try:
        exported = export_variant(variant, load_data(variant.data, variant.resolution), ws, progress=False)
        artifact = compile_variant(exported, profile, ws, tuning_database(profile, ws))
    except Exception as exc:  # noqa: BLE001 (the measuring run retries it and records the failure)
        return f"{model} {dtype} b{batch}: not built ({type(exc).__name__}: {exc})"[:300]
    return f"{model} {dtype} b{batch}: built in {time.time() - start:.0f} s ({artifact.report.tuned_kernels} tuned)"


def main(out: Path, results: Path, jobs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    work = [(model, dtype, batch, results) for batch in BATCHES for model, dtypes in MODELS.items() for dtype in dtypes]
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for line in pool.map(prebuild, *zip(*work, strict=True)):
                print(line, flush=True)
    except BrokenProcessPool as exc:  # a compile that killed its process: the runs below compile what is missing
        print(f"compiling in parallel stopped ({exc}); the runs compile the rest", flush=True)
    print(f"compiled {len(work)} artifacts in {time.time() - start:.0f} s", flush=True)
    ws, profile, rows = Workspace(results), load_device("cuda"), []
    for batch in BATCHES:
        for model, dtypes in MODELS.items():
            start = time.time()
            variants = [recipe(model, dtype, batch) for dtype in dtypes]
            try:
                rows += [r.as_dict() for r in run_variants(variants[1:], variants[0], profile, workspace=ws,
                                                           progress=False)]
            except Exception as exc:  # noqa: BLE001 (one failed model must not cost the rest of the table)
                rows += [{"model": model, "dtype": d, "batch": batch, "integer_fallback": f"FAILED: {exc}"[:300]}
                         for d in dtypes]
            print(f"{model} b{batch}: " + ", ".join(f"{r['dtype']} {r.get('latency_ms_median')} ms"
                                                    for r in rows[-len(dtypes):]) + f" ({time.time() - start:.0f} s)",
                  flush=True)
            table = pd.DataFrame(rows).reindex(columns=COLUMNS)
            table.to_csv(out / "cuda_table.csv", index=False)
            (out / "cuda_table.md").write_text(table.to_markdown(index=False, floatfmt=".3g")
                                               if _has_tabulate() else table.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(sys.argv[1]) / "results",
         int(sys.argv[3]) if len(sys.argv) > 3 else 8)
