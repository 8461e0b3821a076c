"""MetaSchedule's candidate builder, kept warm: a worker pool reused across batches (for tuning and for timing
a database's records again), linking for a remote board where the profile cross-compiles."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from harness.device import DeviceProfile


class Budget(Protocol):
    """A tuning session's count of built candidates and its time budget (`tuning._Session`)."""

    skipped: int

    def expired(self) -> bool: ...

    def built(self, candidates: int) -> None: ...


def _build(mod: tvm.IRModule, target: tvm.target.Target, _params: dict | None) -> tvm.runtime.Module:
    """MetaSchedule's default candidate build, without its import of `tvm.s_tir.tensor_intrin`: that parses
    every target's ~250 tensor intrinsics (measured: 104 s in a fresh process on a 2-core EPYC), in each new
    worker, and a candidate's code needs none of them (a tensorized schedule has them inlined)."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


@derived_object
class WarmBuilder(PyBuilder):
    """MetaSchedule's LocalBuilder, but with a worker pool kept across batches.

    LocalBuilder starts fresh workers for every batch (each importing TVM, and in TVM's default build its
    tensor intrinsics: see `_build`, used here instead). The pool here is recycled every `RECYCLE_AFTER`
    batches instead (LocalBuilder restarts to bound a worker memory leak).
    A build that takes longer than `TIMEOUT_S` (LLVM on a pathological unrolling) is killed and fails.
    With a `session`, built candidates are counted there, and none is built once its time budget is spent.
    """

    TIMEOUT_S = 30.0
    RECYCLE_AFTER = 40  # batches

    def __init__(self, *, max_workers: int = 2, f_export=None, session: Budget | None = None) -> None:  # noqa: ANN001
        super().__init__()
        self.max_workers, self.f_export, self.session = max_workers, f_export, session
        self.batches, self.pool = 0, None

    def _executor(self) -> PopenPoolExecutor:
        if self.pool is not None and self.batches >= self.RECYCLE_AFTER:
            self.pool.shutdown()
            self.pool = None
        if self.pool is None:
            self.pool, self.batches = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.TIMEOUT_S,
                                                        ), 0
        self.batches += 1
        return self.pool

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        if self.session is not None and self.session.expired():
            self.session.skipped += len(build_inputs)
            return [BuilderResult(None, "not built: the tuning time budget is spent") for _ in build_inputs]
        args = [(_build, self.f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
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


def cross_export(compiler: str):  # noqa: ANN202
    """An export function for MetaSchedule builders that links candidates for a remote board."""

    def export(mod: tvm.runtime.Module) -> str:
        import tempfile

        from tvm.support import cc

        path = str(Path(tempfile.mkdtemp()) / "candidate.so")
        mod.export_library(path, fcompile=cc.cross_compiler(compiler))
        return path

    return export


def builder_for(profile: DeviceProfile | None, session: Budget | None = None) -> WarmBuilder:
    """A warm builder of candidates for `profile` (linked by its cross compiler, if it has one)."""
    cross = profile.cross_compiler if profile is not None else None
    return WarmBuilder(f_export=cross_export(cross) if cross else None, session=session)
