"""Emulated boards: TVM RPC servers running aarch64 code on this machine under qemu-user.

Set-up (once, cached in `.emulator/<arch>/root`): `debootstrap --foreign` unpacks a minimal Debian root of
the board's architecture with Python; the packages it downloads are unpacked as well (no maintainer
scripts run, so no binfmt_misc or chroot is needed); the board's wheels of apache-tvm (the host's exact
versions) and numpy go into `/opt/tvm` of that root. A board is then
`qemu-aarch64-static -cpu <mcpu> -L ROOT ROOT/usr/bin/python3 board_server.py ...`, registered under the
profile's RPC key with a local TVM tracker (started here too). State: `.emulator/state.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from harness.cache import write_atomic
from harness.device import DeviceProfile, EmulatorSpec
from harness.errors import HarnessError

log = logging.getLogger(__name__)

EMULATOR_DIR = Path(os.environ.get("HARNESS_EMULATOR_DIR", Path(__file__).resolve().parent.parent / ".emulator"))
SUITE = "bookworm"  # Debian 12: Python 3.11, as the board wheels are built for
MIRROR = os.environ.get("HARNESS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PLATFORMS = {"arm64": "manylinux_2_28_aarch64"}
BOARD_SERVER = Path(__file__).resolve().parent / "board_server.py"
READY = ".harness-ready"


@dataclass(kw_only=True)
class Board:
    device: str
    key: str
    name: str
    port: int
    pid: int


@dataclass(kw_only=True)
class State:
    tracker_port: int | None = None
    tracker_pid: int | None = None
    boards: list[Board] = field(default_factory=list)


def _state_path() -> Path:
    return EMULATOR_DIR / "state.json"


def load_state() -> State:
    path = _state_path()
    if not path.is_file():
        return State()
    data = json.loads(path.read_text())
    return State(tracker_port=data["tracker_port"], tracker_pid=data["tracker_pid"],
                 boards=[Board(**b) for b in data["boards"]])


def _save_state(state: State) -> None:
    write_atomic(_state_path(), json.dumps(asdict(state), indent=2))


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def spec_of(profile: DeviceProfile) -> EmulatorSpec:
    if profile.emulator is None or profile.remote is None:
        raise HarnessError(f"device {profile.name} has no emulator (its profile needs `remote:` and `emulator:`)")
    return profile.emulator


def root_dir(spec: EmulatorSpec) -> Path:
    return EMULATOR_DIR / spec.arch / "root"


def _run(cmd: list[str], what: str, logfile: Path, **kwargs) -> None:  # noqa: ANN003
    with open(logfile, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if result.returncode != 0:
        tail = logfile.read_text().strip().splitlines()[-1:] or [""]
        raise HarnessError(f"emulator set-up: {what} failed (exit {result.returncode}): {tail[0]} (log: {logfile})")


def _board_python(spec: EmulatorSpec, root: Path, cpu: str | None) -> list[str]:
    return [spec.qemu, *(["-cpu", cpu] if cpu else []), "-L", str(root), str(root / "usr/bin/python3")]


def _board_env(root: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "opt/tvm"), "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(root / "root")}


def setup(spec: EmulatorSpec) -> Path:
    """The emulated root for `spec.arch`, created on first use (a few minutes; cached afterwards)."""
    root = root_dir(spec)
    if (root / READY).is_file():
        return root
    platform = PLATFORMS.get(spec.arch)
    if platform is None:
        raise HarnessError(f"emulator: architecture {spec.arch!r} is not supported; supported: {', '.join(PLATFORMS)}")
    for tool, package in ((spec.qemu, "qemu-user-static"), ("debootstrap", "debootstrap"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise HarnessError(f"emulator set-up needs {tool} (on Debian/Ubuntu: apt-get install {package})")
    if os.geteuid() != 0:
        raise HarnessError("emulator set-up runs debootstrap, which needs root (run once as root, e.g. with sudo)")
    logs = EMULATOR_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    logfile = logs / f"setup-{spec.arch}.log"
    partial = root.with_name("root.partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("emulator set-up: Debian %s %s root from %s (log: %s)", SUITE, spec.arch, MIRROR, logfile)
    _run(["debootstrap", "--foreign", f"--arch={spec.arch}", "--variant=minbase", "--include=python3,libstdc++6",
          SUITE, str(partial), MIRROR], "debootstrap", logfile)
    log.info("emulator set-up: unpacking packages")
    for deb in sorted((partial / "var/cache/apt/archives").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(partial)], f"unpacking {deb.name}", logfile)
    wheels = EMULATOR_DIR / "wheels" / spec.arch
    pins = [f"apache-tvm=={metadata.version('apache-tvm')}", f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
    log.info("emulator set-up: board wheels %s", ", ".join(pins))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    tags = ["--only-binary=:all:", "--platform", platform, "--python-version", "3.11", "--implementation", "cp"]
    _run([*pip, "download", "-q", *tags, "-d", str(wheels), *pins], "downloading board wheels", logfile)
    _run([*pip, "install", "-q", "--no-deps", "--no-index", *tags, "--target", str(partial / "opt/tvm"),
          *map(str, sorted(wheels.glob("*.whl")))], "installing board wheels", logfile)
    _run([*_board_python(spec, partial, None), "-c", "import tvm, numpy; print('board tvm', tvm.__version__)"],
         "importing TVM on the emulated board", logfile, env=_board_env(partial), timeout=300)
    (partial / READY).write_text(json.dumps({"suite": SUITE, "pins": pins}))
    shutil.rmtree(root, ignore_errors=True)
    partial.replace(root)
    return root


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait(check, timeout: float, what: str, logfile: Path) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise HarnessError(f"emulator: {what} did not come up within {timeout:.0f} s (log: {logfile})")


def _start_tracker(state: State, port: int) -> None:
    if _alive(state.tracker_pid):
        if state.tracker_port != port:
            raise HarnessError(f"emulator: a tracker already runs on port {state.tracker_port}, not {port}; "
                               "stop the emulated boards first (harness emulator stop)")
        return
    logfile = EMULATOR_DIR / "logs" / "tracker.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    if not _port_free(port):
        raise HarnessError(f"emulator: port {port} is taken by something else; stop it or change tracker_port")
    with open(logfile, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                 str(port), "--port-end", str(port + 1)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    state.tracker_pid, state.tracker_port = proc.pid, port
    _wait(lambda: not _port_free(port), 60, f"the RPC tracker on port {port}", logfile)


def start(profile: DeviceProfile, boards: int = 1, drop_after: float | None = None) -> list[Board]:
    """Start `boards` emulated boards of `profile` (and the tracker); returns the boards started.

    `drop_after`: fault injection, each board dies that many seconds into its first session.
    """
    from harness.remote import tracker_devices

    spec = spec_of(profile)
    root = setup(spec)
    state = load_state()
    state.boards = [b for b in state.boards if _alive(b.pid)]
    _start_tracker(state, spec.tracker_port)
    _save_state(state)
    key = profile.remote.key
    cpu = profile.target.get("mcpu")
    started = []
    used = {b.port for b in state.boards}
    port = spec.port
    for _ in range(boards):
        while port in used or not _port_free(port):
            port += 1
        name = f"{profile.name}-{port}"
        logfile = EMULATOR_DIR / "logs" / f"{name}.log"
        before = tracker_devices("127.0.0.1", spec.tracker_port, key)
        with open(logfile, "a") as out:
            proc = subprocess.Popen([*_board_python(spec, root, cpu), str(BOARD_SERVER), "--port", str(port),
                                     "--tracker", f"127.0.0.1:{spec.tracker_port}", "--key", key, "--name", name,
                                     *(["--drop-after", str(drop_after)] if drop_after is not None else [])],
                                    stdout=out, stderr=subprocess.STDOUT, env=_board_env(root),
                                    start_new_session=True)
        board = Board(device=profile.name, key=key, name=name, port=port, pid=proc.pid)
        state.boards.append(board)
        _save_state(state)
        log.info("starting emulated board %s (qemu %s, RPC port %d)", name, cpu or spec.arch, port)
        _wait(lambda b=before: tracker_devices("127.0.0.1", spec.tracker_port, key) > b, 180,
              f"board {name}", logfile)
        used.add(port)
        started.append(board)
    return started


def stop(device: str | None = None, names: set[str] | None = None) -> list[Board]:
    """Stop the emulated boards (of `device`, or those `names`, or all); the tracker stops with the last board."""
    state = load_state()
    stopping = [b for b in state.boards
                if (device is None or b.device == device) and (names is None or b.name in names)]
    for board in stopping:
        if _alive(board.pid):
            os.killpg(board.pid, signal.SIGTERM)
    state.boards = [b for b in state.boards if b not in stopping and _alive(b.pid)]
    if not state.boards and _alive(state.tracker_pid):
        os.killpg(state.tracker_pid, signal.SIGTERM)
        port, deadline = state.tracker_port, time.monotonic() + 15
        while port is not None and not _port_free(port) and time.monotonic() < deadline:
            time.sleep(0.2)  # gone before it returns: a start right after finds the port free
        state.tracker_pid = state.tracker_port = None
    _save_state(state)
    return stopping


def status(device: str | None = None) -> tuple[State, dict[str, int]]:
    """The recorded boards (of `device`, or all; dead ones dropped) and, per key, how many the tracker has
    registered."""
    from harness.remote import tracker_devices

    state = load_state()
    state.boards = [b for b in state.boards if _alive(b.pid) and device in (None, b.device)]
    counts = {}
    if _alive(state.tracker_pid):
        for key in {b.key for b in state.boards}:
            try:
                counts[key] = tracker_devices("127.0.0.1", state.tracker_port, key)
            except OSError:  # the tracker's process runs but does not listen (yet)
                counts[key] = 0
    return state, counts
