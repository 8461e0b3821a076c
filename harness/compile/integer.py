"""Integer int8 inference for QDQ models: rewrite dequantize → conv2d [→ + bias] → quantize into integer convs.

TVM's ONNX importer turns a QDQ model into float arithmetic between `dequantize` and `quantize` ops. This
pass matches each quantized convolution

    quantize(conv2d(dequantize(x_q, sx, zx), dequantize(W_q, sw, 0)) [+ reshape(dequantize(b))], sy, zy)

with constant int8 weights, and replaces it by

    quantize(float(conv2d(pad(x_q, zx), W_q, out_dtype=int32)) * scale[c] + offset[c], sy, zy)

where scale = sx·sw[c] and offset = bias[c] − zx·Σw[c]·scale[c] (the zero-point correction, exact because
the input is padded with its zero point). The convolution reads the uint8/int8 activations and weights
directly and accumulates in int32; activations stay 8-bit between layers (the next layer consumes `x_q`),
and only the requantization (a per-channel multiply-add) is in float. Unmatched ops (residual adds, pooling,
the classifier) keep the float path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


@dataclass(frozen=True, kw_only=True, slots=True)
class IntegerReport:
    """How many quantized convolutions became integer ones."""

    integer_convs: int
    float_convs: int


def _pattern():  # noqa: ANN202
    x_q, sx, zx = wildcard(), is_const(), is_const()
    w_q, sw, zw = is_const(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(is_op("relax.dequantize")(x_q, sx, zx), is_op("relax.dequantize")(w_q, sw, zw))
    b_q, sb, zb = is_const(), is_const(), is_const()
    bias = is_op("relax.reshape")(is_op("relax.dequantize")(b_q, sb, zb), wildcard())
    biased = is_op("relax.add")(conv, bias)
    out = is_op("relax.quantize")(biased | conv, is_const(), is_const())
    return out, {"x_q": x_q, "sx": sx, "zx": zx, "w_q": w_q, "sw": sw, "zw": zw, "conv": conv, "bias": bias,
                 "b_q": b_q, "sb": sb, "zb": zb}


def _np(expr: relax.Expr) -> np.ndarray:
    return expr.value.numpy()


def _rewrite(call: relax.Call, m: dict, vars_: dict) -> relax.Expr:  # noqa: ANN001
    conv = m[vars_["conv"]]
    x_q, zx_c = m[vars_["x_q"]], m[vars_["zx"]]
    w_q, sw, zw = _np(m[vars_["w_q"]]), _np(m[vars_["sw"]]).astype(np.float64), _np(m[vars_["zw"]])
    sx = float(_np(m[vars_["sx"]]).reshape(-1)[0])
    zx = int(_np(zx_c).reshape(-1)[0])
    attrs = conv.attrs
    if (np.any(zw != 0) or _np(m[vars_["sx"]]).size != 1 or _np(zx_c).size != 1
            or w_q.dtype not in (np.int8, np.uint8) or str(attrs.data_layout) != "NCHW"
            or str(attrs.kernel_layout) != "OIHW"):
        return call
    channels = w_q.shape[0]
    sw = np.broadcast_to(sw.reshape(-1), (channels,))
    scale = sx * sw
    bias = np.zeros(channels)
    if vars_["bias"] in m:
        q, scale, zp = (_np(m[vars_[k]]).astype(np.float64).reshape(-1) for k in ("b_q", "sb", "zb"))
        bias = (q - zp) * scale
    offset = bias - zx * w_q.astype(np.int64).reshape(channels, -1).sum(axis=1) * scale
    top, left, bottom, right = (int(p) for p in attrs.padding)
    data = x_q
    if top or left or bottom or right:
        data = relax.op.nn.pad(x_q, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx))
    acc = relax.op.nn.conv2d(data, relax.const(w_q), strides=attrs.strides, padding=[0, 0, 0, 0],
                             dilation=attrs.dilation, groups=attrs.groups, out_dtype="int32")
    as_channels = (1, channels, 1, 1)
    y = relax.op.add(relax.op.multiply(relax.op.astype(acc, "float32"),
                                       relax.const(scale.reshape(as_channels).astype(np.float32))),
                     relax.const(offset.reshape(as_channels).astype(np.float32)))
    sy, zy = call.args[1], call.args[2]
    return relax.op.quantize(y, sy, zy, axis=call.attrs.axis, out_dtype=str(call.attrs.out_dtype))


def _count_convs(mod: tvm.IRModule) -> tuple[int, int]:
    integer = total = 0

    def visit(expr: relax.Expr) -> None:
        nonlocal integer, total
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.nn.conv2d":
            total += 1
            integer += str(expr.attrs.out_dtype) == "int32"

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return integer, total


def integerize(mod: tvm.IRModule) -> tuple[tvm.IRModule, IntegerReport]:
    """Rewrite the quantized convolutions of `mod` (an imported QDQ model) into integer ones."""
    pattern, vars_ = _pattern()
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gvar] = rewrite_call(pattern, lambda call, m: _rewrite(call, m, vars_), func)
    out = relax.transform.Normalize()(out)
    integer, total = _count_convs(out)
    return out, IntegerReport(integer_convs=integer, float_convs=total - integer)
