"""Layout and type ops of constants are folded in NumPy, leaving the kernels (and their tuning workloads) as
Relax's own FoldConstant would, without compiling a kernel per constant."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from tvm import relax

import harness.compile as compile_pkg
from harness.compile import compile_onnx, kernels, prepare_module
from harness.compile.fold import fold_layout_constants
from harness.compile.target import build_target
from harness.device import ConvLayout, load_device
from harness.export import OnnxModel, export_onnx
from harness.measure import LocalExecutor
from harness.models import build_model

FOLDED = {"relax.permute_dims", "relax.reshape", "relax.astype", "relax.isnan", "relax.where"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", width=0.25, num_classes=10).eval()  # ReLU6: Clip bounds to fold
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", resolution=32, batch=1)


def _constant_calls(mod: tvm.IRModule) -> list[str]:
    """The folded kinds of op that are still applied to constants (or to variables bound to constants)."""
    bound: set[relax.Var] = set()
    found: list[str] = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.VarBinding) and isinstance(expr.value, tvm.ir.expr.Constant):
            bound.add(expr.var)
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in FOLDED:
            tensors = [a for a in expr.args if not isinstance(a, relax.ShapeExpr)]
            if all(isinstance(a, tvm.ir.expr.Constant) or a in bound for a in tensors):
                found.append(expr.op.name)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            for block in func.body.blocks:
                for binding in block.bindings:
                    visit(binding)
                    relax.analysis.post_order_visit(binding.value, visit)
    return found


def test_no_layout_op_of_a_constant_is_left(exported: OnnxModel, monkeypatch: pytest.MonkeyPatch) -> None:
    folded = prepare_module(exported, layout=ConvLayout.NHWC)
    assert _constant_calls(folded) == []
    monkeypatch.setattr(compile_pkg, "fold_layout_constants", lambda mod: mod)
    unfolded = prepare_module(exported, layout=ConvLayout.NHWC)
    assert {"relax.permute_dims", "relax.reshape", "relax.isnan"} <= set(_constant_calls(unfolded))


@pytest.mark.slow  # ~40 s: compiles the model twice, once with a kernel per constant
def test_folding_keeps_every_kernel_and_every_output(exported: OnnxModel, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    profile = load_device("x86")
    target = build_target(profile)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)

    def workloads_and_output(name: str) -> tuple[set[int], np.ndarray]:
        tasks = kernels.extract_tasks([prepare_module(exported, layout=ConvLayout.NHWC)], target)
        artifact = compile_onnx(exported, replace(profile, layout=ConvLayout.NHWC), tmp_path / f"{name}.so")
        return ({tvm_ffi.structural_hash(t.dispatched[0]) for t in tasks},
                LocalExecutor(artifact.path, threads=1).run(x))

    folded = workloads_and_output("folded")
    monkeypatch.setattr(compile_pkg, "fold_layout_constants", lambda mod: mod)
    unfolded = workloads_and_output("unfolded")
    assert folded[0] == unfolded[0]  # a tuning database finds the same workloads
    np.testing.assert_array_equal(folded[1], unfolded[1])


def test_scalar_constants_stay_scalars() -> None:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            nan = bb.emit(relax.op.isnan(relax.const(6.0, "float32")))
            bound = bb.emit(relax.op.where(nan, relax.const(np.inf, "float32"), relax.const(6.0, "float32")))
            out = bb.emit_output(relax.op.minimum(x, bound))
        bb.emit_func_output(out)
    bindings = {b.var: b.value for b in fold_layout_constants(bb.get())["main"].body.blocks[0].bindings}
    (minimum,) = [v for v in bindings.values() if isinstance(v, relax.Call)]
    bound_value = bindings.get(minimum.args[1], minimum.args[1])
    assert isinstance(bound_value, tvm.ir.expr.Constant)
    assert bound_value.value.numpy().shape == () and float(bound_value.value.numpy()) == 6.0
