"""Device profiles: `devices/NAME.yaml` → `DeviceProfile` (TVM target dict, threads, how to reach it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from harness.errors import HarnessError
from harness.limits import check, require
from harness.schema import INTERNAL, from_dict, load_yaml, shown

DEVICES_DIR = Path(__file__).resolve().parent.parent / "devices"


class ConvLayout(StrEnum):
    """Data layout the convolutions are compiled (and tuned) in."""

    NCHW = "NCHW"  # as ONNX imports them
    NHWC = "NHWC"  # channels innermost: faster CPU kernels (see harness.compile.layout)


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoteSpec:
    """How to reach a device over TVM RPC: through a tracker (with a key) or directly."""

    key: str
    tracker: str | None = None  # "host:port" of a TVM RPC tracker
    direct: str | None = None  # "host:port" of one RPC server, bypassing the tracker
    timeout_s: float = 60.0  # to get a session (waiting for a free board included)
    session_timeout_s: float = 3600.0  # the board ends a session older than this (an eval on a slow board is long)
    priority: int = 1

    def __post_init__(self) -> None:
        for name in ("tracker", "direct"):
            value = getattr(self, name)
            if value is not None:
                parse_hostport(value, name)
        check("timeout_s", "timeout_s", self.timeout_s)
        check("timeout_s", "session_timeout_s", self.session_timeout_s)


@dataclass(frozen=True, kw_only=True, slots=True)
class EmulatorSpec:
    """An emulated board: a foreign-architecture root run under qemu-user (see harness.emulator)."""

    arch: str  # Debian architecture name, e.g. "arm64"
    qemu: str = "qemu-aarch64-static"
    port: int = 9090  # RPC server port of the first emulated board
    tracker_port: int = 9190

    def __post_init__(self) -> None:
        check("port", "port", self.port)
        check("port", "tracker_port", self.tracker_port)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceProfile:
    """Where a model runs: a TVM target, a thread count, and (for boards) how to reach them."""

    name: str
    description: str = ""
    target: dict[str, Any]  # TVM target as a JSON dict; "mcpu: native" means this host's CPU
    host_target: dict[str, Any] | None = None  # for GPU targets, the CPU side
    threads: int | Literal["auto"] | None = None  # auto/None: all physical cores (harness.compile.target)
    layout: ConvLayout = ConvLayout.NCHW  # of the convolutions, float and integer
    gpu: int = 0  # CUDA targets: which GPU of this host (CLI --gpu)
    cross_compiler: str | None = None  # C compiler that links the shared library (e.g. aarch64-linux-gnu-gcc)
    remote: RemoteSpec | None = None  # None: run on this host
    emulator: EmulatorSpec | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    source: str = field(default="", compare=False, metadata={INTERNAL: True})  # as the user named it (CLI hints)

    def __post_init__(self) -> None:
        if "kind" not in self.target and "tag" not in self.target:
            raise ValueError("target needs a 'kind' (llvm, cuda, ...) or a 'tag'")
        _check_target(self.target, "target", KINDS)
        if self.host_target is not None:
            _check_target(self.host_target, "host_target", ("llvm",))
        if isinstance(self.threads, int):
            check("threads", "threads", self.threads)
        check("gpu", "gpu", self.gpu)

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    @property
    def gpu_index(self) -> int | None:
        """The CUDA GPU a local CUDA profile runs on (None for CPU targets and remote devices)."""
        return self.gpu if self.target.get("kind") == "cuda" and not self.is_remote else None

    @property
    def thread_count(self) -> int | None:
        """Threads to run with: the profile's number; `auto`/unset: this host's physical cores (a board's own
        default, None, when the device is remote)."""
        if isinstance(self.threads, int):
            return self.threads
        return None if self.is_remote else physical_cores()

    @property
    def kernel_threads(self) -> int:
        """Threads a CPU target's kernels are built (and tuning candidates timed) for: the target's
        `num-cores`, else `thread_count`, else this host's logical CPUs (a remote board with `threads: auto`)."""
        return int(self.target.get("num-cores") or 0) or self.thread_count or os.cpu_count() or 1

    def check_tools(self) -> None:
        """A one-line error where this host lacks the profile's cross compiler (before anything is trained or
        compiled for it)."""
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            compiler = Path(self.cross_compiler).name
            package = f" (on Debian/Ubuntu: apt-get install gcc-{compiler.removesuffix('-gcc')})" \
                if compiler.endswith("-gcc") else ""
            raise HarnessError(f"device {self.name}: cross compiler {self.cross_compiler!r} not found{package}")

    def with_gpu(self, gpu: int) -> DeviceProfile:
        """Override which GPU a CUDA profile runs on (CLI `--gpu`)."""
        require("gpu", "--gpu", gpu)
        return replace(self, gpu=gpu)

    def with_remote(self, *, tracker: str | None = None, direct: str | None = None) -> DeviceProfile:
        """Override how the device is reached (CLI `--tracker`/`--rpc`)."""
        if tracker is None and direct is None:
            return self
        key = self.remote.key if self.remote else self.name
        base = self.remote or RemoteSpec(key=key)
        return replace(self, remote=replace(base, tracker=tracker, direct=direct))


