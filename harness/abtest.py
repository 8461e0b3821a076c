"""Same-run A/B timing: two builds of a model timed in one process, interleaved, and judged the way asv's
`continuous` and Google Benchmark's `compare.py` do (a median ratio beyond a threshold **and** a Mann-Whitney U
test rejecting "same distribution"), with the host's load watched so that noise is answered "inconclusive"."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from harness.noise import MAX_BUSY, spread, watch

SAMPLE_SECONDS = 0.1  # one timed sample runs the model this long at least (several calls for fast models)
MAX_SAMPLE_SPREAD = 0.25  # samples spread wider than this (1.48·MAD/median) say nothing: inconclusive


class Verdict(StrEnum):
    SAME = "same"
    REGRESSION = "regression"
    FASTER = "faster"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, kw_only=True, slots=True)
class Samples:
    """Interleaved timings of a base and a new build (seconds per call), and the host's load meanwhile."""

    base: list[float]
    new: list[float]
    other_cores: float  # cores other processes kept busy on average while they were taken


@dataclass(frozen=True, kw_only=True, slots=True)
class Judgement:
    base_ms: float
    new_ms: float
    ratio: float  # new median / base median
    p_value: float
    verdict: Verdict
    reason: str  # why the verdict (the rule that decided it)


def calls_per_sample(call: Callable[[], object], seconds: float = SAMPLE_SECONDS) -> int:
    """How many calls make one sample of at least `seconds` (timeit's rule; one call warms up)."""
    call()
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(np.ceil(seconds / once)))


def _sample(call: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number


def interleave(base: Callable[[], object], new: Callable[[], object], rounds: int, warmup: int = 2) -> Samples:
    """`rounds` samples of each, taken ABAB… with the order reversed on alternate rounds (BA in odd rounds), so
    that a drift of the host (frequency, caches, a neighbour) falls on both alike. Each side's samples are as many
    calls as make `SAMPLE_SECONDS` of it (per-call means, so the two need not run equally often)."""
    sides = ((base, calls_per_sample(base)), (new, calls_per_sample(new)))
    for _ in range(warmup):
        for call, number in sides:
            _sample(call, number)
    taken: tuple[list[float], list[float]] = ([], [])
    with watch() as load:
        for i in range(rounds):
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                call, number = sides[side]
                taken[side].append(_sample(call, number))
    return Samples(base=taken[0], new=taken[1], other_cores=load.other_cores)


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test ("a and b come from the same distribution")."""
    from scipy.stats import mannwhitneyu

    if len(set(a) | set(b)) == 1:  # all equal: no evidence of a difference
        return 1.0
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def noise_reason(samples: Samples) -> str | None:
    """Why these samples cannot carry a verdict (a busy host, or a spread too wide), or None."""
    if samples.other_cores > MAX_BUSY:
        return f"host busy: other processes used {samples.other_cores:.2f} cores"
    widest = max(spread(samples.base), spread(samples.new))
    if widest > MAX_SAMPLE_SPREAD:
        return f"samples spread {widest:.0%} (> {MAX_SAMPLE_SPREAD:.0%})"
    return None


def judge(samples: Samples, threshold: float = 0.05, alpha: float = 0.01) -> Judgement:
    """A regression (or a speed-up) only when the median ratio is beyond `threshold` and the U test's p-value is
    below `alpha`; noisy samples are inconclusive."""
    base_ms, new_ms = float(np.median(samples.base)) * 1e3, float(np.median(samples.new)) * 1e3
    ratio = new_ms / base_ms
    p = mann_whitney_p(samples.base, samples.new)
    if (noisy := noise_reason(samples)) is not None:
        verdict, reason = Verdict.INCONCLUSIVE, noisy
    elif abs(ratio - 1) <= threshold:
        verdict, reason = Verdict.SAME, f"ratio within ±{threshold:.0%}"
    elif p >= alpha:
        verdict, reason = Verdict.SAME, f"p = {p:.2g} ≥ {alpha}: not significant"
    else:
        verdict = Verdict.REGRESSION if ratio > 1 else Verdict.FASTER
        reason = f"ratio beyond ±{threshold:.0%} and p = {p:.2g} < {alpha}"
    return Judgement(base_ms=base_ms, new_ms=new_ms, ratio=ratio, p_value=p, verdict=verdict, reason=reason)
