"""The regression gate: the A/B decision rule, interleaving, noise, stored baselines and the `check` command."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY_RECIPE, run_cli

from harness.abtest import Samples, Verdict, interleave, judge
from harness.artifacts import build_set
from harness.check import CheckRow, baseline_check, exit_code, load_baseline, save_baseline, summary
from harness.device import load_device
from harness.errors import HarnessError
from harness.noise import NoiseLog, watch
from harness.recipe import load_recipe
from harness.results import Row, format_rows
from harness.workspace import Workspace

RNG = np.random.default_rng(0)


def _samples(base_ms: float, new_ms: float, cv: float = 0.02, n: int = 20, busy: float = 0.0) -> Samples:
    return Samples(base=list(RNG.normal(base_ms, base_ms * cv, n) / 1e3),
                   new=list(RNG.normal(new_ms, new_ms * cv, n) / 1e3), other_cores=busy)


def test_judge_calls_a_ten_percent_slowdown_a_regression_and_unchanged_the_same() -> None:
    slow = judge(_samples(10.0, 11.0))
    assert slow.verdict == Verdict.REGRESSION and slow.p_value < 0.01 and slow.ratio == pytest.approx(1.1, abs=0.02)
    assert judge(_samples(10.0, 9.0)).verdict == Verdict.FASTER
    assert judge(_samples(10.0, 10.0)).verdict == Verdict.SAME


def test_judge_needs_both_the_threshold_and_significance() -> None:
    small = judge(_samples(10.0, 10.3, cv=0.002))  # significant, but within 5 %
    assert small.p_value < 0.01 and small.verdict == Verdict.SAME
    few = judge(Samples(base=[0.010, 0.014, 0.010, 0.014], new=[0.011, 0.015, 0.011, 0.015], other_cores=0))
    assert few.ratio > 1.05 and few.p_value >= 0.01 and few.verdict == Verdict.SAME


def test_judge_answers_inconclusive_on_a_busy_host_or_a_wide_spread() -> None:
    assert judge(_samples(10.0, 12.0, busy=1.0)).verdict == Verdict.INCONCLUSIVE
    wide = judge(_samples(10.0, 10.0, cv=0.5))
    assert wide.verdict == Verdict.INCONCLUSIVE and "spread" in wide.reason


def test_interleave_alternates_the_order_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.abtest as abtest

    order: list[str] = []

    def sample(call, number: int) -> float:  # noqa: ANN001
        order.append(call())
        return 0.001

    monkeypatch.setattr(abtest, "_sample", sample)
    samples = interleave(lambda: "a", lambda: "b", rounds=4, warmup=0)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"] and len(samples.base) == len(samples.new) == 4


def test_watch_sees_another_busy_process() -> None:
    with watch() as idle:
        pass
    spin = subprocess.Popen(["python3", "-c", "while True: pass"])
    try:
        with watch() as busy:
            __import__("time").sleep(1.0)
    finally:
        spin.kill()
    assert busy.other_cores > 0.5 and idle.other_cores >= 0


def test_watch_discounts_the_rounding_of_cpu_times_and_reports_no_more_cores_than_the_host_has(monkeypatch) -> None:
    """A 2 ms series read one 10 ms tick of another process as 4–7 busy cores on a 2-vCPU host."""
    import os

    from harness import noise

    def window(busy_seconds: float, seconds: float) -> float:
        host, clock = iter([0.0, busy_seconds]), iter([0.0, seconds])
        monkeypatch.setattr(noise, "_busy_seconds", lambda: next(host))
        monkeypatch.setattr(noise, "_own_seconds", lambda workers=False: 0.0)
        with watch(clock=lambda: next(clock)) as load:
            pass
        return load.other_cores

    assert window(2 * noise.TICK, 0.002) == 0.0
    assert window(100.0, 1.0) == os.cpu_count()
    assert window(1.0 + noise.SLACK, 2.0) == pytest.approx(0.5)


def test_watch_counts_worker_processes_as_its_own_when_told() -> None:
    """A tuning runner's worker processes do the measured work: with `workers`, their CPU time is not another
    process's load."""
    import psutil

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        spent = sum(psutil.Process(spin.pid).cpu_times()[:2])
        with watch() as plain, watch(workers=True) as own:  # the same second: other load counts in both alike
            __import__("time").sleep(1.0)
        spent = sum(psutil.Process(spin.pid).cpu_times()[:2]) - spent
    finally:
        spin.kill()
        spin.wait()
    assert spent > 0.1  # the child ran, however busy the host
    assert plain.other_cores - own.other_cores == pytest.approx(spent / plain.seconds, abs=0.1)


