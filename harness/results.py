"""Record stage: the typed results `Row`, the run `Conditions` stamped on it, and `results/results.csv`
(appended atomically, under a lock)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.cache import locked, write_atomic
from harness.errors import HarnessError, last_line
from harness.noise import cpu_model
from harness.specs import TuningCoverage, fully_tuned
from harness.workspace import RESULTS_DIR, package_versions


@dataclass(frozen=True, kw_only=True, slots=True)
class Conditions:
    """What a measurement was made under, the same for every row of one run: stamped by `Row.stamped`."""

    run_id: str
    timestamp: str
    git_rev: str
    host: str  # the CPU that ran the harness (a board's rows also name the board)
    tvm_version: str
    torch_version: str

    @classmethod
    def now(cls, run_id: str) -> Conditions:
        versions = package_versions()
        return cls(run_id=run_id, timestamp=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                   git_rev=git_revision(), host=cpu_model(), tvm_version=versions["tvm"],
                   torch_version=versions["torch"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    """One measured artifact (a `run` or `sweep` variant, or one runtime of a `bench`): a results-table row.

    Field order is the table's column order. `runtime` and `vs_fp32` are set by `bench` only; `layout` and
    `fp16` come from the compiler's report.
    """

    run_id: str | None = None
    timestamp: str | None = None
    git_rev: str | None = None
    host: str | None = None
    recipe: str
    recipe_key: str | None = None
    reference: str | None = None
    steps: str | None = None
    model: str | None = None
    width_mult: float | None = None
    resolution: int | None = None
    dataset: str | None = None
    num_classes: int | None = None
    dtype: str | None = None
    integer: bool | None = None
    prune_ratio: float | None = None
    calibration: str | None = None
    params: int | None = None
    macs: int | None = None
    onnx_bytes: int | None = None
    artifact_bytes: int | None = None
    device: str | None = None
    target: str | None = None
    remote: bool | None = None
    emulated: bool | None = None
    board: str | None = None
    attempts: int | None = None
    threads: int | None = None
    batch: int | None = None
    top1: float | None = None
    top5: float | None = None
    eval_samples: int | None = None
    acc_delta: float | None = None
    latency_ms_median: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_min: float | None = None
    latency_ms_std: float | None = None
    repeats: int | None = None
    latency_cv: float | None = None
    speedup: float | None = None
    torch_latency_ms: float | None = None
    ort_latency_ms: float | None = None
    vs_ort: float | None = None
    images_per_s: float | None = None
    torch_fp16_latency_ms: float | None = None
    ort_note: str | None = None
    torch_cv: float | None = None
    ort_cv: float | None = None
    host_busy: float | None = None
    noisy: str | None = None
    max_abs_diff: float | None = None
    compile_s: float | None = None
    integer_ops: str | None = None
    dot_product_ops: str | None = None
    tuned_kernels: TuningCoverage | None = None
    tuned_here: str | None = None
    schedules: str | None = None
    integer_fallback: str | None = None
    notes: str | None = None
    gpu_name: str | None = None
    gpu_compute_capability: str | None = None
    gpu_driver: str | None = None
    cuda_version: str | None = None
    tvm_version: str | None = None
    torch_version: str | None = None
    layout: str | None = None
    fp16: bool | None = None
    runtime: str | None = None
    vs_fp32: float | None = None

    def stamped(self, conditions: Conditions) -> Row:
        """This row with the run's conditions (the one place they are set)."""
        return replace(self, **asdict(conditions))

    def fully_tuned(self) -> bool:
        """Every kernel of the row's artifact ran a real schedule (`specs.fully_tuned`)."""
        return fully_tuned(self.tuned_kernels, self.schedules)

    def as_dict(self) -> dict[str, Any]:
        """The row as table cells: tuned_kernels as "k/n"; fields only some rows have are left out when unset."""
        cells = {f.name: getattr(self, f.name) for f in fields(self)}
        cells["tuned_kernels"] = None if self.tuned_kernels is None else str(self.tuned_kernels)
        return {k: v for k, v in cells.items() if k in COLUMNS or v is not None}


_SOMETIMES = ("layout", "fp16", "runtime", "vs_fp32")  # columns only some rows have
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Row) if f.name not in _SOMETIMES)


KEY_COLUMNS = ("run_id", "recipe", "device")  # what every table the harness ever wrote has

SUMMARY_COLUMNS = ("recipe", "model", "width_mult", "resolution", "dtype", "params", "macs", "device", "top1",
                   "acc_delta", "latency_ms_median", "tuned_kernels", "speedup", "torch_latency_ms", "ort_latency_ms",
                   "vs_ort")


def git_revision() -> str:
    """Short git revision of the harness checkout (with '+dirty' for local changes), or 'unknown'."""
    cwd = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _kind(hint: Any) -> type:
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0] if kinds[0] in (int, float, bool) else str


KINDS: dict[str, type] = {name: _kind(hint) for name, hint in typing.get_type_hints(Row).items()}


