"""MetaSchedule tuning with persistent databases, one per portable target.

A database lives in `<results>/tuning/<target key>/` (MetaSchedule's JSON workload and tuning-record files),
the key naming what shapes a schedule: the ISA level or CPU model, extensions and thread count
(harness.compile.target.target_key). Records are found by workload (the structural hash of each fused TIR
kernel), so α/ρ/pruning variants and different recipes share the kernels they have in common, and a
database tuned on one CPU of a level serves every CPU of that level.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tqdm import tqdm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from harness.device import DeviceProfile, parse_hostport
from harness.errors import HarnessError

log = logging.getLogger(__name__)

RECORDS = "database_tuning_record.json"
WORKLOADS = "database_workload.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class TuningCoverage:
    """How many of a module's tuning tasks (unique fused kernels) have a tuned schedule in the database."""

    tuned: int
    total: int

    def __str__(self) -> str:
        return f"{self.tuned}/{self.total}"


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
        tmp = into / (name + ".tmp")
        tmp.write_bytes(lzma.decompress((shipped / (name + PACKED)).read_bytes()))
        tmp.replace(into / name)


def seed(db_path: Path, shipped: Path | None) -> None:
    """Merge the shipped database into the workspace one at `db_path` when it is new or changed since last time.

    An empty workspace database simply becomes a copy; otherwise every shipped record is added to the ones
    tuned here (MetaSchedule keeps the fastest), and the result compacted.
    """
    if shipped is None:
        return
    digest = _shipped_digest(shipped)
    marker = db_path / SEEDED
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    if database_fingerprint(db_path) is None:
        log.info("tuning database %s: starting from the shipped one (%s)", db_path, shipped)
        _unpack(shipped, db_path)
    else:
        import tempfile

        log.info("tuning database %s: merging the shipped one (%s)", db_path, shipped)
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(shipped, Path(tmp))
            src, dst = open_database(Path(tmp)), open_database(db_path)
            for record in src.get_all_tuning_records():
                _copy_record(record, dst)
        compact(db_path)
    marker.write_text(digest + "\n")


def pack(db_path: Path, shipped: Path, workloads: Sequence[tvm.IRModule] | None = None) -> int:
    """Write the workspace database at `db_path` as the shipped one at `shipped` (compacted, xz); returns bytes.

    `workloads`: keep only the records of these kernels (those of the shipped recipes), dropping kernels no
    shipped recipe compiles any more.
    """
    import lzma
    import tempfile

    compact(db_path)
    keep = None if workloads is None else {tvm_ffi.structural_hash(m) for m in workloads}
    with tempfile.TemporaryDirectory() as tmp:
        src, slim = open_database(db_path), open_database(Path(tmp))
        for record in src.get_all_tuning_records():
            if keep is None or tvm_ffi.structural_hash(record.workload.mod) in keep:
                _copy_record(record, slim)
        shipped.mkdir(parents=True, exist_ok=True)
        size = 0
        for name in (WORKLOADS, RECORDS):
            data = lzma.compress((Path(tmp) / name).read_bytes(), preset=9 | lzma.PRESET_EXTREME)
            tmp_out = shipped / (name + PACKED + ".tmp")
            tmp_out.write_bytes(data)
            tmp_out.replace(shipped / (name + PACKED))
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
    """The JSON database at `path` (created empty if absent)."""
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(path / WORKLOADS), path_tuning_record=str(path / RECORDS),
                                    allow_missing=True)


