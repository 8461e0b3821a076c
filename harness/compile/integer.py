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

After the layout conversion, `dot_product_layout` packs the weights of the NHWC integer convolutions that
8-bit dot-product instructions compute exactly (harness.compile.intrinsics) into tiles: all of them where the
target's instruction is exact (VNNI `vpdpbusd`), else those whose weights `pairs_cannot_saturate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.relax.dpl import DFPattern, is_const, is_op, rewrite_call, wildcard

from harness.compile.layout import bound_constant, rewrite_functions


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


_INT16_MAX = 32767


def pairs_cannot_saturate(weights: np.ndarray) -> bool:
    """Whether 8-bit dot-product instructions that sum pairs of products in int16 (AVX2/AVX-512
    `vpmaddubsw`) compute a convolution with these int8 weights (input channels last) exactly for every
    uint8 input: no two adjacent input-channel weights reach 255·(|w₀|+|w₁|) > 32767 with one sign."""
    if weights.shape[-1] % 4:
        return False
    pairs = weights.astype(np.int32).reshape(-1, 2)
    positive = np.clip(pairs, 0, None).sum(axis=-1).max()
    negative = np.clip(-pairs, 0, None).sum(axis=-1).max()
    return 255 * positive <= _INT16_MAX and 255 * negative <= _INT16_MAX + 1


def _packed_conv2d_nhwc(data: te.Tensor, weight: te.Tensor, strides: list[int], padding: list[int],
                        dilation: list[int]) -> te.Tensor:
    """uint8 NHWC × int8 weights packed [KH, KW, O/L, I/4, L, 4] → int32 NHWC, zero-padded."""
    kh, kw, o_blocks, _, lanes, _ = weight.shape
    top, left, bottom, right = padding
    if any(padding):
        data = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], pad_value=0)
    n, h, w, c = data.shape
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, c), "rc")
    return te.compute(
        (n, out_h, out_w, o_blocks * lanes),
        lambda b, y, x, o: te.sum(
            data[b, y * sh + ry * dh, x * sw + rx * dw, rc].astype("int32")
            * weight[ry, rx, o // lanes, rc // 4, o % lanes, rc % 4].astype("int32"), axis=[ry, rx, rc]),
        name="conv2d_nhwc_packed")


def pack_weights(hwoi: np.ndarray, lanes: int) -> np.ndarray:
    """HWOI int8 weights as [KH, KW, O/lanes, I/4, lanes, 4]: each lanes×4 tile contiguous."""
    kh, kw, o, i = hwoi.shape
    return np.ascontiguousarray(hwoi.reshape(kh, kw, o // lanes, lanes, i // 4, 4).transpose(0, 1, 2, 4, 3, 5))


@relax.expr_functor.mutator
class _DotProductLayout(relax.PyExprMutator):
    """Integer NHWC convolutions of uint8 activations become convolutions over packed weights
    (`pack_weights`): all of them if `exact` (the target's dot-product instruction cannot saturate), else
    those whose weights `pairs_cannot_saturate`."""

    def __init__(self, mod: tvm.IRModule, exact: bool) -> None:
        super().__init__(mod)
        self.exact = exact
        self.converted = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor naming)
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        attrs, (data, weight) = call.attrs, call.args
        if (str(attrs.out_dtype), int(attrs.groups), str(attrs.data_layout), str(attrs.kernel_layout),
                str(data.ty.dtype)) != ("int32", 1, "NHWC", "HWIO", "uint8"):
            return call
        weight = bound_constant(self, weight)
        if weight is None or str(weight.value.dtype) != "int8":
            return call
        hwoi = np.ascontiguousarray(weight.value.numpy().transpose(0, 1, 3, 2))
        lanes = 16 if hwoi.shape[2] % 16 == 0 else 8
        if hwoi.shape[2] % lanes or hwoi.shape[3] % 4 or not (self.exact or pairs_cannot_saturate(hwoi)):
            return call
        self.converted += 1
        return self.builder_.call_te(
            _packed_conv2d_nhwc, data, relax.const(pack_weights(hwoi, lanes)), [int(v) for v in attrs.strides],
            [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation], primfunc_name_hint="conv2d_packed")


def dot_product_layout(mod: tvm.IRModule, exact: bool = False) -> tuple[tvm.IRModule, int]:
    """`mod` (integer convolutions in NHWC) with packed weights where 8-bit dot-product instructions compute
    the convolution exactly (harness.compile.intrinsics): every one if `exact` (instructions that cannot
    saturate, e.g. VNNI's), else those whose weights `pairs_cannot_saturate`; returns the module and how many
    it converted."""
    mutator = _DotProductLayout(mod, exact)
    return rewrite_functions(mutator, mod), mutator.converted
