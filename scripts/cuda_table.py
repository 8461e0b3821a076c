"""The CUDA table: MobileNet v1/v2 (fp32, fp16, int8) and the ResNet baselines on a GPU, TVM against PyTorch.

Runs each model at batch 1 and 32 through `harness run`'s pipeline on `--device cuda` and writes one CSV and
one Markdown table. Untrained weights (`train.epochs: 0`): latency does not depend on them, and training
every model would cost the GPU time this is run in. Usage: python scripts/cuda_table.py OUT_DIR [RESULTS_DIR]
(RESULTS_DIR, default OUT_DIR/results: the harness workspace with its caches and compiled artifacts).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from harness.device import load_device
from harness.pipeline import run_recipe
from harness.recipe import recipe_from_dict
from harness.workspace import Workspace

MODELS = [("mobilenet_v1", "fp32"), ("mobilenet_v1", "fp16"), ("mobilenet_v1", "int8"), ("mobilenet_v2", "fp32"),
          ("mobilenet_v2", "fp16"), ("mobilenet_v2", "int8"), ("resnet18", "fp32"), ("resnet50", "fp32")]
COLUMNS = ["model", "dtype", "batch", "latency_ms_median", "images_per_s", "torch_latency_ms", "torch_fp16_latency_ms",
           "ort_latency_ms", "max_abs_diff", "integer_ops", "integer_fallback", "compile_s", "gpu_name"]


def recipe(model: str, dtype: str, batch: int):  # noqa: ANN201
    steps = [] if dtype == "fp32" else [{"quantize": {"dtype": dtype}}]
    return recipe_from_dict({"model": {"name": model}, "data": {"name": "digits", "resolution": 224,
                                                                 "eval_samples": 64},
                             "train": {"epochs": 0}, "steps": steps, "measure": {"batch": batch, "repeats": 30}},
                            f"{model}_{dtype}", default_name=f"{model}_{dtype}")


def main(out: Path, results: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ws, profile, rows = Workspace(results), load_device("cuda"), []
    for batch in (1, 32):
        for model, dtype in MODELS:
            start = time.time()
            try:
                (row,) = [r.as_dict() for r in run_recipe(recipe(model, dtype, batch), profile, workspace=ws,
                                                          progress=False) if r.dtype == dtype]
            except Exception as exc:  # noqa: BLE001 (one failed model must not cost the rest of the table)
                row = {"model": model, "dtype": dtype, "batch": batch, "integer_fallback": f"FAILED: {exc}"[:300]}
            rows.append(row)
            print(f"{model} {dtype} b{batch}: {row.get('latency_ms_median')} ms ({time.time() - start:.0f} s)",
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
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(sys.argv[1]) / "results")
