"""Per-kernel latency of a compiled artifact: the Relax VM's instrument hook times every kernel call (TVM 0.27's
Relax VM has no profiler of its own), summed over runs and grouped into layer kinds."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = (("conv2d", "convolution"), ("matmul", "dense"), ("dense", "dense"), ("pool", "pooling"),
         ("transpose", "layout"), ("layout_transform", "layout"), ("quantize", "quantize"), ("add", "elementwise"))


def kind_of(kernel: str) -> str:
    """The layer kind of a fused kernel, from its name (`fused_conv2d3_add2_relu2` → convolution)."""
    return next((kind for key, kind in KINDS if key in kernel), "other")


def kernel_times(lib: Path, input_shape: tuple[int, ...], dtype: str = "float32", *, threads: int | None = None,
                 runs: int = 10) -> pd.DataFrame:
    """Mean milliseconds per inference spent in each kernel of `lib` (VM built-ins left out), longest first,
    with its layer kind and share of the kernels' total."""
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

    def instrument(_func: object, symbol: str, before: bool, _ret: object, *_args: object) -> int:
        if before:
            started[symbol] = time.perf_counter()
        else:
            spent[symbol] += time.perf_counter() - started.pop(symbol)
            calls[symbol] += 1
        return 0

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm["main"](x)
    rows = [{"kernel": k, "kind": kind_of(k), "calls": calls[k] // runs, "ms": spent[k] / runs * 1e3}
            for k in spent if not re.match(r"vm\.builtin\.", k)]
    frame = pd.DataFrame(rows).sort_values("ms", ascending=False, ignore_index=True)
    frame["share"] = frame["ms"] / frame["ms"].sum()
    return frame
