"""Every value range in one place, shared by recipes, device profiles and command-line flags.

A spec checks its fields with `check` (a ValueError, which `schema.from_dict` turns into a one-line error
naming the file and key); a flag parses with `flag(kind)` (an argparse type, so a bad value is argparse's
one-line usage error, exit 2). NaN and infinities are refused for every number.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Range:
    """An interval of allowed numbers; `integer` ones refuse fractions."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def __str__(self) -> str:
        lo, hi = (f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in (self.lo, self.hi))
        return f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"

    def contains(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below


RANGES: dict[str, Range] = {
    "width": Range(0, 4, lo_open=True),  # α
    "resolution": Range(8, 2048, integer=True),  # pixels; larger inputs do not fit a board's memory
    "resolution_multiplier": Range(0, 1, lo_open=True),  # ρ
    "batch": Range(1, 1024, integer=True),
    "threads": Range(1, 256, integer=True),
    "classes": Range(2, 100_000, integer=True),
    "epochs": Range(0, 1000, integer=True),
    "lr": Range(0, 10, lo_open=True),
    "weight_decay": Range(0, 1),
    "repeats": Range(1, 100_000, integer=True),
    "warmup": Range(0, 10_000, integer=True),
    "ratio": Range(0, 1, hi_open=True),  # share of channels pruned
    "share": Range(0, 1),  # a fraction that may be 0 or 1 (distillation weight, accuracy drop)
    "fraction": Range(0, 1, lo_open=True, hi_open=True),  # a held-out share
    "tolerance": Range(0, 1000),
    "temperature": Range(0, 100, lo_open=True),
    "minutes": Range(0, 7 * 24 * 60, lo_open=True),
    "trials": Range(0, 10_000_000, integer=True),
    "samples": Range(1, 10_000_000, integer=True),
    "count": Range(1, 1024, integer=True),  # iterative steps, round_to, boards
    "port": Range(1, 65535, integer=True),
    "timeout_s": Range(0, 7 * 24 * 3600, lo_open=True),
    "seconds": Range(0, 24 * 3600, lo_open=True),
    "gpu": Range(0, 63, integer=True),
    "rows": Range(1, 1_000_000, integer=True),
    "threshold": Range(0, 10, lo_open=True),  # a relative change, e.g. 0.05 for 5 %
    "rounds": Range(4, 100_000, integer=True),  # interleaved A/B rounds: the U test needs a few samples a side
    "retries": Range(0, 100, integer=True),
    "seed": Range(0, 2**32 - 1, integer=True),  # what NumPy's and PyTorch's generators take
}


def check(kind: str, name: str, value: float | None) -> None:
    """Raise ValueError naming `name` when `value` is not a finite number in the range of `kind` (None passes)."""
    if value is None:
        return
    allowed, subject = RANGES[kind], f"{name} must" if name else "must"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{subject} be a number in {allowed}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{subject} be a finite number, got {value!r}")
    if allowed.integer and not float(value).is_integer():
        raise ValueError(f"{subject} be a whole number in {allowed}, got {value!r}")
    if not allowed.contains(value):
        raise ValueError(f"{subject} be in {allowed}, got {value!r}")


def require(kind: str, name: str, value: float | None) -> None:
    """`check` for values given outside a spec (a command-line override): a HarnessError, one line."""
    from harness.errors import HarnessError

    try:
        check(kind, name, value)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None


def flag(kind: str, many: bool = False) -> Callable[[str], float | int | list]:
    """An argparse type for a flag of range `kind` (`many`: a comma-separated list, e.g. --width 1,0.5)."""
    allowed = RANGES[kind]

    def one(text: str) -> float | int:
        try:
            value = int(text) if allowed.integer else float(text)
        except ValueError:
            what = "a whole number" if allowed.integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {what} in {allowed}, got {text!r}") from None
        try:
            check(kind, "", value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    def parse(text: str) -> float | int | list:
        if not many:
            return one(text)
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected comma-separated values in {allowed}, got {text!r}")
        return list(dict.fromkeys(one(v.strip()) for v in text.split(",")))  # each value once, in order

    parse.__name__ = kind  # argparse names the type in its messages
    return parse
