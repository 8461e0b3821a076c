"""RPC failure paths: no tracker, a tracker without boards, a server that never answers, and what a run
keeps (the cross-compiled artifact) when no board can be reached."""

import contextlib
import logging
import shutil
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE, run_cli

from harness.device import load_device
from harness.remote import DeviceUnreachable, connect


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rpi4(**remote) -> object:
    profile = load_device("rpi4")
    return replace(profile, remote=replace(profile.remote, **remote))


def test_unreachable_tracker_is_a_clear_error() -> None:
    port = _free_port()
    with pytest.raises(DeviceUnreachable, match=rf"cannot reach RPC tracker 127.0.0.1:{port} .*emulator start rpi4"):
        connect(_rpi4(tracker=f"127.0.0.1:{port}"))


def test_counting_the_boards_of_an_unreachable_tracker_does_not_wait_for_tvm_retries(caplog) -> None:
    """A run of several variants asks the tracker how many boards it has before connecting: with no tracker,
    that is one board (connect() then says why), at once, not after TVM's 60 s of retries."""
    from harness.boards import board_count

    tvm_rpc_log = logging.getLogger("RPCServer")  # TVM warns there before each retry; it does not propagate
    tvm_rpc_log.addHandler(caplog.handler)
    try:
        assert board_count(_rpi4(tracker=f"127.0.0.1:{_free_port()}")) == 1
    finally:
        tvm_rpc_log.removeHandler(caplog.handler)
    assert not caplog.records


def test_server_that_never_answers_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    port = listener.getsockname()[1]
    try:
        with pytest.raises(DeviceUnreachable, match="no answer over RPC within 2 s"):
            connect(_rpi4(direct=f"127.0.0.1:{port}", tracker=None, timeout_s=2))
    finally:
        listener.close()


@pytest.fixture
def empty_tracker():
    """A TVM RPC tracker on this host with no board registered; yields its 'host:port'."""
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=_free_port(), port_end=65000, silent=True)
    try:
        yield f"127.0.0.1:{tracker.port}"
    finally:
        tracker.terminate()


def test_tracker_without_boards_of_the_key(empty_tracker: str) -> None:
    with pytest.raises(DeviceUnreachable, match="has no board with key 'rpi4'"):
        connect(_rpi4(tracker=empty_tracker))


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs gcc-aarch64-linux-gnu")
def test_run_without_a_board_keeps_the_cross_compiled_artifact(write_recipe, tmp_path: Path) -> None:
    recipe, results = write_recipe(TINY_RECIPE), tmp_path / "results"
    out = run_cli("-q", "run", str(recipe), "--device", "rpi4", "--tracker", f"127.0.0.1:{_free_port()}",
                  "--results", str(results))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    *warnings, line = out.stderr.strip().splitlines()  # before it: the untuned-kernels warning (no database)
    assert all("WARNING" in w and "untuned" in w for w in warnings), warnings
    assert line.startswith("error: device rpi4: cannot reach RPC tracker") and "compiled artifacts kept in" in line
    (lib,) = (results / "runs").glob("*/*.so")
    assert int.from_bytes(lib.read_bytes()[18:20], "little") == 183  # ELF e_machine: EM_AARCH64
    assert not (results / "results.csv").exists()


def test_a_run_that_outlasts_its_rpc_session_is_one_clear_error(write_recipe, tmp_path: Path) -> None:
    """A real RPC server on this host, as a board whose sessions end after 0.3 s: no retries, one line."""
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=_free_port(), port_end=65000, silent=True)
    board = tmp_path / "board.yaml"
    board.write_text(yaml.safe_dump({
        "name": "board", "description": "this host over RPC", "target": {"kind": "llvm"}, "threads": 1,
        "remote": {"key": "board", "direct": f"127.0.0.1:{server.port}", "session_timeout_s": 0.3}}))
    recipe = write_recipe(TINY_RECIPE | {"measure": {"repeats": 2000, "number": 10}})
    try:
        out = run_cli("-q", "run", str(recipe), "--device", str(board), "--results", str(tmp_path / "results"))
    finally:
        server.terminate()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    *warnings, line = out.stderr.strip().splitlines()  # before it: the untuned-kernels warning (no database)
    assert all("WARNING" in w and "untuned" in w for w in warnings), warnings
    assert line.startswith("error: ") and "outlasted the RPC session (0.3 s): raise session_timeout_s" in line


