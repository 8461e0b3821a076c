"""Kernels: the fused TIR kernels (tuning tasks) of a Relax module, and the build that takes tuned
schedules from a database for them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from harness.compile.database import records_for
from harness.specs import TuningCoverage


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


def workload_hash(task: ms.ExtractedTask) -> int:
    """What identifies a kernel across models: the structural hash of its TIR workload."""
    return tvm_ffi.structural_hash(task.dispatched[0])


def module_tasks(mods: Sequence[tvm.IRModule], target: tvm.target.Target) -> list[list[ms.ExtractedTask]]:
    """The fused TIR kernels of each of `mods`."""
    return [list(ms.relax_integration.extract_tasks(fuse(mod, target), target)) for mod in mods]


def merge_tasks(per_module: Iterable[Sequence[ms.ExtractedTask]]) -> list[ms.ExtractedTask]:
    """The unique kernels of several modules' tasks, identical workloads merged (their weights summed)."""
    merged: dict[int, tuple[ms.ExtractedTask, int]] = {}
    for tasks in per_module:
        for task in tasks:
            key = workload_hash(task)
            first, weight = merged.get(key, (task, 0))
            merged[key] = (first, weight + int(task.weight))
    return [task if task.weight == weight else
            ms.ExtractedTask(task.task_name, task.mod, task.target, task.dispatched, weight)
            for task, weight in merged.values()]


def extract_tasks(mods: Sequence[tvm.IRModule], target: tvm.target.Target) -> list[ms.ExtractedTask]:
    """The unique fused TIR kernels of `mods`, identical workloads merged (their weights summed)."""
    return merge_tasks(module_tasks(mods, target))


def chosen_record(db: ms.database.Database, task: ms.ExtractedTask, target: tvm.target.Target
                  ) -> ms.database.TuningRecord | None:
    """The record a build takes from `db` for `task`'s kernel, None when it has none (the kernel is untuned)."""
    mod = task.dispatched[0]
    return db.query_tuning_record(mod, target, task.task_name) if db.has_workload(mod) else None


def is_tuned(db: ms.database.Database, task: ms.ExtractedTask, target: tvm.target.Target) -> bool:
    return chosen_record(db, task, target) is not None


def coverage(mods: Sequence[tvm.IRModule], target: tvm.target.Target, database: Path | ms.database.Database
             ) -> TuningCoverage:
    """How many of the tasks of `mods` the database (at a path, or loaded) has schedules for."""
    return tasks_coverage(extract_tasks(mods, target), target, database)


def tasks_coverage(tasks: Sequence[ms.ExtractedTask], target: tvm.target.Target,
                   database: Path | ms.database.Database) -> TuningCoverage:
    """How many of the extracted `tasks` the database has schedules for."""
    db = records_for(database, [t.dispatched[0] for t in tasks]) if isinstance(database, Path) else database
    return TuningCoverage(tuned=sum(is_tuned(db, t, target) for t in tasks), total=len(tasks))


def _lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Relax's passes after scheduling, to the VM, from the target's backend module (TVM 0.27's relax.pipeline
    dispatches to names that the `cpu_generic` and `cuda` packages do not export)."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda

    backend = {"llvm": cpu, "cuda": cuda}.get(target.kind.name, relax.pipeline)
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
