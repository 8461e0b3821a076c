"""`compare` and `report` on a real results table (tiny recipes run end to end), the page checked in headless
Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RECIPE, run_cli, run_here

from harness.compare import compare_table, pareto

CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder with a tiny recipe and a pruned variant of it (the variant's run also measures its
    reference)."""
    root = tmp_path_factory.mktemp("report")
    (root / "tiny.yaml").write_text(json.dumps(TINY_RECIPE))
    (root / "tiny_pruned.yaml").write_text(json.dumps(TINY_RECIPE | {"steps": [{"prune": {"ratio": 0.5}}]}))
    for name in ("tiny", "tiny_pruned"):  # in this process: the commands under test here are compare and report
        run_here(root / f"{name}.yaml", root / "results")
    return root / "results"


def test_pareto_front() -> None:
    top1 = pd.Series([0.9, 0.8, 0.85, 0.7])
    latency = pd.Series([10.0, 5.0, 12.0, 5.0])
    assert pareto(top1, latency).tolist() == [True, True, False, False]


def test_compare_never_divides_latencies_of_two_hosts() -> None:
    """The host CPU changes between sessions: a variant measured on one is compared with the baseline measured on
    the same host only, and each host keeps its latest rows; a table from before the `host` column still compares."""
    def row(recipe: str, host: str, latency: float) -> dict:
        return {"recipe": recipe, "device": "x86", "host": host, "dataset": "digits", "batch": 1, "top1": 0.9,
                "latency_ms_median": latency, "tuned_kernels": "5/5"}

    table = pd.DataFrame([row("v1_fp32", "xeon", 4.0), row("v1_alpha050", "xeon", 2.0),
                          row("v1_fp32", "zen", 6.0), row("v1_fp32", "zen", 5.0), row("v1_alpha025", "zen", 1.0),
                          row("v1_res128", "epyc", 3.0)])
    speedup = compare_table(table).set_index(["host", "recipe"])["speedup"]
    assert speedup[("xeon", "v1_alpha050")] == 2.0 and speedup[("zen", "v1_alpha025")] == 5.0
    assert len(speedup) == 5 and pd.isna(speedup[("epyc", "v1_res128")])  # no baseline measured on that host
    legacy = compare_table(table[table["host"] == "xeon"].drop(columns="host"))
    assert list(legacy["speedup"].sort_values()) == [1.0, 2.0] and legacy["host"].isna().all()


def test_compare_on_a_device_without_the_baseline_lists_its_rows_without_speed_up() -> None:
    """The baseline exists in the table (no typo), but was not run on this device: as for another host."""
    table = pd.DataFrame([
        {"recipe": r, "device": d, "host": "zen", "dataset": "digits", "batch": b, "top1": 0.9,
         "latency_ms_median": lat, "tuned_kernels": "5/5"}
        for r, d, b, lat in [("v1_fp32", "x86", 1, 4.0), ("v1_alpha050", "rpi4", 1, 20.0),
                             ("v1_alpha050", "x86", 1, 2.0), ("v1_alpha050", "x86", 4, 6.0)]])
    rpi4 = compare_table(table, device="rpi4")
    assert list(rpi4["recipe"]) == ["v1_alpha050"] and rpi4["speedup"].isna().all()
    x86 = compare_table(table, device="x86").set_index(["batch", "recipe"])["speedup"]
    assert x86[(1, "v1_alpha050")] == 2.0 and pd.isna(x86[(4, "v1_alpha050")])  # no baseline at batch 4


def test_compare_takes_rows_without_tuned_kernels_and_baselines_named_like_numbers() -> None:
    """A row cut short (no tuned_kernels) has no speed-up, rather than a traceback; a recipe "007" is a name."""
    table = pd.DataFrame([{"recipe": r, "device": "x86", "host": "zen", "dataset": "digits", "batch": 1,
                           "top1": 0.9, "latency_ms_median": lat, "tuned_kernels": k}
                          for r, lat, k in [("007", 4.0, "5/5"), ("a", 2.0, "5/5"), ("b", 1.0, float("nan"))]])
    speedup = compare_table(table, baseline="007").set_index("recipe")["speedup"]
    assert speedup["a"] == 2.0 and pd.isna(speedup["b"])