def _board_profile(tmp_path: Path, **changes) -> Path:
    """The rpi4 profile as a file, with `changes` (None drops a key)."""
    data = yaml.safe_load(Path("devices/rpi4.yaml").read_text()) | changes
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    return path


def test_tune_with_an_unreachable_tracker_is_one_line_before_any_export(write_recipe, tmp_path: Path) -> None:
    """Before: the candidates were built, then TVM's RPC runner retried the tracker for minutes."""
    board, results = _board_profile(tmp_path, cross_compiler=None), tmp_path / "results"
    port = _free_port()
    out = run_cli("-q", "tune", str(write_recipe(TINY_RECIPE)), "--device", str(board), "--tracker",
                  f"127.0.0.1:{port}", "--trials", "8", "--results", str(results))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: device rpi4: cannot reach RPC tracker 127.0.0.1:{port} (")
    assert not list(results.rglob("*.onnx"))


def test_tuning_on_a_tracker_without_boards_of_the_key_stops_at_once(empty_tracker: str) -> None:
    from harness.compile.runners import runner_for

    with pytest.raises(DeviceUnreachable, match="has no board with key 'rpi4'"):
        runner_for(_rpi4(tracker=empty_tracker))


def test_a_missing_cross_compiler_stops_a_run_before_training(write_recipe, tmp_path: Path) -> None:
    board, results = _board_profile(tmp_path, cross_compiler="aarch64-nowhere-gcc"), tmp_path / "results"
    out = run_cli("-q", "run", str(write_recipe(TINY_RECIPE)), "--device", str(board), "--results", str(results))
    assert out.returncode == 2 and out.stderr == ("error: device rpi4: cross compiler 'aarch64-nowhere-gcc' not "
                                                  "found (on Debian/Ubuntu: apt-get install gcc-aarch64-nowhere)\n")
    assert not results.exists() or not any(results.rglob("*.*"))


def test_reaching_a_tracker_registered_server_directly_says_to_use_the_tracker(empty_tracker: str) -> None:
    from tvm import rpc

    host, port = empty_tracker.split(":")
    server = rpc.Server(host="127.0.0.1", port=_free_port(), port_end=65000, key="rpi4",
                        tracker_addr=(host, int(port)), silent=True)
    try:
        with pytest.raises(DeviceUnreachable, match="takes sessions through its tracker: pass --tracker"):
            connect(_rpi4(direct=f"127.0.0.1:{server.port}", tracker=None, timeout_s=20))
    finally:
        server.terminate()


def test_a_tracker_address_where_another_service_answers_is_one_line() -> None:
    """TVM raises a RuntimeError there ("... is not RPC Tracker"); tuning checks the tracker before anything else."""
    from harness.compile.runners import check_runner

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.recv(4)
                conn.sendall(b"\0\0\0\0")  # not TVM's tracker magic
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(DeviceUnreachable, match="does not answer as one .*is not RPC Tracker"):
            check_runner(_rpi4(tracker=f"127.0.0.1:{listener.getsockname()[1]}"))
    finally:
        listener.close()


@pytest.mark.parametrize("exc, first, last", [
    (RuntimeError("Traceback:\n  frame\nCheck failed: x"), "Traceback:", "Check failed: x"),
    (ConnectionResetError(), "ConnectionResetError", "ConnectionResetError"),  # RPC errors may carry no message
    (OSError("  \n"), "OSError", "OSError"),
])
def test_error_lines_name_the_type_when_the_message_is_empty(exc: BaseException, first: str, last: str) -> None:
    from harness.errors import first_line, last_line

    assert (first_line(exc), last_line(exc)) == (first, last)
