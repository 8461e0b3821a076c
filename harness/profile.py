"""Per-kernel latency of a compiled artifact (TVM 0.27's Relax VM has no profiler of its own): each kernel timed by
itself with TVM's time evaluator on the arguments an inference gave it, grouped into layer kinds."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = (("matmul", "dense"), ("dense", "dense"), ("pool", "pooling"), ("mean", "pooling"),
         ("transpose", "layout"), ("layout_transform", "layout"), ("quantize", "quantize"), ("add", "elementwise"))


WINDOWS = (1, 3, 5, 7)  # the convolution windows the kinds name


def conv_kind(args: list[tuple[int, ...]], layout: str) -> str:
    """`1x1 convolution`, `depthwise convolution` or `KxK convolution`, from the shapes of a convolution
    kernel's arguments, its output last. Tuned schedules repack weights into their own layouts, so the
    weight is read by its size (kh·kw·C_in/groups·C_out: the largest argument not shaped like the output),
    and the input is the first 4-D argument whose channels make that size a known window (a fused residual,
    shaped like the output, may come first)."""
    if not args or len(args[-1]) != 4:
        return "convolution"
    channel = -1 if layout == "NHWC" else 1
    out, c_out = args[-1], args[-1][channel]
    for i, data in enumerate(args[:-1]):
        sizes = [int(np.prod(shape)) for j, shape in enumerate(args[:-1]) if j != i and shape != out]
        if len(data) != 4 or not sizes:
            continue
        weight, c_in = max(sizes), data[channel]
        if c_in == c_out and any(weight == k * k * c_out for k in WINDOWS[1:]):
            return "depthwise convolution"
        side = next((k for k in WINDOWS if weight == k * k * c_in * c_out), None)
        if side is not None:
            return f"{side}x{side} convolution"
    return "convolution"


def kind_of(kernel: str, args: list[tuple[int, ...]] | None = None, layout: str = "NHWC") -> str:
    """The layer kind of a fused kernel, from its name (`fused_conv2d3_add2_relu2` → convolution), refined
    for convolutions by the shapes of their arguments (`conv_kind`)."""
    if "conv2d" in kernel:
        return conv_kind(args or [], layout)
    return next((kind for key, kind in KINDS if key in kernel), "other")


@dataclass(frozen=True, slots=True)
class Profiled:
    """A compiled artifact to profile: its library, input shape and dtype, and its convolutions' layout (which
    tells where their argument shapes keep the channels)."""
    lib: Path
    input_shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NHWC"


@dataclass(frozen=True, slots=True)
class _Kernel:
    symbol: str
    kind: str
    calls: int  # per inference
    timer: Callable[..., object]  # TVM's time evaluator of the kernel (its `mean`: seconds per call)
    args: tuple[object, ...]  # of its first call in an inference, outputs last


def _kernels(artifact: Profiled, runs: int) -> list[_Kernel]:
    """The kernels one inference of `artifact` calls (VM built-ins left out), each with its arguments and a
    timer of `runs` calls (the Relax VM's instrument hook records them)."""
    import tvm
    from tvm import relax

    module = tvm.runtime.load_module(str(artifact.lib))
    vm = relax.VirtualMachine(module, tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(artifact.input_shape).astype(artifact.dtype))
    vm["main"](x)  # warm up
    arguments: dict[str, tuple[object, ...]] = {}
    calls: Counter[str] = Counter()

    def instrument(_func: object, symbol: str, before: bool, _ret: object, *args: object) -> int:
        if before and not symbol.startswith("vm.builtin."):
            arguments.setdefault(symbol, args)
            calls[symbol] += 1
        return 0

    vm.set_instrument(instrument)
    vm["main"](x)
    kernels = []
    for symbol, args in arguments.items():
        library = next(m for m in _libraries(module) if m.implements_function(symbol, False))
        shapes = [tuple(int(d) for d in a.shape) for a in args if hasattr(a, "shape")]
        kernels.append(_Kernel(symbol, kind_of(symbol, shapes, artifact.layout), calls[symbol],
                               library.time_evaluator(symbol, tvm.cpu(), number=runs, repeat=1), args))
    return kernels


def _libraries(module: object) -> list:
    """`module` and everything it imports, depth first (the kernels live in an imported library)."""
    return [module, *(m for imported in module.imports for m in _libraries(imported))]


def kernel_times_side_by_side(artifacts: Sequence[Profiled], *, threads: int | None = None, rounds: int = 5,
                              runs: int = 10, onnx: Sequence[tuple[Path, tuple[int, ...]]] = ()
                              ) -> list[pd.DataFrame]:
    """Milliseconds per inference spent in each kernel of each artifact, longest first, with its layer kind and
    share of the artifact's kernels' total; then, for each (ONNX model, input shape) of `onnx`, the same of
    ONNX Runtime's nodes (its profiler over `runs` inferences a round, harness.ort_profile).

    Each kernel is timed by itself on the arguments an inference gave it (TVM's time evaluator, `runs` calls),
    in `rounds` rounds that visit every kernel of every artifact (and run every ONNX model) in turn, so that
    drift on the host hits all alike; a kernel's figure is its median over the rounds. (Timing inside the VM's
    instrument hook instead would add a Python round trip to every kernel call and let the thread pool fall
    asleep between kernels: that inflated small kernels several-fold.)"""
    from harness.measure import SETTLE_SECONDS, set_tvm_threads
    from harness.ort_profile import OrtNodes

    set_tvm_threads(threads)
    profiled = [_kernels(artifact, runs) for artifact in artifacts]
    sessions = [OrtNodes(path, shape, threads, runs) for path, shape in onnx]
    samples: list[list[list[float]]] = [[[] for _ in kernels] for kernels in profiled]
    for _ in range(rounds):
        for kernels, times in zip(profiled, samples, strict=True):
            for kernel, kernel_samples in zip(kernels, times, strict=True):
                kernel_samples.append(kernel.timer(*kernel.args).mean * 1e3 * kernel.calls)
        for session in sessions:
            session.sample()
            time.sleep(SETTLE_SECONDS)  # ONNX Runtime's workers spin a while: not into the next TVM kernels
    tables = [pd.DataFrame([{"kernel": k.symbol, "kind": k.kind, "calls": k.calls, "ms": float(np.median(t))}
                            for k, t in zip(kernels, times, strict=True)])
              for kernels, times in zip(profiled, samples, strict=True)]
    frames = []
    for frame in [*tables, *(session.table() for session in sessions)]:
        frame = frame.sort_values("ms", ascending=False, ignore_index=True)
        frame["share"] = frame["ms"] / frame["ms"].sum()
        frames.append(frame)
    return frames


def kernel_times(artifact: Profiled, *, threads: int | None = None, rounds: int = 5, runs: int = 10
                 ) -> pd.DataFrame:
    """`kernel_times_side_by_side` of one artifact."""
    return kernel_times_side_by_side([artifact], threads=threads, rounds=rounds, runs=runs)[0]


def by_kind(kernels: pd.DataFrame) -> pd.Series:
    """Milliseconds per inference per layer kind."""
    return kernels.groupby("kind")["ms"].sum()


def compare_kinds(reference: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str],
                  peer: tuple[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Per layer kind: the milliseconds of two artifacts' kernels (`kernel_times`) and their ratio, the kinds
    longest in `other` first; a `total` row last. `peer`: a name and a third such table (e.g. ONNX Runtime's
    nodes of the same model as `other`), added with `other`'s ratio to it (`<other>/<peer>`)."""
    frames, keys = [by_kind(reference), by_kind(other)], list(names)
    if peer is not None:
        frames.append(by_kind(peer[1]))
        keys.append(peer[0])
    table = pd.concat(frames, axis=1, keys=keys).fillna(0.0)
    table.loc["total"] = table.sum()
    table.insert(2, "ratio", table[names[1]] / table[names[0]].where(table[names[0]] > 0))
    if peer is not None:
        table[f"{names[1]}/{peer[0]}"] = table[names[1]] / table[peer[0]].where(table[peer[0]] > 0)
    body = table.drop(index="total").sort_values(names[1], ascending=False)
    return pd.concat([body, table.loc[["total"]]]).rename_axis("kind").reset_index()
