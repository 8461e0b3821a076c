"""The CLI as users run it: `python -m harness ...` in a subprocess."""

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RECIPE, run_cli


def test_help_lists_the_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("run", "inspect", "devices", "results"):
        assert command in out.stdout


def test_inspect_json() -> None:
    out = run_cli("inspect", "mobilenet_v1", "--width", "0.5", "--resolution", "160", "--json")
    info = json.loads(out.stdout)
    assert info["params"] == 1_331_592 and round(info["macs"] / 1e6) == 77  # paper: 76 M, 1.32 M


def test_devices_lists_profiles_with_targets() -> None:
    out = run_cli("devices")
    assert out.returncode == 0
    assert "rpi4" in out.stdout and "cortex-a72" in out.stdout and "x86" in out.stdout


def test_run_tiny_recipe_end_to_end(write_recipe, tmp_path: Path) -> None:
    recipe = write_recipe(TINY_RECIPE)
    results = tmp_path / "results"
    out = run_cli("-q", "run", str(recipe), "--device", "x86", "--results", str(results))
    assert out.returncode == 0, out.stderr
    assert "tiny" in out.stdout and "appended 1 row(s)" in out.stdout
    table = pd.read_csv(results / "results.csv")
    row = table.iloc[0]
    assert row["model"] == "test_mobilenet_v1" and row["device"] == "x86" and row["dtype"] == "fp32"
    for column in ("latency_ms_median", "latency_ms_mean", "latency_ms_p90", "latency_ms_min", "latency_ms_std",
                   "torch_latency_ms", "ort_latency_ms", "top1", "top5", "params", "macs", "artifact_bytes"):
        assert row[column] > 0, column
    assert row["max_abs_diff"] < 1e-3 and row["emulated"] == False  # noqa: E712
    run_dir = results / "runs" / row["run_id"]
    assert len(list(run_dir.glob("*.so"))) == 1 and len(list(run_dir.glob("*.onnx"))) == 1
    assert json.loads((run_dir / "run.json").read_text())["rows"][0]["top1"] == row["top1"]
    # A second run reuses the cached model and artifact and appends a second row.
    again = run_cli("run", str(recipe), "--results", str(results))
    assert again.returncode == 0 and "reusing trained model" in again.stderr and "reusing compiled" in again.stderr
    assert len(pd.read_csv(results / "results.csv")) == 2
    # --no-record prints the row and leaves neither a row nor a run folder.
    runs = sorted((results / "runs").iterdir())
    dry = run_cli("-q", "run", str(recipe), "--results", str(results), "--no-record")
    assert dry.returncode == 0 and "tiny" in dry.stdout and "appended" not in dry.stdout, dry.stderr
    assert len(pd.read_csv(results / "results.csv")) == 2 and sorted((results / "runs").iterdir()) == runs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "absent.yaml"], "error: absent.yaml: file not found"),
        (["run", "v1_fp32", "--device", "rpi9"], "error: unknown device 'rpi9'; available:"),
        (["inspect", "mobilenet_v9"], "error: unknown model 'mobilenet_v9'"),
        (["run", "{recipe}"], "error: {recipe}: unknown key 'modle'"),
        (["run", "v1_fp32", "--rpc", "nowhere"], "error: --rpc: expected 'host:port'"),
        (["run", "v1_fp32", "--device", "rpi4", "--rpc", "a:1", "--tracker", "b:2"],
         "error: --rpc and --tracker: give one"),
        (["run", "v1_fp32", "--gpu", "1"], "error: --gpu 1: device x86 is not a CUDA GPU of this host"),
        (["run", "v1_fp3"], "error: 'v1_fp3': neither a recipe file nor a shipped recipe"),
        (["run", "absent.yaml", "-q"], "error: absent.yaml: file not found"),  # -q after the command too
        (["build", "v1_fp32", "--out", "{recipe}"], "error: --out {recipe}: a file, not a folder"),
        (["emulator", "stop", "rpi9"], "error: unknown device 'rpi9'"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], message: str, write_recipe, tmp_path: Path) -> None:
    recipe = write_recipe({"modle": {"name": "mobilenet_v1"}}, name="bad")
    args = [a.replace("{recipe}", str(recipe)) for a in args]
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.csv").write_text("run_id,recipe,device\nkept,r,x86\n")
    out = run_cli(*args, "--results", str(results)) if args[0] == "run" else run_cli(*args)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [message.replace("{recipe}", str(recipe))] or \
        out.stderr.strip().startswith(message.replace("{recipe}", str(recipe)))
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert (results / "results.csv").read_text() == "run_id,recipe,device\nkept,r,x86\n"


