"""Timing a tuning database's records again: on this machine with the profile's threads, or on its board.

A record's time is what decides which schedule of a kernel is used (the fastest), and what a `--refine` has to
beat. Times taken on another CPU of the same ISA level, or on another thread count, rank the kept schedules
for that machine; re-measuring ranks them for this one (kept as its own copies beside the other machines'
records: harness.compile.provenance), and makes them comparable with new candidates.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput

from harness import cache, noise
from harness.compile.builder import builder_for
from harness.compile.database import open_database
from harness.compile.provenance import timing_machine
from harness.compile.records import retime, schedule_key
from harness.compile.runners import runner_for
from harness.device import DeviceProfile
from harness.errors import HarnessError, last_line
from harness.progress import Progress

log = logging.getLogger(__name__)

BATCH = 16  # records built, or timed, together
ROUNDS = 3  # timings of each record; it keeps the fastest


@dataclass(frozen=True, kw_only=True, slots=True)
class RemeasureReport:
    """What re-timing a database did."""

    records: int  # records timed again
    failed: int  # of them, records that did not build or run (kept with their old time)
    kernels: int
    reranked: int  # kernels whose fastest record is another one now
    seconds: float
    other_cores: float  # cores other processes kept busy on average meanwhile (see harness.noise)

    def summary(self) -> str:
        if not self.records:
            return "no records to re-time (nothing tuned for this target yet)"
        failed = f" ({self.failed} failed to build or run: kept with their old times)" if self.failed else ""
        busy = (f"; the host was busy (other processes used {self.other_cores:.1f} cores on average): the new times "
                "are unreliable, re-measure on an idle machine" if self.other_cores > noise.MAX_BUSY else "")
        return (f"re-timed {self.records} records of {self.kernels} kernels in {self.seconds:.0f} s{failed}; "
                f"{self.reranked} kernel(s) now use another of their records{busy}")


def _build_input(record: ms.database.TuningRecord, target: tvm.target.Target) -> BuilderInput:
    sch = Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return BuilderInput(sch.mod, target)


def time_records(records: list[ms.database.TuningRecord], target: tvm.target.Target, profile: DeviceProfile,
                 progress: bool) -> tuple[dict[tuple[int, str], list[float]], float]:
    """The new time of each record of `records` that built and ran, by `schedule_key` (its fastest of `ROUNDS`),
    and the cores other processes kept busy meanwhile (see `harness.noise`).

    Every record is built first, then timed once per round, the rounds one after another, so that a slow
    spell of the host (2-thread timings on a 2-vCPU guest jump by 2-6x now and then) costs a record one round,
    not its rank, and a drift of the host's speed slows every record alike. When no record of the first batch
    runs (a board that cannot be reached, a broken runtime) it stops with the reason.
    """
    device = tvm.runtime.Device._DEVICE_TYPE_TO_NAME[target.get_target_device_type()]  # "cpu", "cuda"
    runner = runner_for(profile)
    builder = builder_for(profile)
    built, samples, errors = [], {}, []
    with Progress(len(records) * (1 + ROUNDS), "re-measure", "builds and timings", enabled=progress) as bar:
        try:
            try:
                for first in range(0, len(records), BATCH):
                    batch, failed = records[first:first + BATCH], 0
                    for record, result in zip(batch, builder.build([_build_input(r, target) for r in batch]),
                                              strict=True):
                        if result.error_msg is None:
                            built.append((record, result.artifact_path))
                        else:
                            errors.append(f"build: {last_line(result.error_msg)}")
                            failed += 1
                    bar.update(len(batch) + failed * ROUNDS)  # a record that did not build is not timed
            finally:
                builder.close()
            if not built:
                raise HarnessError(f"re-measure for {profile.name}: no record built; the first error: {errors[0]}")
            with noise.watch(workers=True) as load:
                for _ in range(ROUNDS):
                    for first in range(0, len(built), BATCH):
                        batch = built[first:first + BATCH]
                        futures = runner.run([ms.runner.RunnerInput(path, device, r.args_info) for r, path in batch])
                        for (record, _), future in zip(batch, futures, strict=True):
                            run = future.result()
                            if run.error_msg is None and run.run_secs:
                                samples.setdefault(schedule_key(record), []).append(min(map(float, run.run_secs)))
                            else:
                                errors.append(f"run: {last_line(run.error_msg or 'no time')}")
                        if not samples:
                            raise HarnessError(f"re-measure on {profile.name}: no record ran; the first error: "
                                               f"{errors[0]}")
                        bar.update(len(batch))
        finally:
            for _, path in built:
                shutil.rmtree(Path(path).parent, ignore_errors=True)
    if errors:
        log.warning("re-measure: %d build or run error(s), the first: %s", len(errors), errors[0])
    return {key: [min(secs)] for key, secs in samples.items()}, 0.0 if profile.is_remote else load.other_cores


def _fastest(records: list[ms.database.TuningRecord], times: dict[tuple[int, str], list[float]]) -> dict[int, str]:
    """The fastest record's trace of each kernel, by the given times (the records' own where absent)."""
    best: dict[int, tuple[float, str]] = {}
    for record in records:
        workload, trace = schedule_key(record)
        secs = times.get((workload, trace), [float(s) for s in record.run_secs or [float("inf")]])
        mean = sum(secs) / len(secs)
        if workload not in best or mean < best[workload][0]:
            best[workload] = (mean, trace)
    return {w: trace for w, (_, trace) in best.items()}


def remeasure(db_path: Path, target: tvm.target.Target, profile: DeviceProfile, *,
              kernels: Collection[tvm.IRModule] | None = None, progress: bool = True) -> RemeasureReport:
    """Time every schedule of the database at `db_path` again with `profile`'s runner (local, on its threads, or
    on its board) and store the new times as that machine's (`provenance.timing_machine`; `records.retime`); a
    schedule that fails to build or run keeps its old times. `kernels`: only the records of these kernels.

    The records file is rewritten at the end, under the database's lock; records another session committed
    meanwhile are kept as they are.
    """
    start = time.monotonic()
    keep = None if kernels is None else {tvm_ffi.structural_hash(k) for k in kernels}
    schedules = {schedule_key(r): r for r in open_database(db_path).get_all_tuning_records()
                 if keep is None or schedule_key(r)[0] in keep}
    records = list(schedules.values())  # one per schedule, whichever machines timed it
    if not records:
        return RemeasureReport(records=0, failed=0, kernels=0, reranked=0, seconds=time.monotonic() - start,
                               other_cores=0.0)
    times, other_cores = time_records(records, target, profile, progress)
    with cache.locked(db_path):  # with the records another session committed meanwhile, unchanged
        retime(db_path, lambda r: times.get(schedule_key(r)), timing_machine(profile))
    before, after = _fastest(records, {}), _fastest(records, times)
    return RemeasureReport(records=len(records), failed=sum(schedule_key(r) not in times for r in records),
                           kernels=len(before), reranked=sum(after[w] != t for w, t in before.items()),
                           seconds=time.monotonic() - start, other_cores=other_cores)
