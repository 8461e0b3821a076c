"""End to end on emulated Raspberry Pi 4 and 5 boards (aarch64 under qemu-user, TVM RPC through a tracker).

Marked `rpi`: `tox -e slow` and CI run it; it is skipped, with the reason, where the emulator cannot be set
up (no qemu-user-static or debootstrap, not root, no Debian mirror or PyPI).
"""

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RECIPE, fresh_tune_trials, run_cli, start_emulated_boards, tensorized_schedule

from harness import emulator
from harness.device import load_device

pytestmark = pytest.mark.rpi


@pytest.fixture(scope="module")
def boards():
    """Two emulated rpi4 boards on the profile's tracker, stopped afterwards."""
    started = start_emulated_boards("rpi4", boards=2)
    yield started
    emulator.stop(names={b.name for b in started})


def _rows(results) -> pd.DataFrame:
    return pd.read_csv(results / "results.csv")


@pytest.mark.parametrize("steps", [[], [{"quantize": {}}], [{"quantize": {"reduce_range": True}}]],
                         ids=["fp32", "int8", "int8-7bit"])
def test_run_on_an_emulated_board_matches_x86(boards, write_recipe, tmp_path, steps) -> None:
    recipe, results = write_recipe(TINY_RECIPE | {"steps": steps}), tmp_path / "results"
    for device in ("x86", "rpi4"):
        out = run_cli("-q", "run", str(recipe), "--device", device, "--results", str(results))
        assert out.returncode == 0, out.stderr
    rows = _rows(results)
    x86, rpi4 = (rows[rows["device"] == device].iloc[-1] for device in ("x86", "rpi4"))  # the recipe's own rows
    assert rpi4["device"] == "rpi4" and rpi4["remote"] and rpi4["emulated"]
    assert pd.isna(rpi4["host_busy"]) and not pd.isna(x86["host_busy"])  # the host's load is not the board's
    assert rpi4["board"] in {b.name for b in boards}
    assert abs(rpi4["top1"] - x86["top1"]) <= 0.005
    assert '"mcpu": "cortex-a72"' in rpi4["target"]
    if steps:  # integer int8 on aarch64 too; compared with ONNX Runtime on the same QDQ model
        assert rpi4["dtype"] == "int8" and rpi4["integer_ops"] == "10/10" and rpi4["max_abs_diff"] < 0.05
        # the stem and the pointwise convolutions run on packed weights (NEON int8 products are exact for any
        # int8 weight; the stem's 3 input channels padded to 4)
        assert rpi4["dot_product_ops"] == "5/10"
    else:
        assert rpi4["max_abs_diff"] < 1e-3


def test_sweep_fans_out_over_both_boards(boards, write_recipe, tmp_path) -> None:
    recipe, results = write_recipe(TINY_RECIPE), tmp_path / "results"
    out = run_cli("sweep", str(recipe), "--width", "0.25,0.5,0.75,1.0", "--device", "rpi4",
                  "--results", str(results))
    assert out.returncode == 0, out.stderr
    assert "fanning 4 runs out over 2 boards" in out.stderr
    rows = _rows(results)
    assert len(rows) == 4 and set(rows["board"]) == {b.name for b in boards}


def test_a_board_that_drops_mid_run_is_replaced(boards, write_recipe, tmp_path) -> None:
    """One healthy board and one that dies 0.5 s into its session: every row still comes back."""
    emulator.stop(names={boards[1].name})
    dropping = emulator.start(load_device("rpi4"), boards=1, drop_after=0.5)
    try:
        recipe = write_recipe(TINY_RECIPE | {"data": TINY_RECIPE["data"] | {"resolution": 96}})
        results = tmp_path / "results"
        out = run_cli("sweep", str(recipe), "--width", "0.25,0.5", "--device", "rpi4", "--results", str(results))
        assert out.returncode == 0, out.stderr
        assert "retrying on another board" in out.stderr
        rows = _rows(results)
        assert len(rows) == 2 and set(rows["board"]) == {boards[0].name} and rows["attempts"].max() == 2
    finally:
        emulator.stop(names={b.name for b in dropping})
        boards[1:] = emulator.start(load_device("rpi4"), boards=1)


