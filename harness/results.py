"""Record stage: one row per measured artifact in `results/results.csv`, appended atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError

RESULTS_DIR = Path(os.environ.get("HARNESS_RESULTS", Path(__file__).resolve().parent.parent / "results"))

COLUMNS: tuple[str, ...] = (
    "run_id", "timestamp", "git_rev", "recipe", "recipe_key", "reference", "steps", "model", "width_mult",
    "resolution", "dataset", "num_classes", "dtype", "integer", "prune_ratio", "calibration", "params", "macs",
    "onnx_bytes", "artifact_bytes", "device", "target", "remote", "emulated", "board", "attempts", "threads",
    "batch", "top1", "top5", "eval_samples", "acc_delta", "latency_ms_median", "latency_ms_mean", "latency_ms_p90",
    "latency_ms_min", "latency_ms_std", "repeats", "speedup", "torch_latency_ms", "ort_latency_ms", "vs_ort",
    "images_per_s", "torch_fp16_latency_ms", "ort_note", "max_abs_diff", "compile_s", "integer_ops",
    "tuned_kernels", "schedules", "integer_fallback", "notes", "gpu_name", "gpu_compute_capability", "gpu_driver",
    "cuda_version", "tvm_version", "torch_version",
)  # fmt: skip

SUMMARY_COLUMNS = ("recipe", "model", "width_mult", "resolution", "dtype", "params", "macs", "device", "top1",
                   "acc_delta", "latency_ms_median", "tuned_kernels", "speedup", "torch_latency_ms", "ort_latency_ms",
                   "vs_ort")


def git_revision(cwd: Path | None = None) -> str:
    """Short git revision of the harness checkout (with '+dirty' for local changes), or 'unknown'."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock beside `path`, so parallel runs (a device farm) append one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_results(path: Path | None = None) -> pd.DataFrame:
    """The results table (empty, with the standard columns, when none was written yet)."""
    path = path or RESULTS_DIR / "results.csv"
    if not path.is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: not a readable results table ({exc}); it was left untouched") from None


def append_rows(rows: Sequence[dict[str, Any]], path: Path | None = None) -> Path:
    """Append rows to the table atomically: write a complete new file, then rename it over the old one."""
    path = path or RESULTS_DIR / "results.csv"
    new = pd.DataFrame(list(rows))
    with _locked(path):
        old = load_results(path)
        columns = list(COLUMNS) + [c for c in [*old.columns, *new.columns] if c not in COLUMNS]
        frames = [f.reindex(columns=columns) for f in (old, new) if not f.empty]
        table = pd.concat(frames, ignore_index=True) if frames else new.reindex(columns=columns)
        tmp = path.with_suffix(".csv.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def format_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """Rows as an aligned text table with the most telling columns."""
    frame = pd.DataFrame(list(rows)).reindex(columns=list(columns))
    frame = frame.astype(object).where(frame.notna(), np.nan).infer_objects()  # None (e.g. no peers) prints as "-"
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
