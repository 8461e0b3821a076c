"""TVM's own tensor intrinsics, loaded per target instead of all at once.

MetaSchedule's TuneContext and DLight's GPU matmul rule (for fp16) import `tvm.s_tir.tensor_intrin`, whose
package imports every target's ~250 intrinsics, each parsed from TVMScript: 104 s in a fresh process on a
2-core EPYC, 145 s beside torch. Here the package is entered without its `__init__` and only the modules a
target needs are imported; the others still load on first import by name. TVMScript's parser takes each
intrinsic's caller frames with `inspect.stack()`, which looks for the module of every frame (the import
machinery's too) among all loaded ones; while the modules load, `inspect.stack` skips that search (it reads
each frame's line alone). Measured beside torch on a 2-core EPYC: the CUDA module 21 s → 2.8 s.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import linecache
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import tvm
import tvm.s_tir

PACKAGE = "tvm.s_tir.tensor_intrin"
FOR_TARGET = {"llvm": ("x86", "arm_cpu"), "cuda": ("cuda",)}  # the modules each target kind's rules name


def load_tensor_intrinsics(target: tvm.target.Target) -> None:
    """Register the tensor intrinsics of `target`'s kind; other kinds are left to TVM's import of them all."""
    if target.kind.name not in FOR_TARGET:
        return
    modules = [m for m in FOR_TARGET[target.kind.name] if f"{PACKAGE}.{m}" not in sys.modules]
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
        package.__package__ = PACKAGE
        sys.modules[PACKAGE] = package
    if modules:
        with _frames_without_module_search():
            for module in modules:
                importlib.import_module(f"{PACKAGE}.{module}")


def _stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack()` with each frame's own line as its context and no search for its module."""
    frames, frame = [], sys._getframe(1)  # noqa: SLF001 (the caller's frame, as inspect.stack takes it)
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno)
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                        [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def _frames_without_module_search() -> Iterator[None]:
    stack, inspect.stack = inspect.stack, _stack
    try:
        yield
    finally:
        inspect.stack = stack
