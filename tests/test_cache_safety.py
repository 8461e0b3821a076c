"""Runs that are killed, run side by side, or find their cache damaged: the results table stays intact, the
cache is never poisoned, and a damaged entry is rebuilt with one warning line (every kind truncated; the
library, whose damage would crash the loading process, also garbled and emptied).

Each case runs the CLI as a user does (a cache to damage is first filled by a run in the test's process), on a
tiny recipe with every kind of cached file (trained model, pruned model and its report, fp32 and int8 ONNX,
compiled library and its metadata). The slow suite (`tox -e slow`, CI) runs them all; the default suite runs one
corruption case.
"""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_RECIPE, run_cli, run_here

RECIPE = {**TINY_RECIPE, "steps": [{"prune": {"ratio": 0.5}}, {"finetune": {"epochs": 1}},
                                   {"quantize": {"calibration_samples": 16}}]}


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_int8.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def _start(recipe: Path, results: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "harness", "-q", "run", str(recipe), "--results", str(results)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(results: Path) -> pd.DataFrame:
    table = results / "results.csv"
    return pd.read_csv(table) if table.is_file() else pd.DataFrame()


def _leftovers(results: Path) -> list[str]:
    """Temporary files and unfinished run folders under `results`."""
    temporary = [str(p) for p in results.rglob(".*.tmp*")]
    unfinished = [str(p) for p in (results / "runs").glob("*") if not (p / "run.json").is_file()]
    return temporary + unfinished


def _complete(rows: pd.DataFrame) -> bool:
    """Every row has a measured latency and accuracy, and the reference/variant pairs are whole."""
    return bool(rows.empty or (rows["latency_ms_median"].notna().all() and rows["top1"].notna().all()
                               and len(rows) % 2 == 0))


@pytest.mark.slow
def test_random_kills_never_corrupt_the_table_or_the_cache(recipe: Path, tmp_path: Path) -> None:
    """SIGKILL at random moments of a run (training, pruning, quantizing, compiling, measuring, recording):
    the table stays readable and whole, and the next run succeeds and leaves nothing behind."""
    results, rng = tmp_path / "results", random.Random(7)
    for delay in sorted(rng.uniform(2, 40) for _ in range(5)):
        proc = _start(recipe, results)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        assert _complete(_rows(results)), f"after a kill at {delay:.1f} s"
    before = len(_rows(results))
    out = run_cli("-q", "run", str(recipe), "--results", str(results))
    assert out.returncode == 0, out.stderr
    assert len(_rows(results)) == before + 2 and _complete(_rows(results))
    assert _leftovers(results) == []


@pytest.mark.slow
def test_concurrent_runs_of_one_recipe_on_a_cold_cache_build_once_and_agree(recipe: Path, tmp_path: Path) -> None:
    """Two runs of the same recipe started together: both succeed (each artifact checked against its own
    model), they share one training, and a third run reuses everything."""
    results = tmp_path / "results"
    first, second = _start(recipe, results), _start(recipe, results)
    outs = [p.communicate(timeout=900) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [err for _, err in outs]
    rows = _rows(results)
    assert len(rows) == 4 and (rows["max_abs_diff"] < 0.05).all()
    assert len(list((results / "cache" / "models").glob("*/model.pt"))) == 1
    third = run_cli("run", str(recipe), "--results", str(results))
    assert third.returncode == 0 and "reusing compiled artifact" in third.stderr and "damaged" not in third.stderr


CACHED = {  # cached file → where it lies under results/cache
    "trained model": "models/*/model.pt",
    "pruned model": "models/*/module.pt",
    "prune report": "models/*/steps.json",
    "fp32 ONNX": "onnx/*/model.onnx",
    "int8 ONNX": "onnx/*/model.int8-*.onnx",
    "library": "artifacts/x86/*/model.so",
    "library metadata": "artifacts/x86/*/model.json",
}
DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbled": lambda data: data[: len(data) // 2] + bytes(b ^ 0x5A for b in data[len(data) // 2:][:64])
    + data[len(data) // 2 + 64:],
    "emptied": lambda data: b"",
}


CASES = [(kind, "truncated") for kind in CACHED] + [("library", "garbled"), ("library", "emptied")]


@pytest.mark.parametrize(("kind", "damage"), [
    pytest.param(kind, damage, marks=[] if (kind, damage) == ("library", "truncated") else pytest.mark.slow)
    for kind, damage in CASES])
def test_a_damaged_cache_entry_is_rebuilt_with_one_warning(kind: str, damage: str, recipe: Path,
                                                           tmp_path: Path) -> None:
    results = tmp_path / "results"
    run_here(recipe, results)  # fills the cache
    victims = sorted((results / "cache").glob(CACHED[kind]))
    assert victims, CACHED[kind]
    for victim in victims:  # as a new file: this process still maps the library it loaded (truncating it: SIGBUS)
        damaged = DAMAGE[damage](victim.read_bytes())
        victim.unlink()
        victim.write_bytes(damaged)
    out = run_cli("run", str(recipe), "--results", str(results))
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "is damaged" in line]
    assert 1 <= len(warnings) <= len(victims), out.stderr
    assert all("building it again" in line for line in warnings)
    rows = _rows(results)
    assert len(rows) == 4 and (rows["max_abs_diff"] < 0.05).all()
    assert _leftovers(results) == []


def test_sweep_removes_what_ended_processes_left_and_leaves_other_hosts_runs_alone(tmp_path: Path) -> None:
    """A results folder may be shared by containers or hosts: a pid there is judged only in its own host and PID
    namespace; another's run folder or temporary file is swept only once stale (a live run of another container
    was deleted, losing its row)."""
    import os

    from harness import cache
    from harness.workspace import RUNNING, Workspace

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, here, stale = int(ended.stdout), cache.owner().partition("-")[2], time.time() - cache.STALE_S - 60
    markers = {"mine": cache.owner(), "dead": f"{dead}-{here}", "legacy-dead": f"{dead}",
               "other-host": f"{dead}-0badf00d", "other-host-stale": f"{dead}-0badf00d", "empty": "",
               "empty-stale": "", "garbled": b"\xff\xfe"}
    for name, text in markers.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        marker = tmp_path / "runs" / name / RUNNING
        marker.write_bytes(text if isinstance(text, bytes) else text.encode())
        if name.endswith("stale"):
            os.utime(marker, (stale, stale))
    temporaries = {f".a.onnx.{dead}-{here}.tmp": False, f".b.onnx.{dead}-0badf00d.tmp": True,
                   f".c.onnx.{cache.owner()}.tmp": True, f".d.onnx.{dead}.tmp": False}
    for name in temporaries:
        (tmp_path / name).write_text("x")
    for name in ("unmarked", "unmarked-old"):  # a run killed between making its folder and marking it
        (tmp_path / "runs" / name).mkdir()
    os.utime(tmp_path / "runs" / "unmarked-old", (time.time() - 120, time.time() - 120))
    Workspace(tmp_path).sweep()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["empty", "garbled", "mine", "other-host",
                                                                     "unmarked"]
    assert {name: (tmp_path / name).exists() for name in temporaries} == temporaries


def test_a_run_whose_rows_cannot_be_appended_keeps_them_in_its_run_folder(tmp_path: Path, monkeypatch, caplog) -> None:
    """The table is left as it was (a full disk, an immutable file); the measured rows are not lost."""
    import errno
    import os

    from harness import pipeline

    def full_disk(rows, path) -> None:  # noqa: ANN001
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    monkeypatch.setattr(pipeline, "append_rows", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_here(recipe, tmp_path / "results")
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["rows"][0]["top1"] > 0
    assert not (run_dir / "RUNNING").exists() and f"they are kept in {run_dir}/run.json" in caplog.text


def test_onnx_files_of_another_exporter_are_not_reused(tmp_path: Path, monkeypatch) -> None:
    """The ONNX cache is keyed by the exporter too (its code and the torch/onnx/ONNX Runtime versions): a harness
    whose export changed exports again, while the same exporter reuses the files and the trained weights."""
    from harness import build
    from harness.data import load_data
    from harness.recipe import recipe_from_dict
    from harness.workspace import Workspace

    recipe = recipe_from_dict(TINY_RECIPE | {"steps": [{"quantize": {}}]}, "tiny")
    splits, ws = load_data(recipe.data, recipe.resolution), Workspace(tmp_path)
    first = build.export_variant(recipe, splits, ws, progress=False)
    assert build.export_variant(recipe, splits, ws, progress=False).onnx.path == first.onnx.path
    monkeypatch.setattr(build, "exporter_digest", lambda: "another exporter")
    again = build.export_variant(recipe, splits, ws, progress=False)
    assert again.fp32_onnx.path.parent != first.fp32_onnx.path.parent and again.onnx.path.is_file()
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 1  # trained once
