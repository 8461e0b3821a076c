"""8-bit dot-product intrinsics: which weights may use them, and that tiled kernels are exact and emit the
instructions (the built code's assembly) for each x86 level and for aarch64 (with and without `dotprod`)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import postprocessed_spaces, start_emulated_boards, tensorized_schedule
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from harness.compile import kernels
from harness.compile.intrinsics import (
    ARM_NEON_4x4,
    ARM_SDOT_4x4,
    AVX2_DOT_8x4,
    DotProduct,
    VNNI_DOT_8x4,
    dot_product,
)
from harness.compile.packing import dot_product_layout, pack_weights, pairs_cannot_saturate
from harness.compile.target import VNNI, X86_64_V3, X86_64_V4, host_cpu_flags
from harness.device import load_device

V3 = {"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2}
V4 = {"kind": "llvm", "mcpu": "x86-64-v4", "num-cores": 2}
V4_VNNI = V4 | {"mattr": ["+avx512vnni"]}
RPI4, RPI5 = (load_device(name).target for name in ("rpi4", "rpi5"))


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
    """An integer NHWC convolution (uint8 × int8 → int32) as harness.compile.integer writes it; with float32
    weights, a float32 one."""
    bb = relax.BlockBuilder()
    floating = hwio.dtype == np.float32
    x = relax.Var("x", relax.TensorType((1, 8, 8, hwio.shape[2]), "float32" if floating else "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(hwio), padding=[hwio.shape[0] // 2] * 4,
                                           data_layout="NHWC", kernel_layout="HWIO",
                                           out_dtype="float32" if floating else "int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _tensorized_kernel(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The conv kernel of `mod`, scheduled onto the target's dot-product intrinsic."""
    (task,) = [t for t in kernels.extract_tasks([mod], target) if "conv2d" in t.task_name]
    return tensorized_schedule(task.dispatched[0], target).mod


def test_only_weights_that_cannot_saturate_are_packed_unless_the_instruction_is_exact() -> None:
    rng = np.random.default_rng(0)
    seven_bit = rng.integers(-64, 65, (1, 1, 16, 32)).astype(np.int8)
    full_range = rng.integers(-127, 128, (1, 1, 16, 32)).astype(np.int8)
    assert dot_product_layout(_integer_conv(seven_bit))[1] == 1
    assert dot_product_layout(_integer_conv(full_range))[1] == 0
    assert dot_product_layout(_integer_conv(full_range), exact=True)[1] == 1
    assert [dot_product(tvm.target.Target(t)).exact for t in (V3, V4, V4_VNNI)] == [False, False, True]
    assert [dot_product(tvm.target.Target(t)).narrow for t in (V3, V4, V4_VNNI)] == [None, AVX2_DOT_8x4,
                                                                                     VNNI_DOT_8x4]
    assert dot_product(tvm.target.Target(RPI5)) == DotProduct(ARM_SDOT_4x4, exact=True, signed=True)
    assert dot_product(tvm.target.Target(RPI4)) == DotProduct(ARM_NEON_4x4, exact=True, signed=True)
    assert dot_product(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})) is None  # below AVX2


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
    missing = -w.shape[2] % 4  # input channels padded to a multiple of 4
    mod, converted = dot_product_layout(_integer_conv(w), exact=exact)
    assert converted == 1
    tgt = tvm.target.Target(target)
    built = tvm.compile(_tensorized_kernel(mod, tgt), target=tgt)
    asm = built.mod.inspect_source("asm").splitlines()
    assert any(instruction in line and register in line for line in asm)
    if run:
        out = tvm.runtime.tensor(np.zeros((1, 8, 8, w.shape[3]), np.int32))
        lanes = 16 if w.shape[3] % 16 == 0 else 8  # as harness.compile.packing packs them
        padded = np.pad(w, [(0, 0), (0, 0), (0, missing), (0, 0)]).transpose(0, 1, 3, 2)
        built(tvm.runtime.tensor(np.pad(x, [(0, 0), (0, 0), (0, 0), (0, missing)])),
              tvm.runtime.tensor(pack_weights(padded, lanes)), out)
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
@pytest.mark.parametrize(("out_channels", "register"), [(32, "zmm"), (24, "ymm")], ids=["16-lane", "8-lane"])
def test_avx512_dot_product_kernels(target: dict, instruction: str, needs: frozenset, full_range: bool,
                                    out_channels: int, register: str, kernel: int) -> None:
    """Built with the 512-bit instruction on zmm registers on every host, or, where the output channels are
    not a multiple of 16 (8-lane tiles), with its 256-bit form on ymm registers; run and checked exact where
    the host has the instructions. VNNI packs full-range weights, here with input-channel pairs that would
    saturate int16 sums."""
    rng = np.random.default_rng(kernel)
    shape = (kernel, kernel, 16, out_channels)
    w = (rng.integers(-128, 128, shape) if full_range else rng.integers(-64, 65, shape)).astype(np.int8)
    if full_range:
        w[:, :, 0:2], w[:, :, 2:4] = 127, -128  # 255·254 > 32767 and 255·(−256) < −32768
    _check_kernel(target, w, instruction, register, run=X86_64_V3 | needs <= _HOST, exact=full_range)