def prepacks_weights(target: tvm.target.Target) -> bool:
    """Whether tuned kernels for `target` may choose their own weight layout (CPU targets).

    The kernels' weight buffers are marked layout-free, so MetaSchedule's RewriteLayout postprocessor lets
    a schedule read its weights in the order its loops visit them; the build then repacks the (constant)
    weights into that layout once, at compile time.
    """
    return target.kind.name == "llvm"


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Lower to fused TIR kernels exactly as the database-aware build does, so workload keys match."""
    from tvm import relax

    seq = [*relax.pipeline.library_dispatch_passes(target), relax.transform.LegalizeOps(),
           relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(), relax.transform.FuseOps(),
           relax.transform.FuseTIR()]
    if prepacks_weights(target):
        seq.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(seq)(mod)


def extract_tasks(mods: Sequence[tvm.IRModule], target: tvm.target.Target) -> list[ms.ExtractedTask]:
    """The unique fused TIR kernels of `mods`, identical workloads merged (their weights summed)."""
    merged: dict[int, tuple[ms.ExtractedTask, int]] = {}
    for mod in mods:
        for task in ms.relax_integration.extract_tasks(fuse(mod, target), target):
            key = tvm_ffi.structural_hash(task.dispatched[0])
            first, weight = merged.get(key, (task, 0))
            merged[key] = (first, weight + int(task.weight))
    return [task if task.weight == weight else
            ms.ExtractedTask(task.task_name, task.mod, task.target, task.dispatched, weight)
            for task, weight in merged.values()]


def _is_tuned(db: ms.database.Database, task: ms.ExtractedTask, target: tvm.target.Target) -> bool:
    mod = task.dispatched[0]
    return db.has_workload(mod) and db.query_tuning_record(mod, target, task.task_name) is not None


def records_for(db_path: Path, mods: Sequence[tvm.IRModule]) -> ms.database.Database:
    """An in-memory database of the records at `db_path` whose workloads are among `mods`.

    Decoding a workload (a whole TIR module) is what makes opening a large database slow (~20 ms each); the
    workload file names each one by its structural hash first, so only the wanted ones are decoded.
    """
    import json

    wanted = {str(tvm_ffi.structural_hash(m)) for m in mods}
    db, by_line = ms.database.MemoryDatabase(), {}
    if database_fingerprint(db_path) is None:
        return db
    with open(db_path / WORKLOADS) as f:
        for i, line in enumerate(f):
            if line[2:line.find('"', 2)] in wanted:
                by_line[i] = db.commit_workload(ms.database.Workload.from_json(json.loads(line)).mod)
    with open(db_path / RECORDS) as f:
        for line in f:
            workload = by_line.get(int(line[1:line.index(",")]))
            if workload is not None:
                db.commit_tuning_record(ms.database.TuningRecord.from_json(json.loads(line)[1], workload))
    return db


def coverage(mods: Sequence[tvm.IRModule], target: tvm.target.Target, database: Path | ms.database.Database
             ) -> TuningCoverage:
    """How many of the tasks of `mods` the database (at a path, or loaded) has schedules for."""
    return tasks_coverage(extract_tasks(mods, target), target, database)


def tasks_coverage(tasks: Sequence[ms.ExtractedTask], target: tvm.target.Target,
                   database: Path | ms.database.Database) -> TuningCoverage:
    """How many of the extracted `tasks` the database has schedules for."""
    db = records_for(database, [t.dispatched[0] for t in tasks]) if isinstance(database, Path) else database
    return TuningCoverage(tuned=sum(_is_tuned(db, t, target) for t in tasks), total=len(tasks))


def _warm_worker() -> None:
    """Pay TVM's one-off costs (tensor-intrinsic registration parses ~250 TVMScript functions) once per worker."""
    import tvm.s_tir.tensor_intrin  # noqa: F401


class _Session:
    """One tuning session's progress and time budget, shared by the builder and the measure callback.

    MetaSchedule's gradient scheduler hands the measurements of its first pass over all tasks (often most
    of a session) to the measure callbacks only once that pass is over, so progress and the deadline are
    followed as candidates are built.
    """

    def __init__(self, bar: tqdm, num_tasks: int, deadline: float | None) -> None:
        self.bar, self.num_tasks, self.deadline = bar, num_tasks, deadline
        self.trials, self.skipped, self.tasks_started, self.best, self.stopped = 0, 0, 0, {}, False
        self.logged = time.monotonic()

    def expired(self) -> bool:
        """The budget is spent (checked once a first batch is built, so that a session always tunes something)."""
        return self.deadline is not None and self.trials > 0 and time.monotonic() > self.deadline

    def built(self, candidates: int) -> None:
        """Count a batch of built candidates (one task's), and report."""
        self.trials += candidates
        self.tasks_started = min(self.tasks_started + 1, self.num_tasks)
        self.bar.update(candidates)
        self.bar.set_postfix_str(self.status())
        if self.bar.disable and time.monotonic() - self.logged > 60:  # no bar (not a terminal): a line a minute
            self.logged = time.monotonic()
            log.info("tuning: %d trials, %s", self.trials, self.status())

    def status(self) -> str:
        parts = [f"tasks {self.tasks_started}/{self.num_tasks}"]
        if self.best:
            parts.append(f"sum of best kernels {1e3 * sum(self.best.values()):.2f} ms")
        if self.deadline is not None:
            parts.append(f"{max(0.0, self.deadline - time.monotonic()) / 60:.1f} min left")
        return ", ".join(parts)


