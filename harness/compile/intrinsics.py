"""8-bit dot-product tensor intrinsics for integer convolutions on x86 and Arm, and the MetaSchedule design
space that tiles integer kernels onto them.

An integer convolution in NHWC whose weights are packed in tiles (`[KH, KW, O/L, I/4, L, 4]`, see
harness.compile.packing.dot_product_layout) is, per output pixel, a matrix product over contiguous input
channels. MetaSchedule's `MultiLevelTilingWithIntrin` tiles it so that its innermost block is
`C[lanes] += Σ_k<4 A[k] · B[lanes, k]` (8-bit activations × int8 weights, int32 sums), whose weight operand
is one contiguous tile, and `RewriteTensorize` replaces that block with:

* `x86-64-v3` (AVX2): `vpmaddubsw` (pairs of u8·i8 products summed in int16, **saturating**), then
  `vpmaddwd` with ones (pairs of int16 into int32): 32 multiply-adds in two instructions, 8 lanes. TVM
  ships no 256-bit form.
* `x86-64-v4`: the 512-bit form of the same, 16 lanes, with the same int16 saturation.
* `x86-64-v4` with VNNI: `vpdpbusd`, 16 lanes, exact.
* On both `x86-64-v4` levels, convolutions whose output channels are a multiple of 8 but not of 16 (packed in
  8-lane tiles: v2's 24-channel layers, pruned models) use the 256-bit forms (`vpdpbusd` on ymm, resp. the
  AVX2 pair): no 16-lane tile fits them, and untensorized they ran at a fifth of ONNX Runtime's speed.
* aarch64 with the dot-product extension (Cortex-A76 and later, e.g. `rpi5`): `sdot`, 4 lanes, exact.
* aarch64 without it (NEON, e.g. `rpi4`'s Cortex-A72): `smull` (int8 products in int16), `saddlp` and
  `addp` (pair sums in int32), 4 lanes, exact.

The Arm instructions multiply int8 by int8, so there the activations are shifted to int8 (x − 128) before
the convolution and 128·Σw is added back after it (harness.compile.packing.dot_product_layout).
(The 512-bit x86 ones are TVM's `dot_16x4_avx512`/`dot_16x4_vnni`, the Arm ones its `dot_4x4_i8i8s32_sdot`/
`_neon`, registered here under harness names: TVM's own Arm module takes seconds to import.)

With an exact instruction every integer convolution with a multiple of 4 input channels is packed. On x86
without VNNI, only those whose weights rule the int16 saturation out for every uint8 input are
(harness.compile.packing.pairs_cannot_saturate): a model quantized with 7-bit weights (`reduce_range: true`,
as ONNX Runtime recommends for CPUs without VNNI) qualifies in every layer, one with full-range int8 weights
in none. The others keep the generic integer kernels: the harness never changes a model's results for speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import TensorIntrin
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T
from tvm.target import codegen
from tvm.tirx import ForKind

from harness.compile.tvm_intrinsics import load_tensor_intrinsics

AVX2_DOT_8x4 = "harness_dot_8x4_avx2"
AVX512_DOT_16x4 = "harness_dot_16x4_avx512"
VNNI_DOT_16x4 = "harness_dot_16x4_vnni"
VNNI_DOT_8x4 = "harness_dot_8x4_vnni"
ARM_SDOT_4x4 = "harness_dot_4x4_sdot"
ARM_NEON_4x4 = "harness_dot_4x4_neon"


@dataclass(frozen=True, slots=True)
class DotProduct:
    """How a target computes 8-bit dot products."""

    intrinsic: str
    exact: bool  # for every int8 weight (int32 sums); else int16 pair sums that may saturate
    signed: bool  # int8 × int8: uint8 activations are shifted to int8 first
    narrow: str | None = None  # for weights packed in 8-lane tiles, where `intrinsic` computes 16 lanes


def _dot_desc(lanes: int, activations: str = "uint8") -> tvm.tirx.PrimFunc:
    """`C[lanes] += Σ_k<4 A[k] · B[lanes, k]`, `activations` × int8 → int32: what the intrinsics compute."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), activations, offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _pmaddubs(lanes: int, pmaddubs: str, pmaddwd: str) -> tvm.tirx.PrimFunc:
    """`vpmaddubsw` (u8·i8 pairs summed in int16, saturating) then `vpmaddwd` with ones, `lanes` int32 lanes."""

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8 = T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"uint8x{4 * lanes}")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(pmaddubs), a_u8,
                                            B.vload([0, 0], dtype=f"int8x{4 * lanes}"), dtype=f"int16x{2 * lanes}")
            C[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(pmaddwd), pairs, T.broadcast(T.int16(1), 2 * lanes),
                dtype=f"int32x{lanes}")

    return impl