def _text(path: Path) -> pd.DataFrame:
    """The CSV table at `path`, every cell the text it holds ("" when empty). A column the header names twice (an
    append before 2026-12-03 repeated `layout`, `fp16`, `runtime` and `vs_fp32`; pandas reads the repeats as
    `layout.1`, ...) is folded into the first."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in list(table.columns):
        base, dot, n = column.rpartition(".")
        if dot and n.isdigit() and base in KINDS and base in table.columns:
            table[base] = table[base].where(table[base] != "", table[column])
            table = table.drop(columns=column)
    return table


_MISSING = {"", "nan", "NaN", "NA", "N/A", "n/a", "<NA>", "None", "null", "NULL"}  # in a number's or boolean's cell


def _read_text(path: Path, what: str) -> pd.DataFrame:
    try:
        return _text(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise HarnessError(f"{path}: not a readable {what} ({last_line(str(exc))}); it was left untouched") from None


def _typed(text: pd.DataFrame, path: Path, what: str, kinds: dict[str, type]) -> pd.DataFrame:
    """A copy of `text` (cells as read by `_text`) with each column of `kinds` as its type (see `read_cells`)."""
    table = text.copy()
    for column in table.columns:
        kind = kinds.get(column, str)
        if kind is str:
            table[column] = table[column].mask(table[column] == "")
            continue
        cells = table[column].str.strip().mask(lambda c: c.isin(_MISSING))
        parsed = cells.str.lower().map({"true": True, "false": False}) if kind is bool else \
            pd.to_numeric(cells, errors="coerce")
        bad = parsed.isna() & cells.notna()
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise HarnessError(f"{path}: row {i + 1} of the {what}: {column} is {cells.iloc[i]!r}, not "
                               f"{'True or False' if kind is bool else 'a number'}; mend or delete that row")
        table[column] = parsed
    return table


def read_cells(path: Path, what: str, kinds: dict[str, type] = KINDS) -> pd.DataFrame:
    """The CSV table at `path` with each column of `kinds` as its type: text stays as written ("007", "None" and
    "1e5" are names, not numbers; other columns are text too), an empty cell is missing (in a column of numbers or
    booleans, so is "nan", "NA", ...), and a cell that is not its column's number or boolean is a one-line error
    naming its row. `what` names the table in errors."""
    return _typed(_read_text(path, what), path, what, kinds)


def _results(text: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The results table read as `text`, typed; one not written by the harness is refused."""
    table = _typed(text, path, "results table", KINDS)
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        raise HarnessError(f"{path}: not a results table of the harness (no column {', '.join(missing)}); it was "
                           "left untouched")
    return table


def load_results(path: Path | None = None) -> pd.DataFrame:
    """The results table (empty, with the standard columns, when none was written yet)."""
    path = path or RESULTS_DIR / "results.csv"
    if not path.is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    return _results(_read_text(path, "results table"), path)


def _cells(row: Row | dict[str, Any]) -> dict[str, Any]:
    return row.as_dict() if isinstance(row, Row) else row


def append_rows(rows: Sequence[Row | dict[str, Any]], path: Path | None = None) -> Path:
    """Append rows to the table atomically: write a complete new file, then rename it over the old one. The rows
    already there are written back as they were read, cell for cell (as text: nothing re-parsed)."""
    path = path or RESULTS_DIR / "results.csv"
    new = pd.DataFrame([_cells(r) for r in rows])
    for column in [c for c in new.columns if KINDS.get(c) is int]:  # 3, not 3.0, beside a row without it
        new[column] = pd.to_numeric(new[column]).astype("Int64")
    with locked(path):
        old = _read_text(path, "results table") if path.is_file() else pd.DataFrame()
        if path.is_file():
            _results(old, path)  # a table it cannot read is refused, and left untouched
        columns = list(dict.fromkeys([*COLUMNS, *old.columns, *new.columns]))  # each once
        frames = [f.reindex(columns=columns) for f in (old, new) if not f.empty]
        table = pd.concat(frames, ignore_index=True) if frames else new.reindex(columns=columns)
        write_atomic(path, table.to_csv(index=False))
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically."""
    write_atomic(path, json.dumps(data, indent=2, default=str))


def write_table(rows: Sequence[Row], path: Path) -> Path:
    """Write `rows` as a new CSV table at `path` (atomically)."""
    return write_atomic(path, pd.DataFrame([r.as_dict() for r in rows]).to_csv(index=False))


def markdown(frame: pd.DataFrame) -> str:
    """A table as GitHub Markdown (cells as they print, `|` escaped)."""
    def cell(value: object) -> str:
        return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else \
            str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def format_rows(rows: Sequence[Row | dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """Rows as an aligned text table with the most telling columns; rows measured under noise are marked in a
    `noisy` column and explained below the table."""
    cells = [_cells(r) for r in rows]
    reasons = [(" ".join(str(c[k]) for k in ("recipe", "runtime") if isinstance(c.get(k), str)), c["noisy"])
               for c in cells if isinstance(c.get("noisy"), str)]
    frame = pd.DataFrame(cells).reindex(columns=list(columns))
    if reasons:
        frame["noisy"] = ["yes" if isinstance(c.get("noisy"), str) else None for c in cells]
    frame = frame.astype(object).where(frame.notna(), np.nan).infer_objects()  # None (e.g. no peers) prints as "-"
    text = frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
    return "\n".join([text, *(f"noisy: {recipe}: {why}" for recipe, why in reasons)])