@derived_object
class WarmBuilder(PyBuilder):
    """MetaSchedule's LocalBuilder, but with a worker pool kept across batches.

    LocalBuilder starts fresh workers for every batch, and each fresh worker spends ~20 s on this host
    importing TVM's tensor intrinsics before its first build: most of the tuning time. The pool here is
    recycled every `recycle_after` batches instead (LocalBuilder restarts to bound a worker memory leak).
    A build that takes longer than `timeout_sec` (LLVM on a pathological unrolling) is killed and fails.
    With a `session`, built candidates are counted there, and none is built once its time budget is spent.
    """

    def __init__(self, *, max_workers: int = 2, timeout_sec: float = 30.0, f_export=None,  # noqa: ANN001
                 recycle_after: int = 40, session: _Session | None = None) -> None:
        super().__init__()
        self.max_workers, self.timeout_sec, self.f_export = max_workers, timeout_sec, f_export
        self.recycle_after, self.batches, self.pool, self.session = recycle_after, 0, None, session

    def _executor(self) -> PopenPoolExecutor:
        if self.pool is not None and self.batches >= self.recycle_after:
            self.pool.shutdown()
            self.pool = None
        if self.pool is None:
            self.pool, self.batches = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                                        initializer=_warm_worker), 0
        self.batches += 1
        return self.pool

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        if self.session is not None and self.session.expired():
            self.session.skipped += len(build_inputs)
            return [BuilderResult(None, "not built: the tuning time budget is spent") for _ in build_inputs]
        args = [(None, self.f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
        results = []
        for res in self._executor().map_with_error_catching(lambda x: _worker_func(*x), args):
            if res.status == StatusKind.COMPLETE:
                results.append(BuilderResult(res.value, None))
            else:
                results.append(BuilderResult(None, f"WarmBuilder: {res.status.name}: {res.value}"))
        if self.session is not None:
            self.session.built(len(build_inputs))
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _cross_export(compiler: str):  # noqa: ANN202
    """An export function for MetaSchedule builders that links candidates for a remote board."""

    def export(mod: tvm.runtime.Module) -> str:
        import tempfile

        from tvm.support import cc

        path = str(Path(tempfile.mkdtemp()) / "candidate.so")
        mod.export_library(path, fcompile=cc.cross_compiler(compiler))
        return path

    return export


def runner_for(profile: DeviceProfile) -> ms.runner.Runner:
    """Measure candidates locally, or on the profile's board over TVM RPC (tracker or direct server)."""
    if not profile.is_remote:
        return ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1,
                                                                               min_repeat_ms=20))
    remote = profile.remote
    if remote.tracker is None:
        raise HarnessError(f"device {profile.name}: tuning over RPC needs a tracker (--tracker HOST:PORT)")
    host, port = parse_hostport(remote.tracker, f"device {profile.name} tracker")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=remote.key,
                                 session_timeout_sec=int(remote.timeout_s))
    return ms.runner.RPCRunner(rpc_config=config,
                               evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20))


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Records each task's best latency; ends every task once the session's deadline has passed."""

    def __init__(self, session: _Session) -> None:
        super().__init__()
        self.session = session

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:  # noqa: ANN001
        session = self.session
        for result in runner_results:
            if result.run_secs:
                secs = sum(float(s) for s in result.run_secs) / len(result.run_secs)
                session.best[task_id] = min(session.best.get(task_id, float("inf")), secs)
        session.bar.set_postfix_str(session.status())
        if session.expired() and not session.stopped:
            session.stopped = True
            for i, task in enumerate(task_scheduler.tasks_):
                if not task.is_terminated:
                    task_scheduler.terminate_task(i)


def tune(mods: Sequence[tvm.IRModule], target: tvm.target.Target, db_path: Path, *, trials: int,
         minutes: float | None = None, profile: DeviceProfile | None = None, progress: bool = True,
         refine: bool = False) -> TuneReport:
    """Tune the kernels of `mods` that the database lacks: up to `trials` measurements, or `minutes`.

    Tasks already tuned for this target are skipped, so re-tuning covered modules spends nothing; with
    `refine` they are tuned again too (the search starts from the best schedules in the database).
    Each task gets an equal share of the trials; the gradient scheduler spends them where latency falls most.
    """
    start = time.monotonic()
    tasks = extract_tasks(mods, target)
    db = open_database(db_path)
    tuned = [_is_tuned(db, t, target) for t in tasks]
    todo = [t for t, done in zip(tasks, tuned, strict=True) if refine or not done]
    tuned_before = sum(tuned)
    log.info("%d tuning tasks, %d already tuned for this target%s", len(tasks), tuned_before,
             " (refining them)" if refine and tuned_before else "")
    measured, stopped = 0, False
    if todo and trials > 0:
        per_task = max(8, -(-trials // len(todo)))
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # its per-trial tables
        work_dir = db_path  # MetaSchedule writes its logs to work_dir/logs
        strategy = ms.search_strategy.EvolutionarySearch(population_size=256, init_min_unmeasured=32,
                                                         genetic_num_iters=3)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, str(work_dir),
                                                                                  strategy=strategy)
        deadline = start + 60 * minutes if minutes else None
        runner = runner_for(profile) if profile is not None else ms.runner.LocalRunner()
        with tqdm(total=trials, desc="tune", unit="trial", disable=None if progress else True) as bar:
            session = _Session(bar, len(todo), deadline)
            builder = WarmBuilder(f_export=_cross_export(profile.cross_compiler)
                                  if profile is not None and profile.cross_compiler else None, session=session)
            try:
                ms.tune.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
                    max_trials_per_task=per_task, num_trials_per_iter=min(16, per_task), database=db,
                    builder=builder, runner=runner,
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), _Progress(session)])
            except tvm.error.InternalError as exc:
                # Ending tasks from a measure callback can leave the scheduler holding a task it just saw end
                # (it checks `!task->is_terminated`); every measured record is in the database by then.
                if not (session.stopped and "is_terminated" in str(exc)):
                    raise
            finally:
                builder.close()
            measured, stopped = session.trials, session.stopped or session.skipped > 0
    if database_fingerprint(db_path) is not None:
        log.info("kept %d records (the best per kernel) in %s", compact(db_path), db_path)
    return TuneReport(tasks=len(tasks), tasks_tuned_before=tuned_before,
                      trials=measured, seconds=time.monotonic() - start,
                      stopped_by_deadline=stopped, coverage=coverage(mods, target, db_path))


def compact(path: Path, keep: int = 2) -> int:
    """Keep only the `keep` fastest records of each workload (MetaSchedule logs every measured candidate).

    Makes the database small enough to commit and quick to load; returns the number of records kept.
    """
    db = open_database(path)
    workloads = {}
    records = db.get_all_tuning_records()
    for record in records:
        workloads.setdefault(tvm_ffi.structural_hash(record.workload.mod), record.workload)
    if len(records) <= keep * len(workloads):
        return len(records)  # already compact: leave the files (and their fingerprint) alone
    partial = path.with_name(path.name + ".compact")
    for leftover in (partial / RECORDS, partial / WORKLOADS):
        leftover.unlink(missing_ok=True)
    slim, kept = open_database(partial), 0
    for workload in workloads.values():
        for record in db.get_top_k(workload, keep):
            _copy_record(record, slim)
            kept += 1
    for name in (WORKLOADS, RECORDS):
        (partial / name).replace(path / name)
    partial.rmdir()
    return kept


def _lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Relax's passes after scheduling, to the VM (TVM 0.27's relax.pipeline misses them for CPU targets)."""
    from tvm import relax

    backend = relax.pipeline
    if target.kind.name == "llvm":
        from tvm.relax.backend.cpu_generic import pipeline as backend
    return [*backend.dataflow_lower_passes(target), *backend.finalize_passes(target)]