def _accumulating_dot(lanes: int, activations: str, intrinsic: str) -> tvm.tirx.PrimFunc:
    """One instruction that adds four 8-bit products per int32 lane to C: VNNI `vpdpbusd`, Arm `sdot`."""

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), activations, offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], f"{activations}x4"), dtype="int32")
            # (LLVM 17+ declares vpdpbusd's operands <64 x i8>; TVM's own VNNI intrinsic still passes <16 x i32>)
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(intrinsic), C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"int8x{4 * lanes}"),
                B.vload([0, 0], dtype=f"int8x{4 * lanes}"), dtype=f"int32x{lanes}")

    return impl


@T.prim_func(s_tir=True)
def _dot_4x4_neon(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((4, 4), "int8", offset_factor=1),
                  C: T.Buffer((4,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 2), dtype="int8x8")
        b = B.vload([0, 0], dtype="int8x16")
        low = T.call_llvm_pure_intrin(  # rows 0 and 1: four pair sums of int8 products (int16) in int32
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
            T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), a,
                                    T.vectorlow(b, dtype="int8x8"), dtype="int16x8"), dtype="int32x4")
        high = T.call_llvm_pure_intrin(  # rows 2 and 3
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
            T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), a,
                                    T.vectorhigh(b, dtype="int8x8"), dtype="int16x8"), dtype="int32x4")
        C[T.ramp(T.int32(0), 1, 4)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"), low, high, dtype="int32x4")


_INTRINSICS = (AVX2_DOT_8x4, AVX512_DOT_16x4, VNNI_DOT_16x4, VNNI_DOT_8x4, ARM_SDOT_4x4, ARM_NEON_4x4)


def register() -> None:
    """Register the intrinsics (once per process). Tuning records of tensorized kernels name their
    intrinsic, so this runs before a database is read. (TVM's own x86 ones are not used: importing
    `tvm.s_tir.tensor_intrin` parses every target's ~250 intrinsics, ~100 s on a 2-core host.)"""
    if all(TensorIntrin.get(name, allow_missing=True) is not None for name in _INTRINSICS):
        return
    desc_8, desc_16 = _dot_desc(8), _dot_desc(16)
    TensorIntrin.register(AVX2_DOT_8x4, desc_8, _pmaddubs(8, "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"))
    TensorIntrin.register(AVX512_DOT_16x4, desc_16, _pmaddubs(16, "llvm.x86.avx512.pmaddubs.w.512",
                                                                "llvm.x86.avx512.pmaddw.d.512"))
    TensorIntrin.register(VNNI_DOT_16x4, desc_16, _accumulating_dot(16, "uint8", "llvm.x86.avx512.vpdpbusd.512"))
    TensorIntrin.register(VNNI_DOT_8x4, desc_8, _accumulating_dot(8, "uint8", "llvm.x86.avx512.vpdpbusd.256"))
    desc_signed = _dot_desc(4, "int8")
    TensorIntrin.register(ARM_SDOT_4x4, desc_signed, _accumulating_dot(4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8"))
    TensorIntrin.register(ARM_NEON_4x4, desc_signed, _dot_4x4_neon)


def _aarch64(target: tvm.target.Target) -> bool:
    return (str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()).startswith("aarch64")


def dot_product(target: tvm.target.Target) -> DotProduct | None:
    """How `target`'s CPU computes 8-bit dot products (from its LLVM features), or None (not a CPU target, or
    x86 below AVX2, or aarch64 without NEON)."""
    if target.kind.name != "llvm":
        return None

    def has(feature: str) -> bool:
        return bool(codegen.target_has_features([feature], target))

    if _aarch64(target):
        if has("dotprod"):
            return DotProduct(ARM_SDOT_4x4, exact=True, signed=True)
        return DotProduct(ARM_NEON_4x4, exact=True, signed=True) if has("neon") else None
    if has("avx512vnni"):
        return DotProduct(VNNI_DOT_16x4, exact=True, signed=False, narrow=VNNI_DOT_8x4)
    if has("avx512bw"):
        return DotProduct(AVX512_DOT_16x4, exact=False, signed=False, narrow=AVX2_DOT_8x4)
    return DotProduct(AVX2_DOT_8x4, exact=False, signed=False) if has("avx2") else None


def _holds_vector_code(loop: tvm.tirx.For) -> bool:
    text = loop.body.script()
    return "call_llvm_pure_intrin" in text or "T.vectorized" in text


@derived_object
class UnvectorizeTensorized(ms.postproc.PyPostproc):
    """Turns vectorized loops around a tensorized block (or around an already vectorized init loop) into
    unrolled ones: TVM's vectorizer rejects vectors nested in vectors, which `RewriteParallelVectorizeUnroll`
    produces for the loops outside an auto-tensorized tile."""

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        pass

    def apply(self, sch: tvm.s_tir.Schedule) -> bool:
        if not any(inst.kind.name == "Tensorize" for inst in sch.trace.insts):
            return True  # (most candidates: no need to look at their loops)
        def walk(block: tvm.s_tir.schedule.SBlockRV) -> None:
            for child in sch.get_child_blocks(block):
                for loop in sch.get_loops(child):
                    stmt = sch.get(loop)
                    if stmt.kind == ForKind.VECTORIZED and _holds_vector_code(stmt):
                        sch.unroll(loop)
                walk(child)

        for gvar in sch.mod.functions:
            sch.work_on(gvar.name_hint)
            walk(sch.get_sblock("root"))
        return True

    def clone(self) -> UnvectorizeTensorized:
        return UnvectorizeTensorized()


PACKED_RANK = 6  # packed weights: [KH, KW, O/L, I/4, L, 4] (harness.compile.packing)


@derived_object
class RewriteLayoutUnlessPacked(ms.postproc.PyPostproc):
    """MetaSchedule's `RewriteLayout` (weights reordered to the order a schedule reads them, once, at build time),
    except for kernels whose weights are already packed for a dot-product intrinsic (a 6-D weight,
    harness.compile.packing). Those are read tile by tile as they lie; and for packed 3×3 convolutions TVM
    cannot undo the rewritten layout when it lists a candidate's arguments (`RemoveWeightLayoutRewriteBlock`:
    `Check failed: (ind.as<PrimVar>())`), so every batch of their candidates failed and they could not be
    tuned at all."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrite, self.packed = ms.postproc.RewriteLayout(), None

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        # (a property of the task's workload, not of each candidate: looked at once)
        self.packed = any(len(arg.shape) == PACKED_RANK for func in context.mod.functions.values()
                          for arg in ms.arg_info.ArgInfo.from_prim_func(func))
        self.rewrite._initialize_with_tune_context(context)  # noqa: SLF001 (the protocol's own method)

    def apply(self, sch: tvm.s_tir.Schedule) -> bool:
        if self.packed is None:
            raise RuntimeError("RewriteLayoutUnlessPacked applied before its tune context was set")
        return True if self.packed else self.rewrite.apply(sch)

    def clone(self) -> RewriteLayoutUnlessPacked:
        return RewriteLayoutUnlessPacked()


def design_space(target: tvm.target.Target) -> ms.space_generator.SpaceGenerator | str:
    """MetaSchedule's CPU design space (its x86 or Arm rules), with integer kernels also tiled onto `target`'s
    8-bit dot-product intrinsic, as MetaSchedule's own VNNI and Arm spaces have them; the default space
    elsewhere."""
    load_tensor_intrinsics(target)  # (before any TuneContext: it imports them all)
    dot = dot_product(target)
    if dot is None:
        return "post-order-apply"
    register()
    # (MetaSchedule's DefaultARM rules use smaller tiles, vectors, unroll steps and jobs per core than its x86 ones)
    jobs, innermost, unroll = (8, 32, [0, 8, 32, 256]) if _aarch64(target) else (16, 64, [0, 16, 64, 512])
    rule, post = ms.schedule_rule, ms.postproc
    reuse = rule.ReuseType(req="may", levels=[1, 2], scope="global")
    # (a kernel the wide intrinsic tiles is no longer the block the narrow one looks for: each kernel gets one)
    tile_onto = [rule.MultiLevelTilingWithIntrin(intrinsic, structure="SSRSRS", max_innermost_factor=innermost,
                                                 reuse_write=reuse)
                 for intrinsic in (dot.intrinsic, dot.narrow) if intrinsic is not None]
    rules = [rule.ApplyCustomRule(), rule.InlineConstantScalars(),
             rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                             disallow_if_then_else=True, require_injective=True, require_ordered=True,
                             disallow_op=["tirx.exp"]),
             rule.AddRFactor(max_jobs_per_core=jobs, max_innermost_factor=innermost),
             *tile_onto,
             rule.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=innermost, reuse_write=reuse),
             rule.ParallelizeVectorizeUnroll(max_jobs_per_core=jobs, max_vectorize_extent=innermost,
                                             unroll_max_steps=unroll, unroll_explicit=True),
             rule.RandomComputeLocation()]
    postprocs = [post.DisallowDynamicLoop(), post.RewriteParallelVectorizeUnroll(), post.RewriteReductionBlock(),
                 post.RewriteTensorize(vectorize_init_loop=True), UnvectorizeTensorized(), RewriteLayoutUnlessPacked()]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs="llvm")
