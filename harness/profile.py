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


def conv_kind(weight_shape: tuple[int, ...], layout: str) -> str:
    """`1x1 convolution`, `depthwise convolution` or `KxK convolution`, from a kernel's weight shape (HWIO for
    NHWC convolutions, OIHW for NCHW ones)."""
    kh, kw, in_per_group = (weight_shape[0], weight_shape[1], weight_shape[2]) if layout == "NHWC" else \
        (weight_shape[2], weight_shape[3], weight_shape[1])
    if kh == kw == 1:
        return "1x1 convolution"
    return "depthwise convolution" if in_per_group == 1 else f"{kh}x{kw} convolution"


def kind_of(kernel: str, weight_shape: tuple[int, ...] | None = None, layout: str = "NHWC") -> str:
    """The layer kind of a fused kernel, from its name (`fused_conv2d3_add2_relu2` → convolution), refined
    for convolutions by their weight shape."""
    if "conv2d" in kernel:
        return conv_kind(weight_shape, layout) if weight_shape is not None and len(weight_shape) == 4 \
            else "convolution"
    return next((kind for key, kind in KINDS if key in kernel), "other")


def kernel_times(lib: Path, input_shape: tuple[int, ...], dtype: str = "float32", *, threads: int | None = None,
                 runs: int = 10, layout: str = "NHWC") -> pd.DataFrame:
    """Mean milliseconds per inference spent in each kernel of `lib` (VM built-ins left out), longest first,
    with its layer kind and share of the kernels' total. `layout`: of the artifact's convolutions (which
    tells how to read their weight shapes)."""
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
    weights: dict[str, tuple[int, ...]] = {}  # a kernel's second argument: a convolution's weight

    def instrument(_func: object, symbol: str, before: bool, _ret: object, *args: object) -> int:
        if before:
            if symbol not in weights and len(args) > 1 and hasattr(args[1], "shape"):
                weights[symbol] = tuple(int(d) for d in args[1].shape)
            started[symbol] = time.perf_counter()
        else:
            spent[symbol] += time.perf_counter() - started.pop(symbol)
            calls[symbol] += 1
        return 0

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm["main"](x)
    rows = [{"kernel": k, "kind": kind_of(k, weights.get(k), layout), "calls": calls[k] // runs,
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
