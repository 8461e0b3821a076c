"""8-bit dot-product intrinsics: which weights may use them, and that tiled kernels are exact and emit the
instructions (the built code's assembly) for each x86 level."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from harness.compile import kernels
from harness.compile.integer import dot_product_layout, pack_weights, pairs_cannot_saturate
from harness.compile.intrinsics import design_space, exact_dot_products
from harness.compile.target import VNNI, X86_64_V3, X86_64_V4, host_cpu_flags

V3 = {"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2}
V4 = {"kind": "llvm", "mcpu": "x86-64-v4", "num-cores": 2}
V4_VNNI = V4 | {"mattr": ["+avx512vnni"]}


def test_pairs_cannot_saturate() -> None:
    seven_bit = np.random.default_rng(0).integers(-64, 65, (1, 1, 16, 32)).astype(np.int8)
    assert pairs_cannot_saturate(seven_bit)  # 255·(64+64) = 32640 fits int16
    w = np.zeros((1, 1, 8, 8), np.int8)
    w[0, 0, 3, 4:6] = [127, 2]  # 255·129 > 32767
    assert not pairs_cannot_saturate(w)
    w[0, 0, 3, 4:6] = [127, -128]  # opposite signs: no pair sum beyond one product
    assert pairs_cannot_saturate(w)
    w[0, 0, 3, 4:6] = [-64, -65]  # 255·129 below −32768
    assert not pairs_cannot_saturate(w)
    assert not pairs_cannot_saturate(np.zeros((1, 1, 8, 6), np.int8))  # input channels not a multiple of 4


def _integer_conv(hwio: np.ndarray) -> tvm.IRModule:
    """An integer NHWC convolution (uint8 × int8 → int32) as harness.compile.integer writes it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, hwio.shape[2]), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(hwio), padding=[hwio.shape[0] // 2] * 4,
                                           data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _tensorized_kernel(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The conv kernel of `mod` scheduled by the first design space of the dot-product search that tensorizes
    (postprocessed; a space that computes the padding inline does not)."""
    (task,) = [t for t in kernels.extract_tasks([mod], target) if "conv2d" in t.task_name]
    context = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=design_space(target),
                             task_name=task.task_name, rand_state=0)
    for sch in context.generate_design_space():
        if all(p.apply(sch) for p in context.space_generator.postprocs) and "Tensorize" in [
                inst.kind.name for inst in sch.trace.insts]:
            return sch.mod
    raise AssertionError(f"no design space of {task.task_name} tensorizes for {target}")


def test_only_weights_that_cannot_saturate_are_packed_unless_the_instruction_is_exact() -> None:
    rng = np.random.default_rng(0)
    seven_bit = rng.integers(-64, 65, (1, 1, 16, 32)).astype(np.int8)
    full_range = rng.integers(-127, 128, (1, 1, 16, 32)).astype(np.int8)
    assert dot_product_layout(_integer_conv(seven_bit))[1] == 1
    assert dot_product_layout(_integer_conv(full_range))[1] == 0
    assert dot_product_layout(_integer_conv(full_range), exact=True)[1] == 1
    assert [exact_dot_products(tvm.target.Target(t)) for t in (V3, V4, V4_VNNI)] == [False, False, True]


def _reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The zero-padded NHWC convolution of uint8 `x` with HWIO `w`, in int64."""
    k = w.shape[0]
    pad = k // 2
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return sum(np.einsum("hwc,co->hwo", xp[0, i:i + 8, j:j + 8], w[i, j].astype(np.int64))
               for i in range(k) for j in range(k))


def _check_kernel(target: dict, w: np.ndarray, instruction: str, register: str, *, run: bool,
                  exact: bool = False) -> None:
    """Build the tensorized kernel of the convolution with HWIO weights `w` for `target`; check its assembly
    uses `instruction` on `register`s and, if `run`, that its output equals the reference on inputs full of
    255s."""
    rng = np.random.default_rng(w.shape[0])
    x = rng.integers(0, 256, (1, 8, 8, w.shape[2])).astype(np.uint8)
    x[rng.random(x.shape) < 0.3] = 255  # many full-scale inputs: a saturating pair would show
    mod, converted = dot_product_layout(_integer_conv(w), exact=exact)
    assert converted == 1
    tgt = tvm.target.Target(target)
    built = tvm.compile(_tensorized_kernel(mod, tgt), target=tgt)
    asm = built.mod.inspect_source("asm").splitlines()
    assert any(instruction in line and register in line for line in asm)
    if run:
        out = tvm.runtime.tensor(np.zeros((1, 8, 8, w.shape[3]), np.int32))
        built(tvm.runtime.tensor(x), tvm.runtime.tensor(pack_weights(w.transpose(0, 1, 3, 2), 16)), out)
        np.testing.assert_array_equal(out.numpy()[0], _reference(x, w))


@pytest.mark.parametrize("kernel", [1, 3], ids=["1x1", "3x3"])
def test_avx2_dot_product_kernel_is_exact(kernel: int) -> None:
    w = np.random.default_rng(kernel).integers(-64, 65, (kernel, kernel, 16, 32)).astype(np.int8)  # HWIO, 7-bit
    _check_kernel(V3, w, "vpmaddubsw", "ymm", run=True)


_HOST = host_cpu_flags()


@pytest.mark.parametrize("kernel", [1, 3], ids=["1x1", "3x3"])
@pytest.mark.parametrize(("target", "instruction", "needs", "full_range"),
                         [(V4, "vpmaddubsw", X86_64_V4, False), (V4_VNNI, "vpdpbusd", X86_64_V4 | {VNNI}, True)],
                         ids=["x86-64-v4", "x86-64-v4-vnni"])
def test_avx512_dot_product_kernels(target: dict, instruction: str, needs: frozenset, full_range: bool,
                                    kernel: int) -> None:
    """Built with the 512-bit instruction on zmm registers on every host; run and checked exact where the host
    has the instructions. VNNI packs full-range weights, here with input-channel pairs that would saturate
    int16 sums."""
    rng = np.random.default_rng(kernel)
    w = (rng.integers(-128, 128, (kernel, kernel, 16, 32)) if full_range
         else rng.integers(-64, 65, (kernel, kernel, 16, 32))).astype(np.int8)
    if full_range:
        w[:, :, 0:2], w[:, :, 2:4] = 127, -128  # 255·254 > 32767 and 255·(−256) < −32768
    _check_kernel(target, w, instruction, "zmm", run=X86_64_V3 | needs <= _HOST, exact=full_range)
