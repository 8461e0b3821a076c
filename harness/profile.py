"""Per-kernel latency of a compiled artifact: the Relax VM's instrument hook times every kernel call (TVM 0.27's
Relax VM has no profiler of its own), summed over runs and grouped into layer kinds."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
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


def kernel_times(lib: Path, input_shape: tuple[int, ...], dtype: str = "float32", *, threads: int | None = None,
                 runs: int = 10, layout: str = "NHWC") -> pd.DataFrame:
    """Mean milliseconds per inference spent in each kernel of `lib` (VM built-ins left out), longest first,
    with its layer kind and share of the kernels' total. `layout`: of the artifact's convolutions (which
    tells where their argument shapes keep the channels)."""
    import tvm
    from tvm import relax

    from harness.measure import set_tvm_threads

    set_tvm_threads(threads)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(input_shape).astype(dtype))
    vm["main"](x)  # warm up
    spent: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    started: dict[str, float] = {}
    shapes: dict[str, list[tuple[int, ...]]] = {}  # of each kernel's arguments, outputs last

    def instrument(_func: object, symbol: str, before: bool, _ret: object, *args: object) -> int:
        if before:
            if symbol not in shapes:
                shapes[symbol] = [tuple(int(d) for d in a.shape) for a in args if hasattr(a, "shape")]
            started[symbol] = time.perf_counter()
        else:
            spent[symbol] += time.perf_counter() - started.pop(symbol)
            calls[symbol] += 1
        return 0

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm["main"](x)
    rows = [{"kernel": k, "kind": kind_of(k, shapes.get(k), layout), "calls": calls[k] // runs,
             "ms": spent[k] / runs * 1e3} for k in spent if not re.match(r"vm\.builtin\.", k)]
    frame = pd.DataFrame(rows).sort_values("ms", ascending=False, ignore_index=True)
    frame["share"] = frame["ms"] / frame["ms"].sum()
    return frame


def by_kind(kernels: pd.DataFrame) -> pd.Series:
    """Milliseconds per inference per layer kind."""
    return kernels.groupby("kind")["ms"].sum()


def compare_kinds(reference: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """Per layer kind: the milliseconds of two artifacts' kernels (`kernel_times`) and their ratio, the kinds
    longest in `other` first; a `total` row last."""
    table = pd.concat([by_kind(reference), by_kind(other)], axis=1, keys=names).fillna(0.0)
    table.loc["total"] = table.sum()
    table["ratio"] = table[names[1]] / table[names[0]].where(table[names[0]] > 0)
    body = table.drop(index="total").sort_values(names[1], ascending=False)
    return pd.concat([body, table.loc[["total"]]]).rename_axis("kind").reset_index()
