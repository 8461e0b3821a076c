"""No silent untuned numbers: rows say how many kernels were tuned, ratios to untuned artifacts stay empty,
and a warning names the command that tunes what is missing."""

import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RECIPE, run_here

from harness.compile.target import target_key, target_spec
from harness.device import load_device
from harness.pipeline import compare
from harness.recipe import load_recipe
from harness.results import SUMMARY_COLUMNS, Row, format_rows
from harness.specs import TuningCoverage
from harness.tune import tune_command


def _row(recipe: str, latency: float, tuned: str, ort: float | None = 5.0) -> Row:
    return Row(recipe=recipe, top1=0.9, latency_ms_median=latency, tuned_kernels=TuningCoverage.parse(tuned),
               ort_latency_ms=ort)


def test_ratios_are_left_empty_with_the_reason_when_kernels_are_untuned() -> None:
    ref, tuned, partly = _row("ref", 10.0, "20/20"), _row("pruned", 5.0, "18/18"), _row("int8", 400.0, "3/25")
    _, tuned, partly = compare([ref, tuned, partly], ref)
    assert tuned.speedup == 2.0 and tuned.vs_ort == 1.0 and tuned.notes is None and tuned.reference == "ref"
    assert partly.speedup is None and partly.vs_ort is None
    assert "untuned kernels (this 3/25, reference 20/20 tuned)" in partly.notes
    ref_untuned = _row("ref", 1000.0, "0/20")
    _, tuned = compare([ref_untuned, tuned], ref_untuned)
    assert tuned.speedup is None and tuned.vs_ort == 1.0  # its own ratio to ORT still stands


def test_tune_command_names_recipe_device_and_a_budget() -> None:
    cmd = tune_command(load_recipe("v1_fp32").reference(), load_device("x86"), untuned=30)
    assert cmd == "python -m harness tune v1_fp32 --device x86 --batch 1 --trials 100000 --minutes 9"


def test_tune_command_names_files_as_the_user_gave_them(write_recipe, tmp_path: Path) -> None:
    """A recipe or profile from a file is named by its path (its `name` alone is no shipped recipe or device), with
    the tracker a board is reached through and the batch size its kernels are built for."""
    recipe = load_recipe(str(write_recipe(TINY_RECIPE, name="my recipe"))).with_batch(4)
    board = tmp_path / "board.yaml"
    board.write_text(Path("devices/rpi4.yaml").read_text().replace("name: rpi4", "name: pi"))
    cmd = tune_command(recipe.reference(), load_device(str(board)).with_remote(tracker="farm:9190"), untuned=3)
    assert cmd == (f"python -m harness tune '{tmp_path}/my recipe.yaml' --device {board} --tracker farm:9190 "
                   "--batch 4 --trials 100000 --minutes 2")


def test_untuned_run_warns_once_with_the_fix_and_prints_tuned_kernels(write_recipe, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A run with no database for its kernels: one warning with the tune command, `tuned_kernels` in the
    printed table and the row, and no vs_ort."""
    results = tmp_path / "results"
    other = results / "tuning" / target_key(target_spec(load_device("x86"))).replace("-t2", "-t8")
    other.mkdir(parents=True)  # a database for another thread count is named, not used
    with caplog.at_level(logging.WARNING):
        rows = run_here(write_recipe(TINY_RECIPE), results)
    warnings = [r.getMessage() for r in caplog.records if "untuned" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"python -m harness tune {tmp_path}/tiny.yaml --device x86 --batch 1 --trials 100000 --minutes" \
        in warnings[0]
    assert other.name in warnings[0] and "not used" in warnings[0]
    assert "tuned_kernels" in format_rows(rows, SUMMARY_COLUMNS)  # what `run` prints
    row = pd.read_csv(results / "results.csv").iloc[0]
    tuned, total = map(int, row["tuned_kernels"].split("/"))
    assert tuned == 0 < total and pd.isna(row["vs_ort"]) and "no vs_ort" in row["notes"]

