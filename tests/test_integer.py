"""Integer int8 in TVM: QDQ convolutions rewritten into integer ones agree with ONNX Runtime on the QDQ model."""

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm_ffi
from conftest import TINY_RECIPE
from onnx import numpy_helper

from harness.build import export_variant
from harness.compile import compile_onnx, import_onnx, kernels, prepare_module
from harness.compile.integer import integerize
from harness.compile.intrinsics import dot_product
from harness.compile.target import build_target, host_cpu_flags
from harness.data import load_data, make_loader
from harness.device import load_device
from harness.export import OnnxModel
from harness.measure import LocalExecutor, ort_session
from harness.recipe import recipe_from_dict
from harness.specs import CompileOptions
from harness.workspace import Workspace


def _output_step(path: Path) -> float:
    """The quantization step of the model's output (scale of the DequantizeLinear that produces it)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (node,) = [n for n in graph.node if n.output[0] == graph.output[0].name]
    assert node.op_type == "DequantizeLinear"
    return float(inits[node.input[1]])


@pytest.mark.parametrize("symmetric", [False, True], ids=["uint8-asymmetric", "int8-symmetric"])
def test_integer_artifact_agrees_with_onnxruntime(symmetric: bool, tmp_path: Path) -> None:
    recipe = recipe_from_dict(TINY_RECIPE | {"data": TINY_RECIPE["data"] | {"eval_samples": None},
                                             "steps": [{"quantize": {"symmetric_activations": symmetric}}]}, "q")
    splits = load_data(recipe.data, recipe.resolution)
    dep = export_variant(recipe, splits, Workspace(tmp_path), progress=False)
    assert dep.options == CompileOptions(integer=True)
    _, report = integerize(import_onnx(dep.onnx))
    assert report.integer_ops == 10 and report.float_ops == 0  # every conv and the classifier of the tiny v1
    artifact = compile_onnx(dep.onnx, load_device("x86"), tmp_path / "int8.so", options=dep.options)
    assert artifact.report.integer_ops == "10/10" and artifact.report.layout == "NHWC"
    vnni = "avx512_vnni" in host_cpu_flags()
    # full-range weights: packed for VNNI only, and only with uint8 activations (u8·s8 instructions)
    assert (artifact.report.dot_product_ops != "0/10") == (vnni and not symmetric)
    if shutil.which("objdump"):  # 8-bit products summed in 32 bits with AVX2's vpmaddwd: integer SIMD, not float
        code = subprocess.run(["objdump", "-d", str(artifact.path)], capture_output=True, text=True).stdout
        assert "vpmaddwd" in code
    tvm_run = LocalExecutor(artifact.path, threads=2).run
    # ONNX Runtime's fused integer kernels are exact where the CPU has VNNI; without it they saturate 16-bit
    # sums, and the reference is the QDQ model run as written (float convolutions), whose rounding of the
    # float sums can move an intermediate value by a step: two output steps are allowed there.
    sess, steps = ort_session(dep.onnx.path, 2, exact=not vnni), 1 if vnni else 2
    diffs, agree, total = [], 0, 0
    for images, _ in make_loader(splits.val, 1):
        x = images.numpy()
        ours, ref = tvm_run(x), sess.run(None, {sess.get_inputs()[0].name: x})[0]
        diffs.append(np.abs(ours - ref).max())
        agree += int(ours.argmax() == ref.argmax())
        total += 1
    step = _output_step(dep.onnx.path)
    assert max(diffs) <= steps * step * 1.001, f"max |TVM - ORT| {max(diffs):.4g} > {steps} step(s) of {step:.4g}"
    assert agree / total >= 0.995, f"top-1 agreement {agree}/{total}"


def test_integer_kernels_do_not_depend_on_the_calibration(tmp_path: Path) -> None:
    """A model calibrated again (another input scale and zero point) has the same tuning workloads."""
    recipe = recipe_from_dict(TINY_RECIPE | {"steps": [{"quantize": {}}]}, "q")
    dep = export_variant(recipe, load_data(recipe.data, recipe.resolution), Workspace(tmp_path), progress=False)
    proto = onnx.load(str(dep.onnx.path))
    (quantize,) = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == dep.onnx.input_name]
    inits = {i.name: i for i in proto.graph.initializer}
    scale, zero = (numpy_helper.to_array(inits[name]) for name in quantize.input[1:3])
    assert zero != 0  # the first convolution pads with the zero point
    inits[quantize.input[1]].CopyFrom(numpy_helper.from_array(scale * np.float32(1.5), quantize.input[1]))
    inits[quantize.input[2]].CopyFrom(numpy_helper.from_array(zero + np.uint8(9), quantize.input[2]))
    recalibrated = replace(dep.onnx, path=tmp_path / "recalibrated.onnx")
    onnx.save(proto, str(recalibrated.path))
    profile = load_device("x86")

    def workloads(model: OnnxModel) -> set[int]:
        mod = prepare_module(model, layout=profile.layout, options=dep.options)
        return {tvm_ffi.structural_hash(t.dispatched[0]) for t in kernels.extract_tasks([mod], build_target(profile))}

    assert workloads(dep.onnx) == workloads(recalibrated)


def test_the_quantized_input_is_transposed_in_a_kernel_of_its_own(tmp_path: Path) -> None:
    """The input's quantization runs in NCHW (vectorized over rows), then a uint8 transpose to NHWC: fused, the
    quantization would be computed per NHWC element, 3 channels innermost (scalar code)."""
    recipe = recipe_from_dict(TINY_RECIPE | {"steps": [{"quantize": {}}]}, "q")
    dep = export_variant(recipe, load_data(recipe.data, recipe.resolution), Workspace(tmp_path), progress=False)
    profile = load_device("x86")
    target = build_target(profile)
    mod = prepare_module(dep.onnx, layout=profile.layout, options=dep.options, dot=dot_product(target))
    names = [t.task_name for t in kernels.extract_tasks([mod], target)]
    assert len([n for n in names if n.startswith("transpose_8bit")]) == 1, names
    (quantize,) = [n for n in names if "round" in n and "pad" in n]  # the padded input's quantization
    assert "transpose" not in quantize
