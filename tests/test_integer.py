"""Integer int8 in TVM: QDQ convolutions rewritten into integer ones agree with ONNX Runtime on the QDQ model."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY_RECIPE
from onnx import numpy_helper

from harness.build import export_variant
from harness.compile import compile_onnx, import_onnx
from harness.compile.integer import integerize
from harness.compile.target import host_cpu_flags
from harness.data import load_data, make_loader
from harness.device import load_device
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
    if shutil.which("objdump"):  # 8-bit products summed in 32 bits with AVX2's vpmaddwd: integer SIMD, not float
        code = subprocess.run(["objdump", "-d", str(artifact.path)], capture_output=True, text=True).stdout
        assert "vpmaddwd" in code
    tvm_run = LocalExecutor(artifact.path, threads=2).run
    # ONNX Runtime's fused integer kernels are exact where the CPU has VNNI; without it they saturate 16-bit
    # sums, and the reference is the QDQ model run as written (float convolutions), whose rounding of the
    # float sums can move an intermediate value by a step: two output steps are allowed there.
    vnni = "avx512_vnni" in host_cpu_flags()
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
