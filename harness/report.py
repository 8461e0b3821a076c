"""`harness report`: one self-contained HTML page (plots embedded) and a Markdown page under `results/report/`:
accuracy against latency and against MACs with the Pareto front and the baselines labelled, latency per device and
dtype, the α × ρ grid, one model's per-kernel latency (harness.profile), and the conditions of every number."""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.cache import write_atomic
from harness.compare import compare_table, latest
from harness.errors import HarnessError
from harness.results import markdown

log = logging.getLogger(__name__)
CONDITION_COLUMNS = ("recipe", "device", "host", "target", "threads", "batch", "emulated", "tuned_kernels",
                     "tuned_here", "tvm_version", "torch_version", "git_rev", "timestamp", "noisy")
# Marks the page's images with what the browser decoded (tests read it back from headless Chromium).
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  for (const img of document.images) {
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    const d = img.naturalWidth ? g.getImageData(0, 0, c.width, c.height).data : [];
    let ink = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) ink++;
    img.dataset.decoded = img.naturalWidth > 0 ? 'yes' : 'no';
    img.dataset.ink = (d.length ? ink / (d.length / 4) : 0).toFixed(4);
  }
  document.body.dataset.checked = document.images.length;
});
</script>"""


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    title: str
    png: bytes


def _figure(name: str, title: str, draw) -> Figure:  # noqa: ANN001 (a function drawing on an Axes)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    draw(ax)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Figure(name, title, buf.getvalue())


def _scatter(frame: pd.DataFrame, x: str, xlabel: str, log_x: bool = False):  # noqa: ANN202
    def draw(ax) -> None:  # noqa: ANN001
        for role, marker in (("baseline", "s"), ("variant", "o")):
            part = frame[frame["role"] == role]
            ax.scatter(part[x], part["top1"], marker=marker, s=50, label=role + "s", alpha=0.8)
        for _, row in frame.iterrows():
            ax.annotate(row["recipe"], (row[x], row["top1"]), fontsize=7, xytext=(4, 3), textcoords="offset points",
                        weight="bold" if row["role"] == "baseline" else "normal")
        front = frame[frame["pareto"].astype(bool)].sort_values(x)
        if len(front) and x == "latency_ms_median":
            ax.step(front[x], front["top1"], where="post", color="tab:red", label="Pareto front (tuned rows)")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return draw


def _latency_bars(rows: pd.DataFrame):  # noqa: ANN202
    def draw(ax) -> None:  # noqa: ANN001
        pivot = rows.pivot_table(index="recipe", columns=["device", "dtype"], values="latency_ms_median",
                                 aggfunc="last")
        pivot.plot.barh(ax=ax, logx=True)
        ax.set_xlabel("median latency (ms, log scale)")
        ax.legend(title="device, dtype", fontsize=8)
        ax.grid(alpha=0.3, axis="x")

    return draw


def _grid(rows: pd.DataFrame):  # noqa: ANN202
    cells = rows[(rows["model"] == "mobilenet_v1") & (rows["dtype"] == "fp32")
                 & rows["prune_ratio"].isna()].drop_duplicates(["width_mult", "resolution"], keep="last")

    def draw(ax) -> None:  # noqa: ANN001
        if len(cells) < 2:
            ax.text(0.5, 0.5, "no α × ρ grid in the results yet:\npython -m harness sweep v1_grid", ha="center",
                    va="center", fontsize=12)
            ax.set_axis_off()
            return
        grid = cells.pivot_table(index="width_mult", columns="resolution", values="latency_ms_median")
        image = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{w:g}" for w in grid.index])
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3g} ms", ha="center", va="center", color="white", fontsize=9)
        ax.set_xlabel("resolution ρ (pixels)")
        ax.set_ylabel("width α")
        ax.figure.colorbar(image, ax=ax, label="median latency (ms)")

    return draw


def _kernels(kernels: pd.DataFrame | None, recipe: str | None):  # noqa: ANN202
    def draw(ax) -> None:  # noqa: ANN001
        if kernels is None:
            ax.text(0.5, 0.5, f"no compiled artifact of {recipe} found under results/runs/", ha="center",
                    va="center")
            ax.set_axis_off()
            return
        top = kernels.head(15).iloc[::-1]
        colours = {k: f"C{i}" for i, k in enumerate(sorted(set(kernels["kind"])))}
        ax.barh(top["kernel"], top["ms"], color=[colours[k] for k in top["kind"]])
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("ms per inference")
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=colour, label=f"{kind}: {kernels.loc[kernels['kind'] == kind, 'ms'].sum():.3g}"
                                 " ms in all") for kind, colour in colours.items()], fontsize=8)

    return draw


def profile_row(rows: pd.DataFrame, recipe: str, runs_dir: Path) -> tuple[pd.DataFrame | None, str]:
    """Per-kernel times of `recipe`'s latest artifact (from its run folder), and a line saying what was profiled."""
    from harness.profile import Profiled, kernel_times

    match = rows[rows["recipe"] == recipe]
    if match.empty:
        raise HarnessError(f"--profile {recipe}: no row of that recipe in the results")
    row = match.iloc[-1]
    libs = sorted((runs_dir / str(row["run_id"])).glob(f"*-{str(row['recipe_key'])[:8]}.so"))
    if not libs or row.get("remote") is True or str(row.get("remote")) == "True":
        return None, f"{recipe}: no local artifact to profile"
    shape = (int(row["batch"]), 3, int(row["resolution"]), int(row["resolution"]))
    threads = None if pd.isna(row["threads"]) else int(row["threads"])
    layout = str(row["layout"]) if "layout" in row and isinstance(row["layout"], str) else "NCHW"
    kernels = kernel_times(Profiled(libs[-1], shape, layout=layout), threads=threads)
    return kernels, f"{recipe} ({libs[-1].name}, run {row['run_id']}, {threads} threads, this host)"


