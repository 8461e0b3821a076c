"""The search strategy of harness tuning: MetaSchedule's evolutionary search, robust to batches of candidates TVM
cannot prepare for measurement."""

from __future__ import annotations

import logging
from collections.abc import Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate, PySearchStrategy

from harness.errors import last_line

log = logging.getLogger(__name__)

DRAWS = 4  # batches of candidates drawn for one iteration of a task before it is given up


@derived_object
class RedrawingSearch(PySearchStrategy):
    """MetaSchedule's evolutionary search, except when TVM cannot prepare a drawn batch of candidates.

    For some packed int8 kernels, a candidate's rewritten weight layout makes `ArgInfo::FromEntryFunc` (which
    removes the layout-rewrite blocks to find the arguments) fail its `ind.as<PrimVar>()` check. That error
    surfaces from the strategy's `generate_measure_candidates` and used to end the whole tuning session, so
    that the chunk's other kernels lost their records. Here the batch is drawn again (the search samples
    anew), up to `DRAWS` times; then the task ends with the records it has, and the session goes on.

    Once `expired()` (the session's time budget is spent) it draws nothing, so the task ends: MetaSchedule
    would otherwise go on searching each task of the session (seconds each) for candidates no one builds.
    """

    def __init__(self, inner: ms.search_strategy.SearchStrategy | None = None,
                 expired: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.inner = inner or ms.search_strategy.EvolutionarySearch(population_size=256, init_min_unmeasured=32,
                                                                    genetic_num_iters=3)
        self.expired, self.task = expired, ""

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.task = str(context.task_name)
        self.inner._initialize_with_tune_context(context)  # noqa: SLF001 (the protocol's own method)

    def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list, database=None,  # noqa: ANN001
                   cost_model=None) -> None:  # noqa: ANN001
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self) -> list[MeasureCandidate] | None:
        if self.expired is not None and self.expired():
            return None
        for draw in range(DRAWS):
            try:
                return self.inner.generate_measure_candidates()
            except tvm.error.InternalError as exc:
                log.debug("%s: a batch of candidates failed to assemble (%s); draw %d", self.task, last_line(exc),
                          draw + 1)
                error = exc
        log.warning("tuning kernel %s: %d batches of candidates TVM could not prepare (%s); it keeps the records "
                    "it has", self.task, DRAWS, last_line(error))
        return None

    def notify_runner_results(self, measure_candidates: list[MeasureCandidate], results: list) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> ms.search_strategy.SearchStrategy:
        return RedrawingSearch(self.inner.clone(), self.expired)
