from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tvm import relax

from harness.compile import compile_onnx, prepare_module
from harness.compile.kernels import fuse
from harness.compile.target import build_target
from harness.device import ConvLayout, load_device
from harness.errors import HarnessError
from harness.export import OnnxModel, export_onnx
from harness.measure import LocalExecutor
from harness.models import build_model


@pytest.fixture(scope="module", params=["test_mobilenet_v1", "mobilenet_v2"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[torch.nn.Module, OnnxModel]:
    torch.manual_seed(0)
    model = build_model(request.param, width=0.25, num_classes=10).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return model, export_onnx(model, path, resolution=32, batch=1)


def _kernels(onnx_model: OnnxModel, layout: ConvLayout) -> list[str]:
    mod = fuse(prepare_module(onnx_model, layout=layout), build_target(load_device("x86")))
    return [gv.name_hint for gv, func in mod.functions.items() if not isinstance(func, relax.Function)]


def test_nhwc_transposes_only_the_input_and_the_pooled_output(exported) -> None:
    _, onnx_model = exported
    nchw, nhwc = _kernels(onnx_model, ConvLayout.NCHW), _kernels(onnx_model, ConvLayout.NHWC)
    assert not any("transpose" in name for name in nchw)
    assert sum("transpose" in name for name in nhwc) == 2  # ReLU6 and residual adds converted, not wrapped
    convs = [name for name in nhwc if "conv2d" in name]
    assert len(convs) == sum("conv2d" in name for name in nchw)
    assert all("maximum" in name for name in convs if "minimum" in name)  # ReLU6 still fused into its conv


@pytest.mark.parametrize("layout", list(ConvLayout))
def test_every_layout_matches_pytorch(exported, layout: ConvLayout, tmp_path: Path) -> None:
    model, onnx_model = exported
    profile = replace(load_device("x86"), layout=layout)
    artifact = compile_onnx(onnx_model, profile, tmp_path / "model.so")
    assert artifact.report.layout == str(layout)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(LocalExecutor(artifact.path, threads=1).run(x), expected, rtol=1e-4, atol=1e-4)


def test_x86_compiles_float_convolutions_in_nhwc() -> None:
    assert load_device("x86").layout is ConvLayout.NHWC


def test_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("name: board\ntarget: {kind: llvm}\nlayout: NCWH\n")
    with pytest.raises(HarnessError, match=r"board\.yaml.*layout.*'NCWH' is not allowed"):
        load_device(str(path))
