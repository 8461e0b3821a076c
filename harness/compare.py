"""Compressed variants beside their baselines (`harness compare`): the latest row of each recipe on one device and
data set, with top-1 and latency against a baseline recipe and the accuracy–latency Pareto front."""

from __future__ import annotations

import pandas as pd

from harness.errors import HarnessError
from harness.specs import fully_tuned

BASELINES = ("v1_fp32", "vgg16_fp32", "resnet18_fp32", "resnet50_fp32")
PER = ("device", "host", "dataset", "batch")  # rows are compared only with rows of the same of each
COLUMNS = ("device", "host", "dataset", "batch", "recipe", "role", "model", "dtype", "width_mult", "resolution", "top1",
           "delta_top1", "params", "macs", "artifact_bytes", "latency_ms_median", "latency_ms_p90", "speedup",
           "tuned_kernels", "pareto", "noisy")


def latest(table: pd.DataFrame) -> pd.DataFrame:
    """The last measured row of each recipe per device, host CPU, data set and batch (references inside runs left
    out: each baseline recipe stands for itself; rows of tables that predate the `host` column share one host)."""
    if table.empty:
        raise HarnessError("the results table is empty: run some recipes first (python -m harness run v1_fp32)")
    rows = table[~table["recipe"].astype(str).str.endswith(":reference")]
    rows = rows.reindex(columns=[*rows.columns, *(c for c in PER if c not in rows.columns)])
    return rows.groupby([*PER, "recipe"], dropna=False, sort=False).tail(1)


def pareto(top1: pd.Series, latency: pd.Series) -> pd.Series:
    """Whether each row is on the accuracy–latency front: no other row is at least as accurate and as fast, and
    better in one of them."""
    on = []
    for i in top1.index:
        dominated = ((top1 >= top1[i]) & (latency <= latency[i]) & ((top1 > top1[i]) | (latency < latency[i])))
        on.append(not dominated.drop(i).any())
    return pd.Series(on, index=top1.index)


def compare_table(table: pd.DataFrame, *, device: str | None = None, baseline: str = "v1_fp32") -> pd.DataFrame:
    """Every recipe's latest row beside the baselines, per device, host CPU, data set and batch: Δtop-1 and speed-up
    against `baseline` (empty where either has untuned kernels, or where the baseline was not measured on that host),
    and the Pareto front among fully tuned rows."""
    rows = latest(table)
    if baseline not in set(rows["recipe"]):  # on any device: where it was not measured, rows have no speed-up
        raise HarnessError(f"--baseline {baseline}: no row of that recipe (recipes in the table: "
                           f"{', '.join(sorted(map(str, set(rows['recipe']))))})")
    if device is not None:
        if device not in set(rows["device"]):
            raise HarnessError(f"--device {device}: no results for it (devices in the table: "
                               f"{', '.join(sorted(map(str, set(rows['device']))))})")
        rows = rows[rows["device"] == device]
    groups = []
    for _, group in rows.groupby(list(PER), dropna=False, sort=False):
        group = group.copy()
        ref = group[group["recipe"] == baseline]
        schedules = group["schedules"] if "schedules" in group else [None] * len(group)
        tuned = pd.Series([fully_tuned(k, s) for k, s in zip(group["tuned_kernels"], schedules, strict=True)],
                          index=group.index)
        group["role"] = ["baseline" if r in BASELINES or r == baseline else "variant" for r in group["recipe"]]
        if ref.empty:
            group["delta_top1"] = group["speedup"] = float("nan")
        else:
            ref_row = ref.iloc[0]
            group["delta_top1"] = group["top1"] - ref_row["top1"]
            ref_tuned = bool(tuned[ref.index[0]])
            group["speedup"] = [ref_row["latency_ms_median"] / lat if ok and ref_tuned else float("nan")
                                for lat, ok in zip(group["latency_ms_median"], tuned, strict=True)]
        front = pareto(group.loc[tuned, "top1"], group.loc[tuned, "latency_ms_median"])
        group["pareto"] = [bool(front.get(i, False)) for i in group.index]
        groups.append(group)
    out = pd.concat(groups).reindex(columns=list(COLUMNS))
    return out.sort_values(["device", "host", "dataset", "batch", "role", "latency_ms_median"], ignore_index=True)


def render(frame: pd.DataFrame, fmt: str) -> str:
    """The comparison as text, Markdown, CSV, JSON (records) or an HTML table."""
    from harness.results import markdown

    shown = frame.astype(object).where(frame.notna(), None)
    if fmt == "text":
        return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
    if fmt == "md":
        return markdown(shown.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v))
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=2)
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", border=0)
