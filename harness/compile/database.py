"""Tuning databases on disk: one per portable target, in the workspace and shipped with the package.

A database lives in `<results>/tuning/<target key>/` (MetaSchedule's JSON workload and tuning-record files),
the key naming what shapes a schedule: the ISA level or CPU model, extensions and thread count
(harness.compile.target.target_key). Records are found by workload (the structural hash of each fused TIR
kernel), so α/ρ/pruning variants and different recipes share the kernels they have in common, and a
database tuned on one CPU of a level serves every CPU of that level. The package ships compact databases
(`harness/tuning_db/<key>/`) that seed the workspace's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from harness import cache
from harness.compile.intrinsics import register as register_intrinsics
from harness.compile.provenance import preferred, timed_on
from harness.compile.records import (
    RECORDS,
    WORKLOADS,
    WRITTEN,
    drop_unreplayable,
    finish_rewrite,
    machine_named,
    partial_of,
    record_key,
)
from harness.errors import HarnessError, last_line

log = logging.getLogger(__name__)


SHIPPED_DIR = Path(__file__).resolve().parent.parent / "tuning_db"  # harness/tuning_db/<target key>/
PACKED = ".xz"  # shipped files: MetaSchedule's JSON files, xz-compressed (base64 JSON packs ~100x)
SEEDED = "shipped.sha256"  # in a workspace database: digest of the shipped files last merged into it


def database_dir(root: Path, key: str) -> Path:
    """Where the workspace database for the target with portable key `key` lives."""
    return root / key


def shipped_dir(key: str, shipped_root: Path = SHIPPED_DIR) -> Path | None:
    """The database shipped with the harness for `key`, if there is one."""
    path = shipped_root / key
    return path if (path / (RECORDS + PACKED)).is_file() and (path / (WORKLOADS + PACKED)).is_file() else None


def _copy_record(record: ms.database.TuningRecord, into: ms.database.Database) -> None:
    """Commit `record` (and its workload) to another database."""
    into.commit_tuning_record(ms.database.TuningRecord(record.trace, into.commit_workload(record.workload.mod),
                                                       record.run_secs, record.target, record.args_info))


def rewrite(path: Path, records: Iterable[ms.database.TuningRecord]) -> int:
    """Replace the database at `path` by `records`, written beside it, then moved into place; returns the number
    of records. Call it under the database's lock: the workload file is written anew, and a tuning session with
    the database open appends records by the line numbers of the old one."""
    finish_rewrite(path)
    partial = partial_of(path)
    shutil.rmtree(partial, ignore_errors=True)
    out, count = open_database(partial), 0
    for record in records:
        _copy_record(record, out)
        count += 1
    (partial / WRITTEN).touch()
    finish_rewrite(path)
    return count


def _shipped_digest(shipped: Path) -> str:
    digest = hashlib.sha256()
    for name in (WORKLOADS, RECORDS):
        digest.update((shipped / (name + PACKED)).read_bytes())
    return digest.hexdigest()[:16]


def _unpack(shipped: Path, into: Path) -> None:
    """Decompress the shipped files into `into` (each written whole, then renamed into place)."""
    import lzma

    into.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS, RECORDS):
        cache.write_atomic(into / name, lzma.decompress((shipped / (name + PACKED)).read_bytes()))


def seed(db_path: Path, shipped: Path | None) -> None:
    """Merge the shipped database into the workspace one at `db_path` when it is new or changed since last time
    (first finishing a rewrite of it that was killed half-way).

    An empty workspace database simply becomes a copy; otherwise the shipped records join the ones tuned here,
    a schedule in both keeping the shipped time, and the result is compacted (the fastest records per kernel).
    """
    if (partial_of(db_path) / WRITTEN).is_file():
        with cache.locked(db_path):
            finish_rewrite(db_path)
    if shipped is None:
        return
    digest = _shipped_digest(shipped)
    marker = db_path / SEEDED
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    with cache.locked(db_path):  # concurrent runs seed once; readers wait for whole files
        if not (marker.is_file() and marker.read_text().strip() == digest):
            _merge(db_path, shipped)
            marker.write_text(digest + "\n")


def _merge(db_path: Path, shipped: Path) -> None:
    if database_fingerprint(db_path) is None:
        log.info("tuning database %s: starting from the shipped one (%s)", db_path, shipped)
        _unpack(shipped, db_path)
    else:
        import tempfile

        log.info("tuning database %s: merging the shipped one (%s)", db_path, shipped)
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(shipped, Path(tmp))
            new = open_database(Path(tmp)).get_all_tuning_records()
            keys = {record_key(r) for r in new}  # a schedule in both keeps the shipped (newer) time
            own = [r for r in open_database(db_path).get_all_tuning_records() if record_key(r) not in keys]
            rewrite(db_path, [*new, *own])
        compact(db_path)


def pack(db_path: Path, shipped: Path, workloads: Sequence[tvm.IRModule] | None = None) -> int:
    """Write the workspace database at `db_path` as the shipped one at `shipped` (compacted, xz); returns bytes.

    `workloads`: keep only the records of these kernels (those of the shipped recipes), dropping kernels no
    shipped recipe compiles any more.
    """
    import lzma
    import tempfile

    with cache.locked(db_path):
        compact(db_path)
    keep = None if workloads is None else {tvm_ffi.structural_hash(m) for m in workloads}
    with tempfile.TemporaryDirectory() as tmp:
        src, slim = open_database(db_path), open_database(Path(tmp))
        records = [r for r in src.get_all_tuning_records()
                   if keep is None or tvm_ffi.structural_hash(r.workload.mod) in keep]
        if not records:
            raise HarnessError(f"{db_path} has no records of the kernels to ship: nothing to ship (tune them "
                               "first)")
        for record in records:
            _copy_record(record, slim)
        shipped.mkdir(parents=True, exist_ok=True)
        size = 0
        for name in (WORKLOADS, RECORDS):
            data = lzma.compress((Path(tmp) / name).read_bytes(), preset=9 | lzma.PRESET_EXTREME)
            cache.write_atomic(shipped / (name + PACKED), data)
            size += len(data)
    (db_path / SEEDED).write_text(_shipped_digest(shipped) + "\n")
    return size


def databases_for_other_threads(key: str, roots: Sequence[Path]) -> list[str]:
    """Keys of databases (under any of `roots`) for the same target as `key` but another thread count."""
    stem = key.rpartition("-t")[0]
    if not stem:
        return []
    found = {p.name for root in roots if root.is_dir() for p in root.iterdir()
             if p.name != key and p.name.rpartition("-t")[0] == stem and p.name.rpartition("-t")[2].isdigit()}
    return sorted(found)


def database_fingerprint(path: Path) -> str | None:
    """A hash of the tuning records at `path` (None when there are none), for artifact cache keys."""
    records = path / RECORDS
    if not records.is_file() or records.stat().st_size == 0:
        return None
    return hashlib.sha256(records.read_bytes()).hexdigest()[:16]


def open_database(path: Path) -> ms.database.JSONDatabase:
    """The JSON database at `path` (created empty if absent). Records whose schedule does not replay on their
    kernel make MetaSchedule refuse the whole database: they are dropped (with a warning) and it is opened again."""
    register_intrinsics()  # records of tensorized kernels name their intrinsic
    path.mkdir(parents=True, exist_ok=True)

    def load() -> ms.database.JSONDatabase:
        return ms.database.JSONDatabase(path_workload=str(path / WORKLOADS), path_tuning_record=str(path / RECORDS),
                                        allow_missing=True)

    try:
        return load()
    except RuntimeError as exc:
        dropped = drop_unreplayable(path)
        if not dropped:
            raise HarnessError(f"tuning database {path} cannot be read ({last_line(exc)}); move it aside and run "
                               "again (the harness seeds a new one from the shipped database)") from None
        log.warning("tuning database %s: dropped %d record(s), damaged or whose schedule does not replay on their "
                    "kernel (tuned on another model's block names by a harness before 2026-12-01)", path, dropped)
        return load()


def records_for(db_path: Path, mods: Sequence[tvm.IRModule], machine: str | None = None) -> ms.database.Database:
    """An in-memory database of the records at `db_path` whose workloads are among `mods`; with `machine`, of
    each kernel only those timed on it, else those of the machine that timed most of the database
    (harness.compile.provenance.preferred).

    Decoding a workload (a whole TIR module) is what makes opening a large database slow (~20 ms each); the
    workload file names each one by its structural hash first, so only the wanted ones are decoded.
    """

    register_intrinsics()
    wanted = {str(tvm_ffi.structural_hash(m)) for m in mods}
    db, by_line = ms.database.MemoryDatabase(), {}
    found: dict[int, list[ms.database.TuningRecord]] = {}
    machines: Counter[str | None] = Counter()
    if database_fingerprint(db_path) is None:
        return db
    with cache.locked(db_path):
        finish_rewrite(db_path)
        with open(db_path / WORKLOADS) as f:
            for i, line in enumerate(f):
                if line[2:line.find('"', 2)] in wanted and line.endswith("\n"):  # a tuning session may be writing
                    by_line[i] = db.commit_workload(ms.database.Workload.from_json(json.loads(line)).mod)
        with open(db_path / RECORDS) as f:
            for line in f:
                machines[machine_named(line)] += 1
                head = line[1:line.find(",")] if line.endswith("\n") else ""  # a session may be appending
                index = int(head) if head.isdigit() else -1
                if index not in by_line:
                    continue
                try:
                    record = ms.database.TuningRecord.from_json(json.loads(line)[1], by_line[index])
                except (RuntimeError, ValueError, IndexError, TypeError):  # damaged, or a schedule that does not replay
                    log.warning("tuning database %s: a damaged record, or one whose schedule does not replay on its "
                                "kernel, was skipped", db_path)
                    continue
                found.setdefault(index, []).append(record)
    primary = machines.most_common(1)[0][0] if machines else None
    for records in found.values():
        for record in preferred(records, machine, primary):
            db.commit_tuning_record(record)
    return db


def compact(path: Path, keep: int = 2) -> int:
    """Keep only the `keep` fastest records of each workload timed on each machine (MetaSchedule logs every
    measured candidate; harness.compile.provenance).

    Makes the database small enough to commit and quick to load; returns the number of records kept. Under the
    database's lock.
    """
    finish_rewrite(path)
    db = open_database(path)
    records = db.get_all_tuning_records()
    workloads = {tvm_ffi.structural_hash(r.workload.mod): r.workload for r in records}
    kept: list[ms.database.TuningRecord] = []
    for workload in workloads.values():
        counts: Counter[str | None] = Counter()
        for record in db.get_top_k(workload, len(records)):  # the valid ones (a failed run has none), fastest first
            machine = timed_on(record)
            counts[machine] += 1
            if counts[machine] <= keep:
                kept.append(record)
    if len(kept) == len(records):
        return len(records)  # already compact: leave the files (and their fingerprint) alone
    return rewrite(path, kept)