def gpu_default_schedules(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """DLight's default GPU schedules (for kernels the database has none for; every GPU kernel needs one)."""
    if "gpu" not in [str(k) for k in target.keys]:
        return []
    from tvm.s_tir import dlight as dl

    return [dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                    dl.gpu.Fallback())]


def compile_with_database(mod: tvm.IRModule, target: tvm.target.Target, database: Path | ms.database.Database
                          ) -> tvm.runtime.Executable:
    """Build `mod`, taking every kernel the database (at a path, or loaded) has a schedule for (the rest untuned).

    Where a tuned schedule rewrote its weight layout, the repacking is split out of the kernel and
    constant-folded: the library holds the weights prepacked and the kernel reads them as they lie.
    """
    from tvm import relax

    tail = _lowering_passes(target)
    prepack = [relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant()] \
        if prepacks_weights(target) else []

    @tvm.transform.module_pass(opt_level=3)
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        # (MetaScheduleApplyDatabase reads the current target when it is made: here, inside `with target`)
        scheduled = [relax.transform.MetaScheduleApplyDatabase(), *gpu_default_schedules(target)]
        mod = tvm.transform.Sequential(scheduled)(fuse(mod, target))
        return tvm.transform.Sequential([*prepack, *tail])(mod)

    if isinstance(database, Path):
        database = records_for(database, [t.dispatched[0] for t in extract_tasks([mod], target)])
    with target, database, tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=target, relax_pipeline=pipeline)