def test_a_noisy_row_is_marked_in_the_printed_table() -> None:
    log = NoiseLog()
    with watch() as load:
        pass
    load.other_cores = 1.2
    log.add("tvm", 0.9, 0.31, load)
    log.add("pytorch", 0.9, 0.02, load)  # one slow call: a large CV, a small robust spread
    assert "host busy" in log.reason() and "tvm spread 31%" in log.reason() and "pytorch" not in log.reason()
    text = format_rows([Row(recipe="v1_fp32", noisy=log.reason()), Row(recipe="v2_fp32")])
    assert "yes" in text and "noisy: v1_fp32: host busy" in text and "v2_fp32" not in text.split("noisy:")[1]


def test_a_series_timed_on_a_board_is_judged_by_its_spread_alone() -> None:
    """A board over RPC (an emulated one's qemu included) does its own timing: this host's load says nothing."""
    log = NoiseLog()
    log.add("tvm", 0.05, 0.03, None)
    assert log.busy is None and log.reason() is None
    log.add("tvm", 0.4, 0.2, None)
    assert log.reason() == "tvm spread 20% (1.48·MAD/median > 10%)"


def _row(**kw: object) -> Row:
    base = dict(recipe="v1_fp32", device="x86", target="llvm -mcpu=x86-64-v3", threads=2, batch=1,
                tvm_version="0.27", torch_version="2.14", vs_ort=1.2, top1=0.95, top5=None, params=10, macs=100,
                artifact_bytes=1000)
    return Row(**(base | kw))


def test_stored_baseline_compares_only_under_the_same_conditions(tmp_path: Path) -> None:
    path = save_baseline([_row(), _row(recipe="v2_fp32")], tmp_path / "baseline.csv")
    baseline = load_baseline(path)
    rows = baseline_check([_row(vs_ort=1.4, top1=0.93), _row(recipe="v2_fp32", threads=4)], baseline)
    verdicts = {(r.recipe, r.metric): r.verdict for r in rows}
    assert verdicts[("v1_fp32", "vs_ort")] == Verdict.REGRESSION
    assert verdicts[("v1_fp32", "top1")] == Verdict.REGRESSION
    assert verdicts[("v1_fp32", "macs")] == Verdict.SAME
    skipped = next(r for r in rows if r.recipe == "v2_fp32")
    assert skipped.verdict == "skipped" and "threads 2 → 4" in skipped.reason
    assert exit_code(rows) == 1
    same = baseline_check([_row(), _row(recipe="v1_fp32", noisy="host busy")], baseline)
    assert exit_code(same[:5]) == 0 and exit_code(same) == 3  # a noisy vs_ort is inconclusive


def test_a_baseline_of_another_table_version_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    pd.DataFrame([{"recipe": "v1_fp32", "latency_ms_median": 4.0}]).to_csv(old, index=False)
    with pytest.raises(HarnessError, match="another table version"):
        load_baseline(old)
    with pytest.raises(HarnessError, match="no such file"):
        load_baseline(tmp_path / "missing.csv")