@pytest.mark.parametrize(("target", "instruction", "register", "needs", "bits"),
                         [(V3, "vpmaddubsw", "ymm", frozenset(), 7),
                          (V4_VNNI, "vpdpbusd", "zmm", X86_64_V4 | {VNNI}, 8)],
                         ids=["x86-64-v3", "x86-64-v4-vnni"])
def test_an_rgb_stem_is_packed_and_tensorized(target: dict, instruction: str, register: str, needs: frozenset,
                                              bits: int) -> None:
    """A convolution of 3 input channels (a network's stem) gets a fourth, zero, input channel and weights:
    packed, tensorized, and exact where the host has the instruction."""
    top = 2 ** (bits - 1)
    w = np.random.default_rng(3).integers(-top, top, (3, 3, 3, 32)).astype(np.int8)
    _check_kernel(target, w, instruction, register, run=X86_64_V3 | needs <= _HOST, exact=bits == 8)


@pytest.mark.parametrize("signed", [False, True], ids=["uint8", "shifted-int8"])
def test_an_rgb_stem_computes_the_same_convolution(signed: bool) -> None:
    """The padded input channel changes nothing, also where activations are shifted to int8 (Arm: the pad
    channel becomes −128, its weights are 0)."""
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (3, 3, 3, 32)).astype(np.int8)
    x = rng.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    mod, converted = dot_product_layout(_integer_conv(w), exact=True, signed=signed)
    assert converted == 1
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy()[0], _reference(x, w))


@pytest.mark.parametrize("kernel", [1, 3], ids=["1x1", "3x3"])
def test_signed_activations_compute_the_same_convolution(kernel: int) -> None:
    """The Arm form (uint8 activations shifted to int8, 128·Σw added back, padding −128) built for this host:
    equal to the uint8 convolution for full-range weights, on borders and inputs of 0 and 255."""
    rng = np.random.default_rng(kernel)
    w = rng.integers(-128, 128, (kernel, kernel, 16, 32)).astype(np.int8)
    x = rng.integers(0, 256, (1, 8, 8, 16)).astype(np.uint8)
    x[rng.random(x.shape) < 0.2], x[rng.random(x.shape) < 0.2] = 255, 0
    mod, converted = dot_product_layout(_integer_conv(w), exact=True, signed=True)
    assert converted == 1 and "int8" in mod.script() and "astype" in mod.script()
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy()[0], _reference(x, w))


@pytest.mark.parametrize("kernel", [1, 3], ids=["1x1", "3x3"])
@pytest.mark.parametrize(("target", "instructions"), [(RPI5, ["sdot"]), (RPI4, ["smull", "saddlp", "addp"])],
                         ids=["rpi5-dotprod", "rpi4-neon"])
