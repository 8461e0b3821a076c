"""Is a timing trustworthy? The spread of a timed series and the load other processes put on the host while
it ran: a series measured on a busy host, or with a large spread, is marked noisy instead of recorded as
truth (PyTorch on 2 busy cores once timed 1254 ms for an 11 ms model)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")
MAX_SPREAD = 0.10  # a series whose robust spread (1.4826 · MAD / median) is above this is noisy
MAX_BUSY = 0.25  # other processes using more than this many cores during a series make it noisy
TICK = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01  # the unit of the kernel's CPU times
SLACK = 4 * TICK  # CPU time a window's counters may read from their rounding alone (each busy core's, and ours)


def spread(values: Sequence[float]) -> float:
    """Robust relative spread of a timed series: 1.4826 · median absolute deviation / median (the coefficient of
    variation for normal noise, not inflated by a few outliers); 0 for fewer than two values."""
    a = np.asarray(values, dtype=np.float64)
    median = float(np.median(a)) if a.size else 0.0
    return 1.4826 * float(np.median(np.abs(a - median))) / median if a.size > 1 and median > 0 else 0.0


def _busy_seconds() -> float:
    """CPU seconds the whole host spent busy since boot, over every core (user, system, interrupts, and time a
    hypervisor gave to other guests)."""
    import psutil

    t = psutil.cpu_times()
    return (t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
            + getattr(t, "steal", 0.0))


def _own_seconds(workers: bool = False) -> float:
    """CPU seconds this process (all its threads) and its waited-for children used; with `workers`, also its
    children still running."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + (_live_children_seconds() if workers else 0.0)


def _live_children_seconds() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:  # ended meanwhile: once waited for, it is in `os.times()`'s children
            continue
        total += c.user + c.system + c.children_user + c.children_system  # and what it waited for
    return total


@dataclass(slots=True)
class Load:
    """Filled in when a `watch()` block ends: cores other processes kept busy on average during it."""

    other_cores: float = 0.0
    seconds: float = 0.0


@contextmanager
def watch(clock: Callable[[], float] = time.monotonic, workers: bool = False) -> Iterator[Load]:
    """Measure the load other processes put on this host while the block runs (psutil's host-wide CPU times
    minus this process's own). `workers`: this process's child processes do the measured work (a tuning
    runner's and builder's pools), so their CPU time is its own, not another process's.

    The kernel counts CPU time in whole clock ticks (10 ms) per core and per process, so the rounding of a
    window of a few milliseconds alone could read as several busy cores: `SLACK` is discounted (a window that short
    cannot show a busy host; its series' spread can), and no more cores are reported than the host has.
    """
    load = Load()
    host, own, start = _busy_seconds(), _own_seconds(workers), clock()
    try:
        yield load
    finally:
        load.seconds = clock() - start
        if load.seconds > 0:
            cpus = os.cpu_count() or 1
            other = (_busy_seconds() - host) - (_own_seconds(workers) - own) - SLACK
            load.other_cores = min(float(cpus), max(0.0, other / load.seconds))


@dataclass(slots=True)
class NoiseLog:
    """The series of one measurement: each one's name, spread and the host's load during it."""

    cvs: dict[str, float] = field(default_factory=dict)  # coefficient of variation (std / mean), recorded
    spreads: dict[str, float] = field(default_factory=dict)  # robust spread, judged
    busy: float | None = None  # the most other cores busy during any series timed on this host

    def add(self, name: str, cv: float, spread: float, load: Load | None) -> None:
        """Record series `name`: its coefficient of variation, its robust spread and this host's load while it ran
        (None: timed on another machine, e.g. a board over RPC, whose speed this host's load does not change)."""
        self.cvs[name], self.spreads[name] = cv, spread
        if load is not None:
            self.busy = max(self.busy or 0.0, load.other_cores)

    def measure(self, name: str, timed: Callable[[], T], *, on_this_host: bool = True) -> T:
        """Run `timed` (a timed series whose result has `.cv` and `.spread`, e.g. `LatencyStats`) and record it as
        series `name`, with this host's load (`watch()`) unless it times another machine; returns its result."""
        with watch() if on_this_host else nullcontext() as load:
            result = timed()
        self.add(name, result.cv, result.spread, load)
        return result

    def reason(self) -> str | None:
        """Why the measurement is noisy (None when it is not): a busy host, or series with a large spread."""
        parts = []
        if self.busy is not None and self.busy > MAX_BUSY:
            parts.append(f"host busy: other processes used {self.busy:.2f} cores")
        spread = [f"{name} spread {value:.0%}" for name, value in self.spreads.items() if value > MAX_SPREAD]
        if spread:
            parts.append(", ".join(spread) + f" (1.48·MAD/median > {MAX_SPREAD:.0%})")
        return "; ".join(parts) or None


def cpu_model() -> str:
    """This host's CPU: model name, family and model numbers (from /proc/cpuinfo, else the platform's name), and
    its logical CPU count."""
    import platform

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    return f"{name}, {os.cpu_count()} CPUs"