# ~1 min: three CLI runs, each measuring the recipe; CI runs it (.ci/run, slow set)
@pytest.mark.slow
def test_check_save_then_against_end_to_end(tiny_sets: tuple[Path, Path, Path]) -> None:
    root = tiny_sets[0]
    args = (str(root / "tiny.yaml"), "--results", str(root / "res"), "--out", str(root / "stored"))
    saved = run_cli("-q", "check", *args[:3], "--save", str(root / "baseline.csv"))
    assert saved.returncode == 0 and "saved the baseline of 1 row(s)" in saved.stdout, saved.stderr
    same = run_cli("-q", "check", *args, "--against", str(root / "baseline.csv"))
    verdicts = {r["metric"]: r["verdict"] for r in json.loads((root / "stored" / "check.json").read_text())["rows"]}
    assert verdicts["top1"] == "same" and verdicts["macs"] == "same" and verdicts["artifact_bytes"] == "same"
    assert verdicts["vs_ort"] == "inconclusive" and same.returncode == 3  # untuned kernels leave vs_ort empty
    baseline = pd.read_csv(root / "baseline.csv")
    baseline["top1"] += 0.2  # as if the model had been more accurate before
    baseline.to_csv(root / "better.csv", index=False)
    worse = run_cli("-q", "check", *args, "--against", str(root / "better.csv"))
    assert worse.returncode == 1 and "regression" in worse.stdout


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny recipe saved as a set, and the same recipe four times as wide (same input, ~16× the work)."""
    root = tmp_path_factory.mktemp("check")
    (root / "wide").mkdir()
    recipe = root / "tiny.yaml"
    recipe.write_text(json.dumps(TINY_RECIPE))
    (root / "wide" / "tiny.yaml").write_text(json.dumps(TINY_RECIPE | {"model": {"name": "test_mobilenet_v1",
                                                                                   "width": 1.0}}))
    for src, out in ((recipe, "set"), (root / "wide" / "tiny.yaml", "wide_set")):  # `harness build`, in this process
        build_set([load_recipe(str(src))], load_device("x86"), root / out, Workspace(root / "res"), progress=False)
    return root, root / "set", root / "wide_set"


def test_check_passes_the_same_build_and_writes_markdown_and_json(tiny_sets: tuple[Path, Path, Path]) -> None:
    root, base, _ = tiny_sets
    done = run_cli("-q", "check", str(root / "tiny.yaml"), "--base", str(base), "--results", str(root / "res"),
                   "--out", str(root / "same"))
    assert done.returncode in (0, 3), done.stderr
    if done.returncode == 3:
        assert "busy" in done.stdout or "spread" in done.stdout
    report = json.loads((root / "same" / "check.json").read_text())
    assert report["rows"][0]["recipe"] == "tiny" and report["exit_code"] == done.returncode
    assert "| tiny | x86 | latency_ms |" in (root / "same" / "check.md").read_text()


def test_check_catches_a_slower_build(tiny_sets: tuple[Path, Path, Path]) -> None:
    root, base, wide = tiny_sets
    done = run_cli("-q", "check", "--base", str(base), "--new", str(wide), "--out", str(root / "slow"))
    assert done.returncode == 1 or (done.returncode == 3 and "busy" in done.stdout), done.stdout + done.stderr
    if done.returncode == 1:
        assert "regression" in done.stdout and "REGRESSION" in done.stdout


# ~40 s; CI runs it (.ci/run, slow set), and its last step, the latency gate, builds HEAD~1 in a worktree too
@pytest.mark.slow
def test_check_builds_the_base_revision_in_a_worktree(tiny_sets: tuple[Path, Path, Path]) -> None:
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    root, _, _ = tiny_sets
    done = run_cli("-q", "check", str(root / "tiny.yaml"), "--base", "HEAD", "--results", str(root / "res"),
                   "--out", str(root / "rev"))
    if "predates the gate" in done.stderr:
        pytest.skip("HEAD has no `harness build` yet")
    assert done.returncode in (0, 3), done.stderr
    assert "tiny" in done.stdout
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    assert "harness-base-" not in worktrees  # the worktree is removed again


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --base"),
    (["--base", "HEAD", "--against", "x.csv"], "exactly one of --base"),
    (["--base", "no-such-revision-xyz", "v1_fp32"], "neither a folder nor a git revision"),
    (["--against", "/nonexistent/baseline.csv"], "no such file"),
    (["--base", "/tmp", "--new", "/nonexistent"], "not a saved artifact set"),
    (["--threshold", "0", "--base", "HEAD"], "--threshold"),
    (["v1_fp32", "--save", "/tmp"], "--save /tmp: a folder; give a file name"),  # before anything is measured
    (["v1_fp32", "--base", "HEAD", "--out", str(REPO / "README.md")], "README.md: a file, not a folder"),
    # options the mode does not use are refused, not ignored
    (["v1_fp32", "--base", "HEAD", "--max-acc-drop", "0.1"], "check --base: --max-acc-drop does not apply (it goes "
                                                             "with --against)"),
    (["--against", "b.csv", "--rounds", "5"], "check --against: --rounds does not apply (it goes with --base)"),
    (["v1_fp32", "--save", "b.csv", "--threshold", "0.1"], "check --save: --threshold does not apply (it goes "
                                                           "with --base or --against)"),
])
def test_check_usage_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = run_cli("check", *args, "--results", str(tmp_path))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr


def test_a_check_that_compared_nothing_has_not_passed() -> None:
    """Every row skipped (a stored baseline from another machine), or none: exit 3, not 0."""
    skipped = CheckRow(recipe="v1_fp32", device="x86", metric="-", base=None, new=None, ratio=None, p_value=None,
                       verdict="skipped", reason="conditions differ: threads 4 → 2")
    assert exit_code([]) == exit_code([skipped]) == 3
    assert summary([]) == "harness check inconclusive: nothing compared"
    assert summary([skipped]) == "harness check inconclusive: 1 skipped"
    same = CheckRow(**{**asdict(skipped), "metric": "top1", "verdict": Verdict.SAME, "reason": "drop 0"})
    assert exit_code([skipped, same]) == 0


def test_check_of_two_saved_sets_times_the_recipes_named_which_both_must_have(tiny_sets) -> None:  # noqa: ANN001
    root, base, wide = tiny_sets
    other = root / "other.yaml"
    other.write_text(json.dumps(TINY_RECIPE))
    done = run_cli("-q", "check", str(other), "--base", str(base), "--new", str(wide), "--out", str(root / "o"))
    assert done.returncode == 2 and done.stderr.startswith(f"error: the new builds ({wide}) have no other (they "
                                                           "have: tiny)"), done.stderr


def test_against_without_recipes_names_the_baselines_recipe_it_cannot_find(tmp_path: Path) -> None:
    """Without recipes, the baseline's own recipe names are loaded, all before anything is measured."""
    from harness.check import BASELINE_FORMAT, CONDITIONS, METRICS

    stored = tmp_path / "baseline.csv"
    cells = {"baseline_format": BASELINE_FORMAT, **dict.fromkeys((*CONDITIONS, *METRICS), 1)}
    pd.DataFrame([cells | {"recipe": "v1_alpha025"}, cells | {"recipe": "my_tiny"}]).to_csv(stored, index=False)
    done = run_cli("check", "--against", str(stored), "--results", str(tmp_path / "res"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "'my_tiny': neither a recipe file nor a shipped recipe" in done.stderr
    assert done.stderr.strip().endswith("; name the baseline's recipe files")
    assert not (tmp_path / "res" / "runs").exists() or not any((tmp_path / "res" / "runs").iterdir())


def test_a_stored_baseline_of_remote_and_local_rows_matches_the_same_rows(tmp_path: Path) -> None:
    """A remote device has no thread count (an empty cell, read as NaN), and beside it 4 reads as 4.0: neither is a
    difference of conditions (every row was skipped: a check that compared nothing)."""
    def row(device: str, threads: int | None) -> Row:
        return Row(recipe="v1_fp32", device=device, target="llvm", threads=threads, batch=1, tvm_version="0.27",
                   torch_version="2.11", vs_ort=1.1, top1=0.9, top5=1.0, params=10, macs=20, artifact_bytes=30)

    rows = [row("rpi4", None), row("x86", 4)]
    checked = baseline_check(rows, load_baseline(save_baseline(rows, tmp_path / "baseline.csv")))
    assert checked and all(r.verdict == Verdict.SAME for r in checked), [(r.metric, r.reason) for r in checked]