@pytest.mark.parametrize(("code", "message"), [(errno.ENOSPC, "No space left on device"),
                                               (errno.EACCES, "Permission denied"),
                                               (errno.EISDIR, "Is a directory")])  # a folder where a file belongs
def test_a_full_disk_or_a_forbidden_folder_is_a_one_line_error(code: int, message: str, monkeypatch, capsys) -> None:
    """The host's state, not a bug: one line naming it and the file, exit 2 (a disk filled up during a stop 32
    tune showed ONNX's traceback)."""
    from harness import cache, cli, commands

    def fail(args) -> int:  # noqa: ANN001  (named by its temporary file, as an atomic write fails)
        raise OSError(code, os.strerror(code), f"/results/runs/x/.model.onnx.{cache.owner()}.tmp")

    monkeypatch.setattr(commands, "devices", fail)
    assert cli.main(["devices"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}: /results/runs/x/model.onnx") and err.count("\n") == 1
    monkeypatch.setattr(commands, "devices", lambda args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):  # any other OSError is a bug to report, with its traceback
        cli.main(["devices"])


def test_a_folder_where_the_tables_lock_belongs_stops_a_run_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "results.csv.lock").mkdir()
    out = run_cli("run", "v1_fp32", "--results", str(tmp_path))
    assert out.returncode == 2 and out.stderr.startswith(f"error: Is a directory: {tmp_path}/results.csv.lock")
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "cache").exists(), out.stderr


def test_an_error_a_library_raised_because_of_ctrl_c_is_interrupted(monkeypatch, capsys) -> None:
    """Ctrl-C during `import onnxruntime` raises ImportError("initialization failed") from the KeyboardInterrupt."""
    from harness import cli, commands
    from harness.errors import HarnessError

    def interrupted_import(args) -> int:  # noqa: ANN001
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    def wrapped(args) -> int:  # noqa: ANN001  (the harness's one-line errors are raised `from None`)
        try:
            interrupted_import(args)
        except ImportError:
            raise HarnessError("onnxruntime cannot be imported") from None

    for command in (interrupted_import, wrapped):
        monkeypatch.setattr(commands, "devices", command)
        assert cli.main(["devices"]) == 130 and capsys.readouterr().err == "interrupted\n"
    monkeypatch.setattr(commands, "devices", lambda args: (_ for _ in ()).throw(ImportError("no module x")))
    with pytest.raises(ImportError):  # not caused by Ctrl-C: a bug to report, with its traceback
        cli.main(["devices"])


@pytest.mark.parametrize("table", ["", "a,b\n1,2\n"], ids=["empty", "foreign"])
def test_a_table_that_is_not_a_results_table_is_refused_before_any_work(table: str, tmp_path: Path) -> None:
    """`run` appends to it at the end: it is checked first, so no training is lost to it; it is left as it is."""
    (tmp_path / "results.csv").write_text(table)
    for args in (["run", "v1_fp32"], ["results"], ["compare"]):
        out = run_cli(*args, "--results", str(tmp_path))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith(f"error: {tmp_path / 'results.csv'}: not a") and out.stderr.count("\n") == 1
    assert (tmp_path / "results.csv").read_text() == table
