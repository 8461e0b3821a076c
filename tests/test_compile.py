import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from harness.compile import Artifact, compile_onnx
from harness.device import load_device
from harness.errors import HarnessError
from harness.export import OnnxModel, export_onnx
from harness.measure import LocalExecutor
from harness.models import build_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, OnnxModel]:
    torch.manual_seed(0)
    model = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return model, export_onnx(model, path, resolution=32, batch=2)


def test_export_is_a_valid_onnx_file(tiny) -> None:
    _, exported = tiny
    proto = onnx.load(str(exported.path))
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops  # BN folded for deployment
    assert exported.input_shape == (2, 3, 32, 32) and exported.bytes > 1000


def test_compile_and_run_matches_pytorch(tiny, tmp_path: Path) -> None:
    model, exported = tiny
    artifact = compile_onnx(exported, load_device("x86"), tmp_path / "lib" / "model.so")
    assert artifact.path.is_file() and artifact.bytes > 0 and not artifact.cross_compiled
    assert Artifact.load_meta(artifact.path) == artifact
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = LocalExecutor(artifact.path, threads=1).run(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs gcc-aarch64-linux-gnu")
def test_cross_compile_for_rpi4_gives_an_aarch64_library(tiny, tmp_path: Path) -> None:
    _, exported = tiny
    artifact = compile_onnx(exported, load_device("rpi4"), tmp_path / "model.so")
    assert artifact.cross_compiled
    assert artifact.path.read_bytes()[:4] == b"\x7fELF"
    assert "aarch64" in subprocess.run(["file", str(artifact.path)], capture_output=True, text=True).stdout \
        if shutil.which("file") else int.from_bytes(artifact.path.read_bytes()[18:20], "little") == 183


def test_unreadable_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(HarnessError, match="cannot read ONNX model"):
        compile_onnx(OnnxModel(path=bad, input_shape=(1, 3, 8, 8)), load_device("x86"), tmp_path / "m.so")