def test_compare_counts_gpu_rows_on_dlight_defaults_as_fully_scheduled() -> None:
    """On a GPU, untuned kernels run DLight's schedules (as `run` counts them): they get a speed-up and a front."""
    table = pd.DataFrame([{"recipe": r, "device": "cuda", "host": "h200", "dataset": "digits", "batch": 1,
                           "top1": 0.9, "latency_ms_median": lat, "tuned_kernels": k, "schedules": s}
                          for r, lat, k, s in [("v1_fp32", 1.0, "0/30", "dlight"),
                                               ("v1_alpha050", 0.5, "0/30", "dlight"),
                                               ("v1_alpha025", 0.4, "0/30", None)]])
    out = compare_table(table).set_index("recipe")
    assert out["speedup"]["v1_alpha050"] == 2.0 and pd.isna(out["speedup"]["v1_alpha025"])
    assert out["pareto"]["v1_alpha050"] and not out["pareto"]["v1_alpha025"]


def test_compare_puts_variants_beside_the_baseline(results: Path) -> None:
    done = run_cli("compare", "--baseline", "tiny", "--format", "json", "--results", str(results))
    assert done.returncode == 0, done.stderr
    rows = {r["recipe"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"tiny", "tiny_pruned"}  # the in-run reference row is not a variant of its own
    assert rows["tiny"]["delta_top1"] == 0 and rows["tiny_pruned"]["macs"] < rows["tiny"]["macs"]
    assert rows["tiny"]["speedup"] is None  # untuned kernels: no speed-up is claimed
    for fmt, marker in (("md", "| device | host | dataset | batch |"), ("csv", "device,host,dataset,batch,recipe"),
                        ("html", "<table"), ("text", "tiny_pruned")):
        out = run_cli("compare", "--baseline", "tiny", "--format", fmt, "--results", str(results))
        assert out.returncode == 0 and marker in out.stdout, (fmt, out.stderr)


def test_report_on_a_device_without_the_baseline(results: Path, tmp_path: Path) -> None:
    """Its rows are listed without speed-up, and the kernel figure (the baseline's by default) says why it is empty."""
    from harness.report import build_report

    table = pd.read_csv(results / "results.csv")
    board = table[table["recipe"] == "tiny_pruned"].assign(device="rpi4")
    html_path, md_path = build_report(pd.concat([table, board]), tmp_path / "report", results / "runs",
                                      device="rpi4", baseline="tiny")
    assert "per-kernel latency: tiny: not run on this device" in md_path.read_text() and html_path.is_file()


@pytest.mark.parametrize("args, message", [
    (["--baseline", "nope"], "--baseline nope: no row of that recipe"),
    (["--device", "rpi9", "--baseline", "tiny"], "--device rpi9: no results for it"),
])
def test_compare_filters_name_what_is_missing(results: Path, args: list[str], message: str) -> None:
    done = run_cli("compare", *args, "--results", str(results))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_compare_and_report_without_results_are_one_line_errors(tmp_path: Path) -> None:
    for command in ("compare", "report"):
        done = run_cli(command, "--results", str(tmp_path / "empty"))
        assert done.returncode == 2 and "no results table" in done.stderr, done.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.csv").write_text("run_id,recipe,device\n")  # a header, no rows
    done = run_cli("compare", "--results", str(tmp_path / "broken"))
    assert done.returncode == 2 and "empty" in done.stderr, done.stderr


def test_report_renders_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    out = results / "report"
    done = run_cli("report", "--baseline", "tiny", "--results", str(results))
    assert done.returncode == 0, done.stderr
    page = out / "report.html"
    text = page.read_text()
    assert len(re.findall(r"<img ", text)) == 5 and "src='data:image/png;base64," in text  # self-contained
    assert "fused_conv2d" in (out / "report.md").read_text() or (out / "kernels.png").stat().st_size > 0
    if CHROMIUM is None:
        pytest.skip("no chromium on this host (Debian: apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    images = re.findall(r"<img [^>]*>", dom.stdout)
    assert len(images) == 5, dom.stderr[-2000:]
    for img in images:
        assert 'data-decoded="yes"' in img, img[:200]
        ink = float(re.search(r'data-ink="([0-9.]+)"', img)[1])
        assert 0.01 < ink < 0.95, (img[:80], ink)  # drawn on, not blank
    shot = out / "screenshot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
