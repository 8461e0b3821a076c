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
from harness.compile.intrinsics import design_space

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
    """The conv kernel of `mod` scheduled by the first design space of the dot-product search (postprocessed)."""
    (task,) = [t for t in kernels.extract_tasks([mod], target) if "conv2d" in t.task_name]
    context = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=design_space(target),
                             task_name=task.task_name, rand_state=0)
    sch = context.generate_design_space()[0]
    assert all(p.apply(sch) for p in context.space_generator.postprocs)
    assert "Tensorize" in [inst.kind.name for inst in sch.trace.insts]
    return sch.mod


def test_only_weights_that_cannot_saturate_are_packed() -> None:
    rng = np.random.default_rng(0)
    _, converted = dot_product_layout(_integer_conv(rng.integers(-64, 65, (1, 1, 16, 32)).astype(np.int8)))
    assert converted == 1
    _, converted = dot_product_layout(_integer_conv(rng.integers(-127, 128, (1, 1, 16, 32)).astype(np.int8)))
    assert converted == 0


@pytest.mark.parametrize("kernel", [1, 3], ids=["1x1", "3x3"])
def test_avx2_dot_product_kernel_is_exact(kernel: int) -> None:
    rng = np.random.default_rng(kernel)
    w = rng.integers(-64, 65, (kernel, kernel, 16, 32)).astype(np.int8)  # HWIO, 7-bit
    x = rng.integers(0, 256, (1, 8, 8, 16)).astype(np.uint8)
    x[rng.random(x.shape) < 0.3] = 255  # many full-scale inputs: a saturating pair would show
    mod, converted = dot_product_layout(_integer_conv(w))
    assert converted == 1
    target = tvm.target.Target(V3)
    built = tvm.compile(_tensorized_kernel(mod, target), target=target)
    asm = built.mod.inspect_source("asm")
    assert "vpmaddubsw" in asm and "vpmaddwd" in asm
    out = tvm.runtime.tensor(np.zeros((1, 8, 8, 32), np.int32))
    built(tvm.runtime.tensor(x), tvm.runtime.tensor(pack_weights(w.transpose(0, 1, 3, 2), 16)), out)
    pad = kernel // 2
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ref = sum(np.einsum("hwc,co->hwo", xp[0, i:i + 8, j:j + 8], w[i, j].astype(np.int64))
              for i in range(kernel) for j in range(kernel))
    np.testing.assert_array_equal(out.numpy()[0], ref)


@pytest.mark.parametrize(("target", "instruction"), [(V4, "vpmaddubsw"), (V4_VNNI, "vpdpbusd")],
                         ids=["x86-64-v4", "x86-64-v4-vnni"])
def test_avx512_dot_product_kernels_build(target: dict, instruction: str) -> None:
    """Built (not run: this host may lack AVX-512) with the 512-bit instruction on zmm registers."""
    w = np.random.default_rng(0).integers(-64, 65, (1, 1, 16, 32)).astype(np.int8)
    tgt = tvm.target.Target(target)
    mod, _ = dot_product_layout(_integer_conv(w))
    asm = tvm.compile(_tensorized_kernel(mod, tgt), target=tgt).mod.inspect_source("asm")
    assert any(instruction in line and "zmm" in line for line in asm.splitlines())
