"""Tuning records as lines of a database's records file: what identifies one, and edits that rewrite only that
file (re-timing, stamping the machine that timed them, dropping what no longer replays), so that a tuning session
with the database open, which appends by the workload file's line numbers, keeps appending correctly."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from harness.cache import write_atomic
from harness.compile.intrinsics import register as register_intrinsics
from harness.compile.provenance import TAG, timed_on

RECORDS = "database_tuning_record.json"
WORKLOADS = "database_workload.json"
_TAGGED = '"tag":"' + TAG  # how a line written by MetaSchedule or `stamped_line` names its machine


def schedule_key(record: ms.database.TuningRecord) -> tuple[int, str]:
    """What makes two records the same schedule: the kernel (its structural hash) and the trace."""
    return tvm_ffi.structural_hash(record.workload.mod), str(record.trace)


def record_key(record: ms.database.TuningRecord) -> tuple[int, str, str]:
    """What makes two records the same: the schedule and the machine that timed it (harness.compile.provenance)."""
    return (*schedule_key(record), timed_on(record) or "")


def machine_named(line: str) -> str | None:
    """The machine a records-file line says timed it (harness.compile.provenance), without decoding it."""
    start = line.rfind(_TAGGED)
    return None if start < 0 else line[start + len(_TAGGED):line.index('"', start + len(_TAGGED))]


WRITTEN = "WRITTEN"  # in a rewrite's partial folder once both its files are whole


def partial_of(path: Path) -> Path:
    """Where `database.rewrite` writes the new files of the database at `path` before moving them into place."""
    return path.with_name(path.name + ".partial")


def finish_rewrite(path: Path) -> None:
    """Move a whole rewrite's files over the database at `path`: again, where a kill stopped it between them (a
    workload file without its records file names other kernels by the records' line numbers). Under the lock."""
    partial = partial_of(path)
    if not (partial / WRITTEN).is_file():
        return
    for name in (WORKLOADS, RECORDS):
        with contextlib.suppress(FileNotFoundError):  # moved already
            (partial / name).replace(path / name)
    shutil.rmtree(partial, ignore_errors=True)


def edit_lines(path: Path, edit: Callable[[str], str | None]) -> int:
    """Rewrite the records file of the database at `path` line by line: `edit(line)` gets each complete line and
    returns the line(s) to write in its place, or None to drop it. A last line without its newline (a record being
    appended) is kept as it is. Returns how many lines changed or were dropped; only then is the file rewritten
    (beside it, then moved into place). The workload file and its line numbers, by which a tuning session with the
    database open appends, stay."""
    finish_rewrite(path)
    lines, edited = [], 0
    for line in (path / RECORDS).read_text().splitlines(keepends=True) if (path / RECORDS).is_file() else []:
        if line.endswith("\n"):
            new = edit(line)
            if new != line:
                edited += 1
            if new is None:
                continue
            line = new
        lines.append(line)
    if edited:
        write_atomic(path / RECORDS, "".join(lines))
    return edited


def edit_records(path: Path, edit: Callable[[str, ms.database.TuningRecord | None], str | None]) -> int:
    """`edit_lines`, with each line's record decoded for `edit(line, record)` (None when the line does not decode:
    not JSON, no such workload, or a schedule that does not replay on its kernel; decoding replays the schedule,
    ~13 ms a record)."""
    register_intrinsics()
    workloads = (path / WORKLOADS).read_text().splitlines() if (path / WORKLOADS).is_file() else []
    decoded: dict[int, ms.database.Workload] = {}

    def with_record(line: str) -> str | None:
        try:
            index, fields = json.loads(line)
            if index not in decoded:
                decoded[index] = ms.database.Workload.from_json(json.loads(workloads[index]))
            record = ms.database.TuningRecord.from_json(fields, decoded[index])
        except (RuntimeError, IndexError, ValueError):  # no replay, no such workload, not JSON
            record = None
        return edit(line, record)

    return edit_lines(path, with_record)


def _line_schedule(line: str) -> tuple[int, str]:
    """A records-file line's kernel (its workload's line) and trace, undecoded: the same schedule in one file has
    the same key, whichever machine timed it."""
    index, fields = json.loads(line)
    return index, json.dumps(fields[0], separators=(",", ":"))


def stamped_line(line: str, machine: str, run_secs: Sequence[float] | None = None) -> str:
    """A records-file line (`[workload index, [trace, run_secs, target, args]]`) marked as timed on `machine`,
    with `run_secs` where given."""
    index, fields = json.loads(line)
    if run_secs is not None:
        fields[1] = [float(t) for t in run_secs]
    fields[2] = {**fields[2], "tag": TAG + machine}
    return json.dumps([index, fields], separators=(",", ":")) + "\n"


def retime(path: Path, run_secs: Callable[[ms.database.TuningRecord], Sequence[float] | None], machine: str) -> int:
    """Record the times `run_secs` has for the schedules of the database at `path` (None: none) as `machine`'s:
    a record timed on `machine` gets its new time; a schedule only other machines timed gets a copy stamped with
    `machine` beside their records, which keep theirs (harness.compile.provenance). Returns how many records
    changed or were added. Only the records file is rewritten (see `edit_records`)."""
    own = {_line_schedule(line) for line in (path / RECORDS).read_text().splitlines(keepends=True)
           if line.endswith("\n") and machine_named(line) == machine} if (path / RECORDS).is_file() else set()

    def with_time(line: str, record: ms.database.TuningRecord | None) -> str | None:
        secs = run_secs(record) if record is not None else None
        if secs is None or (timed_on(record) != machine and _line_schedule(line) in own):
            return line  # no new time, or this machine's copy of the schedule takes it
        new = stamped_line(line, machine, secs)
        if timed_on(record) == machine:
            return new
        own.add(_line_schedule(line))  # one copy per schedule, however many machines timed it before
        return line + new

    return edit_records(path, with_time)


def drop_unreplayable(path: Path) -> int:
    """Remove the records of the database at `path` whose schedule does not replay on their kernel; returns how
    many. Only the records file is rewritten (see `edit_records`); call it under the database's lock, or where no
    tuning session has it open."""
    return edit_records(path, lambda line, record: line if record is not None else None)


def complete_lines(path: Path) -> int:
    """How many complete records the records file of the database at `path` holds."""
    return (path / RECORDS).read_text().count("\n") if (path / RECORDS).is_file() else 0


def stamp_appended(path: Path, after: int, machine: str) -> int:
    """Mark the records past the first `after` of the database at `path` (those a tuning session appended) that
    name no machine as timed on `machine`; returns how many."""
    seen = 0

    def stamp(line: str) -> str:
        nonlocal seen
        seen += 1
        if seen <= after or machine_named(line) is not None:
            return line
        try:
            return stamped_line(line, machine)
        except ValueError:  # not a record (left for `drop_unreplayable`)
            return line

    return edit_lines(path, stamp)
