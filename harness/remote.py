"""Remote execution over TVM RPC: reach a board (through a tracker or directly), upload, load, run and time.

A board is emulated when its RPC server says so (`harness.board_info`, registered by the emulator's
board server); a plain `tvm.exec.rpc_server` on a real board does not have it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from harness.device import DeviceProfile, parse_hostport
from harness.errors import HarnessError, first_line
from harness.specs import MeasureSpec

log = logging.getLogger(__name__)

HOW_TO_ATTACH = ("start the emulator (python -m harness emulator start {name}), or run TVM's RPC server on the "
                 "board and pass --tracker HOST:PORT or --rpc HOST:PORT (README, section 'Boards')")


class DeviceUnreachable(HarnessError):
    """No board of the profile could be reached (nothing measured)."""


def _probe(host: str, port: int, timeout: float = 3.0) -> None:
    """Connect and close: OSError at once when nothing listens there (TVM's own connects retry for 60 s, warning
    every 5 s)."""
    socket.create_connection((host, port), timeout=timeout).close()


def _unreachable(profile: DeviceProfile, what: str, host: str, port: int, exc: OSError) -> DeviceUnreachable:
    return DeviceUnreachable(f"device {profile.name}: cannot reach {what} {host}:{port} ({exc.strerror or exc}); "
                             + HOW_TO_ATTACH.format(name=profile.name))


def tracker_devices(host: str, port: int, key: str) -> int:
    """How many RPC servers of `key` are registered with the tracker at host:port (free or busy); OSError at once
    when nothing listens there."""
    from tvm import rpc

    _probe(host, port)
    summary = rpc.connect_tracker(host, port).summary()
    return sum(1 for server in summary.get("server_info", []) if server.get("key", "").split(":")[-1] == key)


def check_tracker(profile: DeviceProfile) -> tuple[str, int]:
    """The tracker (host, port) of remote `profile`, checked at once to serve a board of its key:
    DeviceUnreachable (one line) when nothing listens there or it has no such board."""
    remote = profile.remote
    if remote is None or remote.tracker is None:
        raise HarnessError(f"device {profile.name}: no tracker or RPC address; " + HOW_TO_ATTACH.format(
            name=profile.name))
    host, port = parse_hostport(remote.tracker, f"device {profile.name} tracker")
    try:
        boards = tracker_devices(host, port, remote.key)
    except OSError as exc:
        raise _unreachable(profile, "RPC tracker", host, port, exc) from None
    except RuntimeError as exc:  # something else listens there (TVM: "... is not RPC Tracker")
        raise DeviceUnreachable(f"device {profile.name}: the RPC tracker at {host}:{port} does not answer as one "
                                f"({first_line(exc)})") from None
    if boards == 0:
        raise DeviceUnreachable(f"device {profile.name}: the tracker at {host}:{port} has no board with key "
                                f"{remote.key!r}; " + HOW_TO_ATTACH.format(name=profile.name))
    return host, port


def connect(profile: DeviceProfile) -> Any:  # tvm.rpc.RPCSession
    """An RPC session on one board of `profile` (waits for a free one when a tracker serves several).

    Gives up after the profile's `timeout_s` (TVM's handshake itself has no timeout: a port that accepts
    but never answers would hang forever).
    """
    result: dict[str, Any] = {}

    def attempt() -> None:
        try:
            result["session"] = _connect(profile)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            result["error"] = exc

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(profile.remote.timeout_s if profile.remote else None)
    if worker.is_alive():
        raise DeviceUnreachable(f"device {profile.name}: no answer over RPC within {profile.remote.timeout_s:.0f} s "
                                "(timeout_s in the profile's remote settings)")
    if "error" in result:
        raise result["error"]
    return result["session"]


def _connect(profile: DeviceProfile) -> Any:
    from tvm import rpc

    remote = profile.remote
    if remote is None:
        raise HarnessError(f"device {profile.name} is local; it has no RPC settings")
    timeout = remote.session_timeout_s
    try:
        if remote.direct is not None:
            host, port = parse_hostport(remote.direct, f"device {profile.name} rpc")
            try:
                _probe(host, port)
            except OSError as exc:
                raise _unreachable(profile, "RPC server", host, port, exc) from None
            return rpc.connect(host, port, session_timeout=timeout)
        host, port = check_tracker(profile)
        return rpc.connect_tracker(host, port).request(remote.key, priority=remote.priority,
                                                       session_timeout=timeout, max_retry=2)
    except HarnessError:
        raise
    except (OSError, RuntimeError) as exc:  # tvm.error.TVMError is a RuntimeError
        reason = first_line(exc)
        if "cannot find server that matches key" in reason:  # a server registered with a tracker, asked directly
            reason += ("; that RPC server takes sessions through its tracker: pass --tracker with the tracker's "
                       "HOST:PORT instead of --rpc")
        raise DeviceUnreachable(f"device {profile.name}: RPC failed: {reason}") from None


def board_info(session: Any) -> dict[str, Any]:
    """What the board says about itself ({} for a plain TVM RPC server, i.e. a real board)."""
    try:
        return json.loads(session.get_function("harness.board_info")())
    except (RuntimeError, AttributeError, ValueError):
        return {}


class RemoteExecutor:
    """A compiled library uploaded to a board and run there with the Relax VM."""

    def __init__(self, session: Any, lib_path: Path, threads: int | None) -> None:
        import tvm
        from tvm import relax

        self._tvm, self.session = tvm, session
        name = f"harness-{uuid.uuid4().hex[:8]}{lib_path.suffix}"
        session.upload(str(lib_path), target=name)
        if threads is not None:
            session.get_function("runtime.config_threadpool")(1, threads)
        self.device = session.cpu()
        self.vm = relax.VirtualMachine(session.load_module(name), self.device)
        self.info = board_info(session)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.vm["main"](self._tvm.runtime.tensor(np.ascontiguousarray(batch), self.device))
        return out.numpy()

    def time(self, batch: np.ndarray, spec: MeasureSpec) -> list[float]:
        self.vm.set_input("main", self._tvm.runtime.tensor(np.ascontiguousarray(batch), self.device))
        for _ in range(spec.warmup):
            self.vm.invoke_stateful("main")
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=spec.number, repeat=spec.repeats)
        return list(timer("main").results)


def remote_executor(profile: DeviceProfile, lib_path: Path) -> tuple[RemoteExecutor, bool]:
    """Upload `lib_path` to a board of `profile`; returns (executor, whether the board is emulated)."""
    executor = RemoteExecutor(connect(profile), lib_path, profile.thread_count)
    emulated = bool(executor.info.get("emulated", False))
    log.info("running on %s (%s)", executor.info.get("name", profile.name), "emulated" if emulated else "board")
    return executor, emulated