_TARGET_TYPES: dict[str, type] = {"kind": str, "tag": str, "mcpu": str, "mtriple": str, "arch": str, "mattr": list,
                                  "keys": list, "num-cores": int}


KINDS = ("llvm", "cuda")  # the TVM target kinds the harness builds, runs and times: CPUs and NVIDIA GPUs


def _check_target(target: dict[str, Any], where: str, kinds: Sequence[str]) -> None:
    """The target attributes the harness reads have the types TVM expects, and the kind is one of `kinds` (TVM
    checks the rest)."""
    for key, tp in _TARGET_TYPES.items():
        value = target.get(key)
        if value is None:
            continue
        if not isinstance(value, tp) or isinstance(value, bool) or (
                tp is list and not all(isinstance(v, str) for v in value)):
            expected = "a list of strings" if tp is list else f"a {tp.__name__}"
            raise ValueError(f"{where}.{key} must be {expected}, got {shown(value)}")
    if "num-cores" in target:
        check("threads", f"{where}.num-cores", target["num-cores"])
    if "kind" in target and target["kind"] not in kinds:
        raise ValueError(f"{where}.kind must be one of {', '.join(kinds)}, got {shown(target['kind'])}")


def physical_cores() -> int:
    """Physical cores of this host (hyper-threads not counted)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def parse_hostport(value: str, what: str = "address") -> tuple[str, int]:
    """'host:port' → (host, port), with a one-line error otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HarnessError(f"{what}: expected 'host:port', got {shown(value)}")
    require("port", f"{what}: port", int(port))
    return host, int(port)


def available_devices() -> list[str]:
    """Names of the shipped profiles (files in `devices/`)."""
    return sorted(p.stem for p in DEVICES_DIR.glob("*.yaml"))


def load_device(name_or_path: str) -> DeviceProfile:
    """Load a profile by name (`devices/NAME.yaml`) or path; TVM_TRACKER_HOST/PORT override the tracker."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = DEVICES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            allowed = ", ".join(available_devices()) or "none"
            raise HarnessError(f"unknown device {name_or_path!r}; available: {allowed}")
    profile = replace(from_dict(DeviceProfile, load_yaml(path), str(path)), source=str(name_or_path))
    env_host, env_port = os.environ.get("TVM_TRACKER_HOST"), os.environ.get("TVM_TRACKER_PORT")
    if profile.remote is not None and env_host:
        tracker = f"{env_host}:{env_port or 9190}"
        parse_hostport(tracker, "TVM_TRACKER_HOST:TVM_TRACKER_PORT")
        profile = profile.with_remote(tracker=tracker)
    return profile