def test_arm_dot_product_kernels_emit_the_instructions(target: dict, instructions: list[str], kernel: int) -> None:
    """Cross-built for aarch64 with the instructions on NEON registers (run exact on an emulated board: the
    `rpi` tests)."""
    w = np.random.default_rng(kernel).integers(-128, 128, (kernel, kernel, 16, 32)).astype(np.int8)
    mod, _ = dot_product_layout(_integer_conv(w), exact=True, signed=True)
    tgt = tvm.target.Target(target)
    asm = tvm.compile(_tensorized_kernel(mod, tgt), target=tgt).mod.inspect_source("asm")
    for instruction in instructions:
        assert any(instruction in line.split("//")[0] and "v" in line for line in asm.splitlines()), instruction


@pytest.fixture(scope="module", params=["rpi4", "rpi5"])
def arm_board(request):  # noqa: ANN001, ANN201
    """An emulated board of each Arm profile (rpi5: Cortex-A76 with the dot product), stopped afterwards."""
    from harness import emulator

    (board,) = start_emulated_boards(request.param)
    yield load_device(request.param)
    emulator.stop(names={board.name})


@pytest.mark.rpi
@pytest.mark.parametrize("kernel", [1, 3], ids=["1x1", "3x3"])
def test_arm_dot_product_kernels_are_exact_on_the_board(arm_board, kernel: int, tmp_path) -> None:  # noqa: ANN001
    """The whole Arm form (shift to int8, tensorized `sdot`/`smull` kernel, 128·Σw added back) cross-built,
    run on an emulated board and equal to the uint8 reference, for full-range weights with the extremes."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.support import cc

    from harness.remote import RemoteExecutor, connect

    rng = np.random.default_rng(kernel)
    w = rng.integers(-128, 128, (kernel, kernel, 16, 32)).astype(np.int8)
    w[:, :, 0:4, 0], w[:, :, 4:8, 1] = 127, -128
    x = rng.integers(0, 256, (1, 8, 8, 16)).astype(np.uint8)
    x[rng.random(x.shape) < 0.3] = 255
    mod, _ = dot_product_layout(_integer_conv(w), exact=True, signed=True)
    target = tvm.target.Target(arm_board.target)
    db = ms.database.MemoryDatabase()
    for task in kernels.extract_tasks([mod], target):
        if "conv2d_packed" in task.task_name:
            sch = tensorized_schedule(task.dispatched[0], target)
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(task.dispatched[0]),
                                                             [1e-3], target))
    lib = tmp_path / "conv.so"
    kernels.compile_with_database(mod, target, db).export_library(
        str(lib), fcompile=cc.cross_compiler(arm_board.cross_compiler))
    out = RemoteExecutor(connect(arm_board), lib, threads=1).run(x)
    np.testing.assert_array_equal(out[0], _reference(x, w))


@pytest.mark.parametrize("window", [1, 3])
def test_packed_weights_keep_their_layout_and_other_weights_are_rewritten(window: int) -> None:
    """Packed kernels' candidates keep the packed weight layout (`RewriteLayoutUnlessPacked`): with it rewritten,
    TVM could not list a packed 3×3 candidate's arguments (`ind.as<PrimVar>()`), so none could be measured. The
    float convolution still gets its weights laid out for its schedule."""
    w = np.random.default_rng(0).integers(-64, 65, (window, window, 16, 32)).astype(np.int8)
    target = tvm.target.Target(V4_VNNI)
    packed, converted = dot_product_layout(_integer_conv(w))
    assert converted == 1
    for mod, rewritten in ((packed, False), (_integer_conv(w.astype(np.float32)), True)):
        (task,) = [t for t in kernels.extract_tasks([mod], target) if "conv2d" in t.task_name]
        spaces = list(postprocessed_spaces(task.dispatched[0], target))
        assert spaces
        assert any("layout_rewrite_preproc" in sch.mod.script() for sch in spaces) == rewritten
        for sch in spaces:
            assert ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
