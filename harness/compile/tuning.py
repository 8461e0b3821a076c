"""MetaSchedule tuning of a set of modules into a database (see harness.compile.database): progress and a time
budget (the builder: harness.compile.builder; the runners: harness.compile.runners)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from harness import cache
from harness.compile.builder import WarmBuilder, builder_for
from harness.compile.database import compact, database_fingerprint, open_database
from harness.compile.intrinsics import design_space
from harness.compile.kernels import is_tuned, merge_tasks, module_tasks, tasks_coverage, workload_hash
from harness.compile.provenance import host_machine, timing_machine
from harness.compile.records import complete_lines, stamp_appended
from harness.compile.runners import local_runner, runner_for, target_threads
from harness.compile.search import RedrawingSearch
from harness.device import DeviceProfile
from harness.errors import HarnessError, last_line
from harness.progress import Progress
from harness.specs import TuningCoverage

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True, slots=True)
class TuneReport:
    """What one tuning session did."""

    tasks: int  # unique kernels over all modules
    tasks_tuned_before: int  # of them, already in the database (skipped)
    trials: int  # candidates measured in this session
    seconds: float
    stopped_by_deadline: bool
    coverage: TuningCoverage

    def summary(self) -> str:
        stop = ", stopped by the time budget" if self.stopped_by_deadline else ""
        return (f"{self.tasks} kernels ({self.tasks_tuned_before} tuned before), {self.trials} trials in "
                f"{self.seconds:.0f} s{stop}; tuned now: {self.coverage}")


class _Session:
    """One tuning session's progress and time budget, shared by the builder and the measure callback.

    MetaSchedule's gradient scheduler hands the measurements of its first pass over all tasks (often most
    of a session) to the measure callbacks only once that pass is over, so progress and the deadline are
    followed as candidates are built.
    """

    def __init__(self, bar: Progress, num_tasks: int, budget_end: float | None) -> None:
        self.bar, self.num_tasks, self.budget_end = bar, num_tasks, budget_end
        self.deadline: float | None = None  # of the chunk being tuned (its share of the budget)
        self.trials, self.skipped, self.tasks_started, self.best, self.stopped = 0, 0, 0, {}, False
        self.seen, self.ran, self.first_error = 0, 0, ""  # results reported, of them timed; the first failure

    def expired(self) -> bool:
        """The budget is spent (checked once a first batch is built, so that a session always tunes something)."""
        return self.deadline is not None and self.trials > 0 and time.monotonic() > self.deadline

    def built(self, candidates: int) -> None:
        """Count a batch of built candidates (one task's), and report."""
        self.trials += candidates
        self.tasks_started = min(self.tasks_started + 1, self.num_tasks)
        self.bar.update(candidates, self.status())

    def status(self) -> str:
        parts = [f"tasks {self.tasks_started}/{self.num_tasks}"]
        if self.best:
            parts.append(f"sum of best kernels {1e3 * sum(self.best.values()):.2f} ms")
        if self.budget_end is not None:  # the whole budget's, not the chunk's
            parts.append(f"{max(0.0, self.budget_end - time.monotonic()) / 60:.1f} min left")
        return ", ".join(parts)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Records each task's best latency; ends every task once the session's deadline has passed."""

    def __init__(self, session: _Session) -> None:
        super().__init__()
        self.session = session

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:  # noqa: ANN001
        session = self.session
        session.seen += len(runner_results)
        for built, result in zip(builder_results, runner_results, strict=True):
            if result.run_secs:
                secs = sum(float(s) for s in result.run_secs) / len(result.run_secs)
                session.best[task_id] = min(session.best.get(task_id, float("inf")), secs)
                session.ran += 1
            elif not session.first_error:
                session.first_error = last_line(built.error_msg or result.error_msg or "no time")
        session.bar.update(0, session.status())
        if session.expired() and not session.stopped:
            session.stopped = True
            for i, task in enumerate(task_scheduler.tasks_):
                if not task.is_terminated:
                    task_scheduler.terminate_task(i)


CHUNK = 24  # tasks tuned together; their records reach the database when their chunk ends
SECONDS_PER_TRIAL = 1.5  # a first guess (2 cores: ~1.2 s idle), replaced by the session's own rate


META_SCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"


def release_foreign_log_handlers() -> list[logging.Handler]:
    """Detach the handlers without a name from MetaSchedule's logger, and return them.

    Each session configures that logger anew with `logging.config.dictConfig`, listing the handlers it
    already has by name: an unnamed one (added by anything else in the process) makes it fail with
    "'NoneType' object has no attribute 'format'". The new configuration would replace them anyway.
    """
    logger = logging.getLogger(META_SCHEDULE_LOGGER)
    foreign = [h for h in logger.handlers if h.get_name() is None]
    for handler in foreign:
        logger.removeHandler(handler)
    return foreign


def _tune_chunk(tasks: list[ms.ExtractedTask], db: ms.database.Database, work_dir: Path, session: _Session,
                builder: WarmBuilder, runner: ms.runner.Runner, per_task: int, trials: int) -> None:
    """One MetaSchedule session over `tasks`. Its scheduler measures a first pass over all of them before
    any record is committed, which is why a long list is tuned in chunks (a kill loses one chunk at most)."""
    if trials <= 0:
        return
    strategy = RedrawingSearch(expired=session.expired)
    release_foreign_log_handlers()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, str(work_dir), space=design_space(tasks[0].target), strategy=strategy)
    session.stopped = False
    # MetaSchedule configures its loggers anew in each session: keep its per-trial tables out of the output
    logging.getLogger(META_SCHEDULE_LOGGER).setLevel(logging.WARNING)
    try:
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
            max_trials_per_task=per_task, num_trials_per_iter=min(16, per_task), database=db,
            builder=builder, runner=runner,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), _Progress(session)])
    except tvm.error.InternalError as exc:
        # Ending tasks from a measure callback can leave the scheduler holding a task it just saw end
        # (it checks `!task->is_terminated`); every measured record is in the database by then.
        if session.stopped and "is_terminated" in str(exc):
            return
        # A TVM error the search does not absorb (search.RedrawingSearch handles candidates that fail to
        # assemble) ends the whole MetaSchedule session and loses the records of this chunk not yet committed.
        # The kernels still without a record are tuned again one by one, so that only the one that fails is
        # left untuned.
        if len(tasks) == 1:
            log.warning("tuning kernel %s ended on a TVM error: %s", tasks[0].task_name,
                        last_line(exc))
            return
        target = tasks[0].target
        left = [t for t in tasks if not is_tuned(db, t, target)]
        log.warning("tuning %d kernel(s) (%s, ...) ended on a TVM error (%s); tuning the %d without a record "
                    "one by one", len(tasks), tasks[0].task_name, last_line(exc), len(left))
        for task in left:
            if session.expired():
                return
            _tune_chunk([task], db, work_dir, session, builder, runner, per_task, per_task)


def as_stored(task: ms.ExtractedTask, db: ms.database.Database) -> ms.ExtractedTask:
    """`task` on the database's own copy of its kernel, where it has one.

    A structurally equal kernel of another model may name its blocks differently (`lv168_red` for `lv95_red`).
    MetaSchedule files a new record under the stored copy, and a trace recorded on the other names does not
    replay there: such records made a whole database unreadable (seen after a refine of int8 baselines).
    """
    if not db.has_workload(task.dispatched[0]):
        return task
    stored = db.commit_workload(task.dispatched[0]).mod
    return ms.ExtractedTask(task.task_name, stored, task.target, [stored], task.weight)


def _todo(mods: Sequence[tvm.IRModule], target: tvm.target.Target, db: ms.database.Database,
          refine: Sequence[tvm.IRModule]) -> tuple[list[ms.ExtractedTask], list[ms.ExtractedTask], int]:
    """The unique kernels of `mods` (on the database's copies), those to tune (without a record, or of a module in
    `refine`), and how many had a record."""
    per_module = module_tasks(mods, target)
    tasks = [as_stored(t, db) for t in merge_tasks(per_module)]
    tuned = [is_tuned(db, t, target) for t in tasks]
    again = {workload_hash(t) for mod, mod_tasks in zip(mods, per_module, strict=True)
             if any(mod is r for r in refine) for t in mod_tasks}
    return tasks, [t for t, done in zip(tasks, tuned, strict=True) if not done or workload_hash(t) in again], sum(tuned)


def _chunk_deadline(session: _Session, began: float, deadline: float, chunk: int, left: int, per_task: int) -> float:
    """A chunk of `chunk` of the `left` tasks still to tune gets its share of the time left, but at least what its
    first pass takes (a pass cut short still searches every task it did not build), and never past the deadline."""
    now = time.monotonic()
    per_trial = (now - began) / session.trials if session.trials else SECONDS_PER_TRIAL
    first_pass = chunk * min(16, per_task) * per_trial
    return min(deadline, now + max((deadline - now) * chunk / left, first_pass))


def _tune_in_chunks(todo: list[ms.ExtractedTask], db: ms.database.Database, db_path: Path, session: _Session,
                    builder: WarmBuilder, runner: ms.runner.Runner, *, per_task: int, trials: int,
                    deadline: float | None) -> bool:
    """Tune `todo` chunk by chunk (`CHUNK`) until `trials` are measured or the deadline passes; whether the time
    budget stopped it."""
    began, stopped = time.monotonic(), False
    for first in range(0, len(todo), CHUNK):
        chunk = todo[first:first + CHUNK]
        if session.trials >= trials:
            break
        if deadline is not None:
            if time.monotonic() >= deadline:
                return True
            session.deadline = _chunk_deadline(session, began, deadline, len(chunk), len(todo) - first, per_task)
        _tune_chunk(chunk, db, db_path, session, builder, runner, per_task,
                    min(per_task * len(chunk), trials - session.trials))
        stopped = stopped or session.stopped or session.skipped > 0
    return stopped


def tune(mods: Sequence[tvm.IRModule], target: tvm.target.Target, db_path: Path, *, trials: int,
         minutes: float | None = None, profile: DeviceProfile | None = None, progress: bool = True,
         refine: Sequence[tvm.IRModule] = ()) -> TuneReport:
    """Tune the kernels of `mods` that the database lacks: up to `trials` measurements, or `minutes`.

    Tasks already tuned for this target are skipped, so re-tuning covered modules spends nothing; the tasks of
    the modules in `refine` (some of `mods`) are tuned again too (the search starts from the best schedules in
    the database).
    Each task gets an equal share of the trials; the gradient scheduler spends them where latency falls most.
    Tasks are tuned in chunks of `CHUNK`, each given its share of the time left, so that a time budget ends
    the session on time and the records of every finished chunk are kept.
    """
    start = time.monotonic()
    db = open_database(db_path)
    tasks, todo, tuned_before = _todo(mods, target, db, refine)
    refined = len(todo) - (len(tasks) - tuned_before)
    log.info("%d tuning tasks, %d already tuned for this target%s", len(tasks), tuned_before,
             f" ({refined} of them refined)" if refined else "")
    measured, stopped, appended_after, failure = 0, False, complete_lines(db_path), ""
    if todo and trials > 0:
        per_task = max(8, -(-trials // len(todo)))
        deadline = start + 60 * minutes if minutes else None
        runner = runner_for(profile) if profile is not None else local_runner(target_threads(target))
        bounded = deadline is None or trials * SECONDS_PER_TRIAL < 60 * minutes  # else the budget ends it
        with Progress(trials if bounded else None, "tune", "trials", enabled=progress) as bar:
            session = _Session(bar, len(todo), deadline)
            builder = builder_for(profile, session)
            try:
                stopped = _tune_in_chunks(todo, db, db_path, session, builder, runner, per_task=per_task,
                                          trials=trials, deadline=deadline)
            finally:
                builder.close()
            measured = session.trials
            if session.seen and not session.ran:  # (MetaSchedule records failed runs too, with no time)
                failure = f"none of the {session.seen} candidates ran; the first error: {session.first_error}"
    if database_fingerprint(db_path) is not None:
        with cache.locked(db_path):  # compiles reading the database wait for the rewrite
            stamp_appended(db_path, appended_after, timing_machine(profile) if profile is not None else host_machine())
            log.info("kept %d records (the best per kernel) in %s", compact(db_path), db_path)
    if failure:
        raise HarnessError(f"tuning for {profile.name if profile else target.kind.name}: {failure}"[:600])
    return TuneReport(tasks=len(tasks), tasks_tuned_before=tuned_before,
                      trials=measured, seconds=time.monotonic() - start,
                      stopped_by_deadline=stopped, coverage=tasks_coverage(tasks, target, db_path))
