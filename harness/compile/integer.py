"""Integer int8 inference for QDQ models: quantized convolutions and dense layers become integer ones.

TVM's ONNX importer turns a QDQ model into float arithmetic between `dequantize` and `quantize` ops. This
pass matches each quantized convolution (and, alike, each quantized Gemm: matmul with the transposed weight)

    quantize(conv2d(dequantize(x_q, sx, zx), dequantize(W_q, sw, 0)) [+ reshape(dequantize(b))], sy, zy)

with constant int8 weights, and replaces it by

    quantize(float(conv2d(pad(x_q, zx), W_q, out_dtype=int32)) * scale[c] + offset[c], sy, zy)

where scale = sx·sw[c] and offset = bias[c] − zx·Σw[c]·scale[c] (the zero-point correction, exact because
the input is padded with its zero point). The convolution reads the uint8/int8 activations and weights
directly and accumulates in int32; activations stay 8-bit between layers (the next layer consumes `x_q`),
and only the requantization (a per-channel multiply-add) is in float. Unmatched ops keep the float path, as
do residual adds and pooling (elementwise: TVM fuses their dequantize → op → quantize into one kernel).

After the layout conversion, harness.compile.packing gives the NHWC integer convolutions the weight layout
of 8-bit dot-product instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_const, is_op, rewrite_call, wildcard


@dataclass(frozen=True, kw_only=True, slots=True)
class IntegerReport:
    """How many quantized convolutions and dense layers became integer ones."""

    integer_ops: int
    float_ops: int


def _biased_quantize(op: DFPattern, bias: DFPattern) -> DFPattern:
    return is_op("relax.quantize")(is_op("relax.add")(op, bias) | op, is_const(), is_const())


def _dequantize(name: str, vars_: dict[str, DFPattern], data: DFPattern | None = None) -> DFPattern:
    vars_ |= {name: data or is_const(), f"s{name}": is_const(), f"z{name}": is_const()}
    return is_op("relax.dequantize")(vars_[name], vars_[f"s{name}"], vars_[f"z{name}"])


def _conv_pattern() -> tuple[DFPattern, dict[str, DFPattern]]:
    """quantize(conv2d(dequantize(x), dequantize(W)) [+ reshape(dequantize(b))]); `x_float` where x is
    quantize(x_float) (the network's input)."""
    vars_: dict[str, DFPattern] = {"x_float": wildcard()}
    vars_["x_quantize"] = is_op("relax.quantize")(vars_["x_float"], is_const(), is_const())
    data = vars_["x_quantize"] | wildcard()
    vars_["op"] = is_op("relax.nn.conv2d")(_dequantize("x", vars_, data), _dequantize("w", vars_))
    vars_["bias"] = is_op("relax.reshape")(_dequantize("b", vars_), wildcard())
    return _biased_quantize(vars_["op"], vars_["bias"]), vars_


def _dense_pattern() -> tuple[DFPattern, dict[str, DFPattern]]:
    """quantize(matmul(dequantize(x), permute_dims(dequantize(W))) [+ dequantize(b)]): an ONNX Gemm."""
    vars_: dict[str, DFPattern] = {}
    vars_["transpose"] = is_op("relax.permute_dims")(_dequantize("w", vars_))
    vars_["op"] = is_op("relax.matmul")(_dequantize("x", vars_, wildcard()), vars_["transpose"])
    vars_["bias"] = _dequantize("b", vars_)
    return _biased_quantize(vars_["op"], vars_["bias"]), vars_


def _np(expr: relax.Expr) -> np.ndarray:
    return expr.value.numpy()


def _per_tensor(param: relax.Expr) -> float | None:
    """The value of a constant quantization parameter with one element, else None."""
    if isinstance(param, tvm.ir.expr.Constant) and _np(param).size == 1:
        return float(_np(param).reshape(-1)[0])
    return None


def _filled(value: float | np.ndarray, rank: int) -> relax.Expr:
    """A float32 constant operand of rank `rank`: one value, or one per channel (the second axis)."""
    value = np.asarray(value, dtype=np.float32).reshape(-1)
    return relax.const(value.reshape((1, value.size) + (1,) * (rank - 2)))


def _quantized(y: relax.Expr, zero: float, out_dtype: str, rank: int) -> relax.Expr:
    """clip(round(y) + zero) in `out_dtype`'s range, cast to it: relax.quantize after its division."""
    limits = np.iinfo(out_dtype)
    y = relax.op.add(relax.op.round(y), _filled(zero, rank))
    y = relax.op.minimum(relax.op.maximum(y, _filled(limits.min, rank)), _filled(limits.max, rank))
    return relax.op.astype(y, out_dtype)


def _requantize(call: relax.Call, m: dict, vars_: dict, integer_op, rank: int) -> relax.Expr:  # noqa: ANN001
    """The integer version of the matched `call`; `integer_op(x_q, zx, w_q)` builds the int32 operation,
    whose output has `rank` dimensions, channels second.

    Returns `call` unchanged (the float path) where the operands are not what the integer form assumes.
    """
    x_q, w_q = m[vars_["x"]], _np(m[vars_["w"]])
    sx, zx, sw, zw = (_np(m[vars_[k]]) for k in ("sx", "zx", "sw", "zw"))
    if np.any(zw != 0) or sx.size != 1 or zx.size != 1 or w_q.dtype not in (np.int8, np.uint8):
        return call
    channels = w_q.shape[0]
    scale = float(sx.reshape(-1)[0]) * np.broadcast_to(sw.astype(np.float64).reshape(-1), (channels,))
    bias = np.zeros(channels)
    if vars_["bias"] in m:
        q, sb, zb = (_np(m[vars_[k]]).astype(np.float64).reshape(-1) for k in ("b", "sb", "zb"))
        bias = (q - zb) * sb
    zx = int(zx.reshape(-1)[0])
    offset = bias - zx * w_q.astype(np.int64).reshape(channels, -1).sum(axis=1) * scale
    acc = integer_op(x_q, zx, w_q)
    if acc is None:
        return call
    acc = relax.op.astype(acc, "float32")
    out_dtype, sy, zy = str(call.attrs.out_dtype), _per_tensor(call.args[1]), _per_tensor(call.args[2])
    if sy is None or zy is None:  # the output quantized per channel: a quantize op
        y = relax.op.add(relax.op.multiply(acc, _filled(scale, rank)), _filled(offset, rank))
        return relax.op.quantize(y, call.args[1], call.args[2], axis=call.attrs.axis, out_dtype=out_dtype)
    # quantize(acc·scale + offset, sy, zy), its division by sy folded into the per-channel constants
    y = relax.op.add(relax.op.multiply(acc, _filled(scale / sy, rank)), _filled(offset / sy, rank))
    return _quantized(y, zy, out_dtype, rank)


def _rewrite_conv(call: relax.Call, m: dict, vars_: dict) -> relax.Expr:  # noqa: ANN001
    attrs = m[vars_["op"]].attrs
    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
        return call

    def conv(x_q: relax.Expr, zx: int, w_q: np.ndarray) -> relax.Expr:
        padding = [int(p) for p in attrs.padding]
        if zx != 0 and any(padding):  # pad with the zero point: the offset's correction stays exact
            top, left, bottom, right = padding
            pad_width = [0, 0, 0, 0, top, bottom, left, right]
            quantize = m.get(vars_["x_quantize"])
            if quantize is not None:  # pad the float input with 0.0, which quantizes to zx exactly: the
                # kernel's code then holds no calibrated value (a pad value is a literal in it)
                x_q = relax.op.quantize(relax.op.nn.pad(quantize.args[0], pad_width, pad_value=0.0),
                                        *quantize.args[1:], axis=quantize.attrs.axis,
                                        out_dtype=str(quantize.attrs.out_dtype))
            else:
                x_q = relax.op.nn.pad(x_q, pad_width, pad_value=float(zx))
            padding = [0, 0, 0, 0]
        return relax.op.nn.conv2d(x_q, relax.const(w_q), strides=attrs.strides, padding=padding,
                                  dilation=attrs.dilation, groups=attrs.groups, out_dtype="int32")

    return _requantize(call, m, vars_, conv, rank=4)


def _rewrite_dense(call: relax.Call, m: dict, vars_: dict) -> relax.Expr:  # noqa: ANN001
    if [int(a) for a in m[vars_["transpose"]].attrs.axes] != [1, 0]:
        return call

    def dense(x_q: relax.Expr, _zx: int, w_q: np.ndarray) -> relax.Expr | None:
        if w_q.ndim != 2:
            return None
        return relax.op.matmul(x_q, relax.const(np.ascontiguousarray(w_q.T)), out_dtype="int32")

    return _requantize(call, m, vars_, dense, rank=2)


_OPS = ("relax.nn.conv2d", "relax.matmul")


def _count(mod: tvm.IRModule) -> tuple[int, int]:
    """(integer, all) convolutions and matmuls in `mod`."""
    integer = total = 0

    def visit(expr: relax.Expr) -> None:
        nonlocal integer, total
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in _OPS:
            total += 1
            integer += str(expr.attrs.out_dtype) == "int32"

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return integer, total


def integerize(mod: tvm.IRModule) -> tuple[tvm.IRModule, IntegerReport]:
    """Rewrite the quantized convolutions and dense layers of `mod` (an imported QDQ model) into integer ones."""
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for make, rewrite in ((_conv_pattern, _rewrite_conv), (_dense_pattern, _rewrite_dense)):
        pattern, vars_ = make()
        for gvar, func in out.functions.items():
            if isinstance(func, relax.Function):
                out[gvar] = rewrite_call(pattern, lambda call, m, v=vars_, r=rewrite: r(call, m, v), func)
    out = relax.transform.Normalize()(out)
    integer, total = _count(out)
    return out, IntegerReport(integer_ops=integer, float_ops=total - integer)


@relax.expr_functor.mutator
class _QdqAsElementwise(relax.PyExprMutator):
    """Per-tensor quantize/dequantize ops written as Relax elementwise ops (see `qdq_as_elementwise`)."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor naming)
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in ("relax.quantize", "relax.dequantize")):
            return call
        data, scale, zero = call.args
        scale, zero = _per_tensor(scale), _per_tensor(zero)
        if scale is None or zero is None:
            return call  # per-channel (the weights of the float path): kept as the op
        rank = len(data.ty.shape)
        if call.op.name == "relax.dequantize":  # scale · (x − zero)
            return relax.op.multiply(relax.op.subtract(relax.op.astype(data, "float32"), _filled(zero, rank)),
                                     _filled(scale, rank))
        return _quantized(relax.op.divide(data, _filled(scale, rank)), zero, str(call.attrs.out_dtype), rank)


def qdq_as_elementwise(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with its per-tensor quantize and dequantize ops as elementwise ops with tensor operands.

    Two reasons. ConvertLayout has no layout rule for quantize/dequantize: it would transpose back to NCHW
    around each of them, while elementwise ops follow the convolutions into NHWC. And Relax's legalization
    writes a scalar scale or zero point into the kernel's code as a literal, so each kernel's tuning
    workload would depend on the calibrated values (a recalibrated model would find none of its kernels in
    a tuning database); as tensor operands they are kernel arguments like the weights, and the workloads
    depend on the network's structure alone.
    """
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gvar] = _QdqAsElementwise().visit_expr(func)
    return relax.transform.Normalize()(out)