def test_tuning_measures_candidates_on_the_board(boards, write_recipe, tmp_path) -> None:
    """MetaSchedule's RPCRunner through the tracker: aarch64 candidates built here, timed on an emulated
    board, and the rpi4 database used by the next run there."""
    recipe, results = write_recipe(TINY_RECIPE), tmp_path / "results"
    out = run_cli("-q", "tune", str(recipe), "--device", "rpi4", "--trials", "16", "--results", str(results))
    assert out.returncode == 0, out.stderr
    assert 16 <= fresh_tune_trials(out.stdout) <= 24, out.stdout  # MetaSchedule may finish its last batch
    assert (results / "tuning" / "aarch64-cortex-a72-neon-t4" / "database_tuning_record.json").is_file()
    run = run_cli("-q", "run", str(recipe), "--device", "rpi4", "--results", str(results))
    assert run.returncode == 0, run.stderr
    row = _rows(results).iloc[-1]
    tuned, total = map(int, row["tuned_kernels"].split("/"))
    assert row["emulated"] and 0 < tuned < total and row["max_abs_diff"] < 1e-3


@pytest.fixture(scope="module")
def rpi5_board():
    """One emulated rpi5 board (Cortex-A76, with the dot-product instructions), stopped afterwards."""
    (board,) = start_emulated_boards("rpi5")
    yield board
    emulator.stop(names={board.name})


def _tensorize_packed_kernels(recipe: Path, results: Path) -> int:
    """Give the packed convolutions of `recipe` on rpi5 schedules on the `sdot` intrinsic in the workspace's
    tuning database (from the design space, unmeasured: this checks what they compute); returns how many."""
    from tvm.s_tir import meta_schedule as ms

    from harness.compile import database
    from harness.compile.kernels import extract_tasks
    from harness.compile.target import build_target
    from harness.recipe import load_recipe
    from harness.tune import structural_exports, tuning_database, tuning_modules, with_references
    from harness.workspace import Workspace

    ws, profile = Workspace(root=results), load_device("rpi5")
    target = build_target(profile)
    exports = structural_exports(with_references([load_recipe(str(recipe))]), ws, progress=False)
    db = database.open_database(tuning_database(profile, ws))
    packed = [t for t in extract_tasks(tuning_modules(exports, profile), target) if "conv2d_packed" in t.task_name]
    for task in packed:
        sch = tensorized_schedule(task.dispatched[0], target)
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(task.dispatched[0]),
                                                         [1e-3], target))
    return len(packed)


def test_int8_on_an_emulated_rpi5_runs_sdot_and_agrees_with_onnx_runtime(rpi5_board, write_recipe, tmp_path) -> None:
    """Full-range int8 weights, the stem and every pointwise convolution on the dot-product extension's `sdot`
    (checked in the board's library), logits against ONNX Runtime's on the same QDQ model."""
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("no aarch64-linux-gnu-objdump (apt-get install binutils-aarch64-linux-gnu)")
    recipe, results = write_recipe(TINY_RECIPE | {"steps": [{"quantize": {}}]}), tmp_path / "results"
    assert _tensorize_packed_kernels(recipe, results) == 5
    out = run_cli("-q", "run", str(recipe), "--device", "rpi5", "--results", str(results))
    assert out.returncode == 0, out.stderr
    row = _rows(results).iloc[-1]
    assert row["device"] == "rpi5" and row["emulated"] and row["board"] == rpi5_board.name
    assert row["dtype"] == "int8" and row["integer_ops"] == "10/10" and row["dot_product_ops"] == "5/10"
    assert row["tuned_kernels"].startswith("5/") and row["max_abs_diff"] < 0.05
    (library,) = [p.with_suffix(".so") for p in (results / "cache" / "artifacts" / "rpi5").glob("*/model.json")
                  if json.loads(p.read_text())["report"]["dot_product_ops"]]
    asm = subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert sum("\tsdot\t" in line for line in asm.splitlines()) >= 5


def test_emulator_cli_status_lists_the_boards(boards) -> None:
    out = run_cli("emulator", "status")
    assert out.returncode == 0 and "rpi4: 2 board(s) registered" in out.stdout
    only = run_cli("emulator", "status", "rpi4")  # the module's rpi5 board, where it runs, is not listed
    assert only.returncode == 0 and "rpi4: 2 board(s) registered" in only.stdout and "rpi5" not in only.stdout
    assert run_cli("emulator", "status", "rpi5").stdout.count("rpi5-") == len(emulator.status("rpi5")[0].boards)


def test_emulator_cli_start_tops_up_to_the_count(boards) -> None:
    """`--boards N` is how many boards of the device to have: a second `start` does not add more."""
    out = run_cli("emulator", "start", "rpi4", "--boards", "2")
    assert out.returncode == 0 and "started 0 emulated rpi4 board(s)" in out.stdout, out.stderr
    assert "; 2 already running" in out.stdout
    assert len(emulator.status("rpi4")[0].boards) == 2
