"""Convolution data layout: NCHW as ONNX imports it, or NHWC (channels innermost) for CPU kernels.

In NHWC a 1×1 convolution is a plain matrix product with the output channels contiguous, and a
depthwise convolution vectorizes over channels instead of over a short image row; MetaSchedule finds
much faster CPU schedules for both (measured in the README's tuning section). Relax's ConvertLayout
rewrites every convolution and the elementwise ops between them, so only the graph's input and its
pooled output are transposed.
"""

from __future__ import annotations

import tvm
from tvm import relax, topi

from harness.device import ConvLayout

_KERNEL_LAYOUT = {ConvLayout.NHWC: "HWIO"}  # output channels innermost, like the data
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@relax.expr_functor.mutator
class _ClipAsRelaxOps(relax.PyExprMutator):
    """The ONNX importer emits Clip (ReLU6) as `call_tir` of TE `maximum`/`minimum` kernels with a scalar
    bound, which ConvertLayout cannot see through (it would transpose around every activation); this
    turns them back into Relax `maximum`/`minimum` ops, which it converts."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not call.op.same_as(_CALL_TIR) or not isinstance(call.args[1], relax.Tuple):
            return call
        fields = call.args[1].fields
        if len(fields) != 2 or getattr(fields[1].ty, "ndim", -1) != 0:
            return call
        name = call.args[0].name_hint
        for prefix, op in (("maximum", relax.op.maximum), ("minimum", relax.op.minimum)):
            if name.startswith(prefix):
                return op(*fields)
        return call


def rewrite_functions(mutator: relax.PyExprMutator, mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with each Relax function rewritten by `mutator` (made on `mod`), bindings left unused removed."""
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return relax.transform.DeadCodeElimination()(mutator.builder_.get())


def bound_constant(mutator: relax.PyExprMutator, expr: relax.Expr) -> tvm.ir.expr.Constant | None:
    """`expr` if it is a constant, the constant a variable `expr` is bound to, else None."""
    if isinstance(expr, relax.Var):
        expr = mutator.lookup_binding(expr)
    return expr if isinstance(expr, tvm.ir.expr.Constant) else None


def clip_as_relax_ops(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with the importer's Clip kernels as Relax `maximum`/`minimum` ops, which the layout and
    mixed-precision passes understand."""
    return rewrite_functions(_ClipAsRelaxOps(mod), mod)


def convert_layout(mod: tvm.IRModule, layout: ConvLayout) -> tvm.IRModule:
    """`mod` (as imported, NCHW) with its convolutions and the ops between them in `layout`."""
    if layout is ConvLayout.NCHW:
        return mod
    mod = clip_as_relax_ops(mod)
    return relax.transform.ConvertLayout({"relax.nn.conv2d": [str(layout), _KERNEL_LAYOUT[layout]]})(mod)


_OPAQUE = 8  # Relax's op pattern kind that FuseOps fuses with nothing


@relax.expr_functor.mutator
class _TransposesApart(relax.PyExprMutator):
    """8-bit `permute_dims` ops as TE transposes that FuseOps leaves in kernels of their own."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor naming)
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.permute_dims") or call.attrs.axes is None \
                or str(call.args[0].ty.dtype) not in ("uint8", "int8"):
            return call
        out = self.builder_.call_te(topi.transpose, call.args[0], [int(a) for a in call.attrs.axes],
                                    primfunc_name_hint="transpose_8bit")
        gvar = out.args[0]
        self.builder_.update_func(gvar, self.builder_.get()[gvar].with_attr("op_pattern", _OPAQUE))
        return out


def transposes_apart(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with each transpose of 8-bit data (the quantized input's NCHW → NHWC) in a kernel of its own.

    Fused with the quantization that produces its input, the transpose makes the whole kernel compute in its
    output's order, 3 channels innermost: scalar code (a 224×224 input: 1.6 ms, against 0.085 ms for the
    quantization in NCHW, vectorized, then the uint8 transpose; Emerald Rapids, 2 threads, tuned).
    """
    return rewrite_functions(_TransposesApart(mod), mod)