def build_report(table: pd.DataFrame, out: Path, runs_dir: Path, *, device: str | None = None,
                 baseline: str = "v1_fp32", profile: str | None = None) -> tuple[Path, Path]:
    """Write `report.html` (self-contained) and `report.md` (with its PNGs) under `out`."""
    compared = compare_table(table, device=device, baseline=baseline)
    rows = latest(table)
    if device is not None:
        rows = rows[rows["device"] == device]
    machine = compared["device"].astype(str) + " on " + compared["host"].fillna("an unnamed host").astype(str)
    main = compared[machine == machine.mode().iloc[0]]  # the scatter plots: one device on one host
    if profile is None and baseline not in set(rows["recipe"]):  # compare_table found it on another device
        profile, kernels, profiled = baseline, None, f"{baseline}: not run on this device"
    else:
        profile = profile or baseline
        kernels, profiled = profile_row(rows, profile, runs_dir)
    where = f"{machine[main.index[0]]}, {main['dataset'].iloc[0]}"
    figures = [
        _figure("accuracy_latency", f"top-1 against latency ({where})",
                _scatter(main, "latency_ms_median", "median latency (ms, log scale)", log_x=True)),
        _figure("accuracy_macs", f"top-1 against multiply-adds ({where})",
                _scatter(main, "macs", "multiply-adds (log scale)", log_x=True)),
        _figure("latency_device_dtype", "median latency per device and dtype", _latency_bars(rows)),
        _figure("alpha_rho_grid", "MobileNet v1 fp32: latency over width α × resolution ρ", _grid(rows)),
        _figure("kernels", f"per-kernel latency: {profiled}", _kernels(kernels, profile)),
    ]
    conditions = rows.reindex(columns=list(CONDITION_COLUMNS))
    out.mkdir(parents=True, exist_ok=True)
    for fig in figures:
        (out / f"{fig.name}.png").write_bytes(fig.png)
    md = ["# harness report", "", f"Compared against `{baseline}`; Pareto front over fully tuned rows.", "",
          markdown(compared.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)), ""]
    md += [f"## {f.title}\n\n![{f.name}]({f.name}.png)\n" for f in figures]
    md += ["## Conditions of every number", "", markdown(conditions), ""]
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>harness report</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style>", CHECK_SCRIPT, "</head><body>",
            "<h1>harness report</h1>", f"<p>Compared against <code>{html.escape(baseline)}</code>; Pareto front over "
            "fully tuned rows.</p>", compared.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")]
    page += [f"<h2>{html.escape(f.title)}</h2><img alt='{f.name}' src='data:image/png;base64,"
             f"{base64.b64encode(f.png).decode()}'>" for f in figures]
    page += ["<h2>Conditions of every number</h2>", conditions.to_html(index=False, na_rep="-"), "</body></html>"]
    return write_atomic(out / "report.html", "\n".join(page)), write_atomic(out / "report.md", "\n".join(md))
