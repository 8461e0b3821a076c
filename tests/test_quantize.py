from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from harness.compile import compile_onnx
from harness.compress.quantize import quantize_onnx
from harness.data import calibration_batches, load_data
from harness.device import load_device
from harness.errors import HarnessError
from harness.export import export_onnx
from harness.measure import LocalExecutor, ort_session
from harness.models import build_model
from harness.specs import CalibrationMethod, DataSpec, QuantizeSpec
from harness.train import fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    splits = load_data(DataSpec(eval_samples=96), 32)
    model = build_model("test_mobilenet_v1", width=0.5, num_classes=10)
    fit(model, splits.train, epochs=2, lr=0.05, batch_size=32, progress=False)
    exported = export_onnx(model, tmp_path_factory.mktemp("q") / "fp32.onnx", resolution=32)
    return splits, exported


def _predict(path: Path, images: np.ndarray) -> np.ndarray:
    sess = ort_session(path, 1, exact=True)  # the QDQ model as written, whatever this CPU's integer kernels do
    return sess.run(None, {"input": images})[0]


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_qdq_model_validates_runs_and_agrees(trained, method: CalibrationMethod, tmp_path: Path) -> None:
    splits, exported = trained
    out = tmp_path / "int8.onnx"
    spec = QuantizeSpec(calibration=method, calibration_samples=64)
    report = quantize_onnx(exported.path, out, spec, calibration_batches(splits, 64, 16), progress=False)
    onnx.checker.check_model(str(out))
    assert report.samples == 64 and report.quantize_nodes > 0 and report.dequantize_nodes > report.quantize_nodes
    images = np.stack([splits.val[i][0].numpy() for i in range(96)])
    fp32, int8 = _predict(exported.path, images), _predict(out, images)
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.95


def test_reduce_range_quantizes_weights_to_seven_bits(trained, tmp_path: Path) -> None:
    splits, exported = trained
    out = tmp_path / "int8.onnx"
    quantize_onnx(exported.path, out, QuantizeSpec(calibration_samples=32, reduce_range=True),
                  calibration_batches(splits, 32, 16), progress=False)
    weights = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer]
    weights = [w for w in weights if w.dtype == np.int8 and w.ndim in (2, 4)]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    images = np.stack([splits.val[i][0].numpy() for i in range(96)])
    assert (_predict(exported.path, images).argmax(1) == _predict(out, images).argmax(1)).mean() >= 0.95


def test_int8_compiles_in_tvm_and_matches_onnx_runtime(trained, tmp_path: Path) -> None:
    splits, exported = trained
    out = tmp_path / "int8.onnx"
    quantize_onnx(exported.path, out, QuantizeSpec(calibration_samples=32), calibration_batches(splits, 32, 16),
                  progress=False)
    exported_int8 = type(exported)(path=out, input_shape=exported.input_shape)
    artifact = compile_onnx(exported_int8, load_device("x86"), tmp_path / "int8.so")
    x = splits.val[0][0].numpy()[None]
    np.testing.assert_allclose(LocalExecutor(artifact.path, 1).run(x), _predict(out, x), atol=0.05)


def test_errors(trained, tmp_path: Path) -> None:
    _, exported = trained
    with pytest.raises(HarnessError, match="ONNX model not found"):
        quantize_onnx(tmp_path / "absent.onnx", tmp_path / "o.onnx", QuantizeSpec(), [])
    with pytest.raises(HarnessError, match="dtype 'fp16' needs no ONNX quantization"):
        quantize_onnx(exported.path, tmp_path / "o.onnx", QuantizeSpec(dtype="fp16"), [])
    with pytest.raises(ValueError, match=r"calibration_samples must be in \[1, "):
        QuantizeSpec(calibration_samples=0)


def test_biases_shared_through_identity_nodes_become_initializers_and_are_quantized(tmp_path: Path) -> None:
    """torch 2.11's exporter shares equal biases through Identity nodes; ONNX Runtime quantizes only biases
    that are initializers, so the export gives each its own (same results, and every bias int32)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from harness.export import inline_constant_identities

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(3, 3, 1, 1)).astype(np.float32), f"w{i}") for i in (1, 2)]
    bias = numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "b")
    nodes = [helper.make_node("Identity", ["b"], ["b1"]), helper.make_node("Identity", ["b1"], ["b2"]),
             helper.make_node("Identity", ["b"], ["shown"]),  # a graph output: stays
             helper.make_node("Conv", ["x", "w1", "b1"], ["y1"]), helper.make_node("Conv", ["y1", "w2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4]),
                               helper.make_tensor_value_info("shown", TensorProto.FLOAT, [3])],
                              [*weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # (opset 17's)
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(model, before)
    assert inline_constant_identities(model.graph) == 2
    onnx.save(model, after)
    onnx.checker.check_model(str(after), full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Identity", "Conv", "Conv"]  # b2 (of b1) inlined too
    assert {t.name for t in model.graph.initializer} == {"w1", "w2", "b", "b1", "b2"}
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_predict_x(before, x), _predict_x(after, x))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = [{"x": x}]

        def get_next(self) -> dict | None:
            return self.left.pop() if self.left else None

    quantized = tmp_path / "q.onnx"
    quantize_static(str(after), str(quantized), Reader(), quant_format=QuantFormat.QDQ)
    int32 = {t.name for t in onnx.load(quantized).graph.initializer if t.data_type == TensorProto.INT32}
    assert {"b1_quantized", "b2_quantized"} <= int32  # both biases quantized


def _predict_x(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
