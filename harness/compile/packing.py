"""The weight layout of 8-bit dot-product instructions (harness.compile.intrinsics) for integer convolutions.

`dot_product_layout` packs the weights of the NHWC integer convolutions that those instructions compute
exactly into tiles (`[KH, KW, O/L, I/4, L, 4]`: L = 16 lanes, or 8 where O is not a multiple of 16; a TE
compute that MetaSchedule tiles onto the intrinsic): all of them where the target's instruction is exact
(VNNI `vpdpbusd`, Arm `sdot`, NEON `smull`), else those whose weights `pairs_cannot_saturate`. Input channels
short of a multiple of 4 (a network's RGB stem) get zero channels, in the activations and the weights. Where the
instruction multiplies int8 by int8 (Arm), the uint8 activations are shifted to int8 first and 128·Σw is added
back.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi

from harness.compile.layout import bound_constant, rewrite_functions

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
                        dilation: list[int], pad_value: int = 0) -> te.Tensor:
    """8-bit NHWC × int8 weights packed [KH, KW, O/L, I/4, L, 4] → int32 NHWC, padded with `pad_value`."""
    kh, kw, o_blocks, _, lanes, _ = weight.shape
    top, left, bottom, right = padding
    if any(padding):
        data = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], pad_value=pad_value)
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
    those whose weights `pairs_cannot_saturate`; input channels padded with zeros to a multiple of 4. If
    `signed`, over int8 activations x − 128, with 128·Σw added back."""

    def __init__(self, mod: tvm.IRModule, exact: bool, signed: bool) -> None:
        super().__init__(mod)
        self.exact, self.signed = exact, signed
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
        missing = -hwoi.shape[3] % 4  # input channels short of a multiple of 4 (an RGB stem): zeros, both sides
        hwoi = np.pad(hwoi, [(0, 0), (0, 0), (0, 0), (0, missing)])
        lanes = 16 if hwoi.shape[2] % 16 == 0 else 8
        if hwoi.shape[2] % lanes or not (self.exact or pairs_cannot_saturate(hwoi)):
            return call
        self.converted += 1
        if missing:
            data = self.builder_.emit(relax.op.nn.pad(data, [0, 0, 0, 0, 0, 0, 0, missing]))
        if self.signed:  # x − 128 in int8; its padding −128 (x = 0)
            data = self.builder_.emit(relax.op.astype(
                relax.op.subtract(relax.op.astype(data, "int16"), relax.const(_SHIFT, "int16")), "int8"))
        conv = self.builder_.call_te(
            _packed_conv2d_nhwc, data, relax.const(pack_weights(hwoi, lanes)), [int(v) for v in attrs.strides],
            [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation], -_SHIFT if self.signed else 0,
            primfunc_name_hint="conv2d_packed")
        if not self.signed:
            return conv
        shifted_out = _SHIFT * hwoi.astype(np.int64).sum(axis=(0, 1, 3))  # Σ(x − 128)·w = Σx·w − 128·Σw
        return relax.op.add(self.builder_.emit(conv), relax.const(shifted_out.astype(np.int32)))


_SHIFT = 128  # uint8 → int8


def dot_product_layout(mod: tvm.IRModule, exact: bool = False, signed: bool = False) -> tuple[tvm.IRModule, int]:
    """`mod` (integer convolutions in NHWC) with packed weights where 8-bit dot-product instructions compute
    the convolution exactly (harness.compile.intrinsics): every one if `exact` (instructions that cannot
    saturate, e.g. VNNI's or Arm's), else those whose weights `pairs_cannot_saturate`; `signed`: the
    instruction takes int8 activations (Arm), so uint8 ones are shifted. Returns the module and how many
    convolutions it converted."""
    mutator = _DotProductLayout(mod, exact, signed)
    return rewrite_functions(mutator, mod), mutator.converted
