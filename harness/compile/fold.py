"""Constant folding of layout and type ops in NumPy, before legalization.

ConvertLayout transposes every weight and per-channel constant (`permute_dims` of a constant), the ONNX
importer reshapes biases and writes each Clip bound as `where(isnan(bound), ±inf, bound)`, and mixed
precision casts weights. Relax's FoldConstant folds each such call by compiling it to a TIR kernel with LLVM
and running it: ~50 ms a call, 400 calls (20 s) for an integer MobileNet v2, on every build and every task
extraction. Folded here the constants are the same arrays (these ops move or convert values, no
arithmetic), in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from harness.compile.layout import bound_constant, rewrite_functions


def _permute(call: relax.Call, data: np.ndarray) -> np.ndarray:
    axes = call.attrs.axes
    return np.transpose(data, None if axes is None else [int(a) for a in axes])


def _reshape(call: relax.Call, data: np.ndarray) -> np.ndarray | None:
    shape = call.args[1]
    if not isinstance(shape, relax.ShapeExpr) or not all(isinstance(v, tvm.tirx.IntImm) for v in shape.values):
        return None
    return data.reshape([int(v) for v in shape.values])


def _astype(call: relax.Call, data: np.ndarray) -> np.ndarray | None:
    try:
        return data.astype(np.dtype(str(call.attrs.dtype)))
    except TypeError:  # a type NumPy lacks (bfloat16): left to TVM
        return None


_UNARY: dict[str, Callable[[relax.Call, np.ndarray], np.ndarray | None]] = {
    "relax.permute_dims": _permute,
    "relax.reshape": _reshape,
    "relax.astype": _astype,
    "relax.isnan": lambda _call, data: np.isnan(data),
}


@relax.expr_functor.mutator
class _FoldLayoutConstants(relax.PyExprMutator):
    def _constant(self, expr: relax.Expr) -> np.ndarray | None:
        """The value of a constant, or of a variable bound to one; else None."""
        constant = bound_constant(self, expr)
        return None if constant is None else constant.value.numpy()

    def _fold(self, call: relax.Call) -> np.ndarray | None:
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name in _UNARY:
            data = self._constant(call.args[0])
            return None if data is None else _UNARY[name](call, data)
        if name == "relax.where":  # the importer's Clip: where(isnan(bound), ±inf, bound)
            args = [self._constant(a) for a in call.args]
            return None if any(a is None for a in args) else np.where(*args)
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor naming)
        call = super().visit_call_(call)
        value = self._fold(call)
        return call if value is None else relax.const(np.array(value, order="C"), str(value.dtype))  # (keeps 0-d)


def fold_layout_constants(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with transposes, reshapes, casts, NaN tests and selections of constants replaced by their results."""
    return rewrite_functions(_FoldLayoutConstants(mod), mod)
