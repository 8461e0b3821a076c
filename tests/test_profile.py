"""Per-kernel profile of a compiled artifact: kernels timed through the VM's instrument hook, grouped into
layer kinds read from their argument shapes (1×1, depthwise, full convolutions) in either layout; ONNX
Runtime's nodes of the same model grouped into the same kinds."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RECIPE

from harness.build import export_variant
from harness.compile import compile_onnx
from harness.data import load_data
from harness.device import ConvLayout, load_device
from harness.export import export_onnx
from harness.models import build_model
from harness.profile import Profiled, compare_kinds, conv_kind, kernel_times, kernel_times_side_by_side
from harness.recipe import recipe_from_dict
from harness.workspace import Workspace


def test_convolutions_are_told_apart_by_their_argument_shapes() -> None:
    """Input first, output last; the weight is found by its size whatever layout a tuned schedule gave it."""
    nhwc = [(1, 56, 56, 64), (2, 8, 64, 8), (1, 1, 1, 128), (1, 56, 56, 128)]  # a repacked 1x1 weight
    assert conv_kind(nhwc, "NHWC") == "1x1 convolution"
    assert conv_kind([(1, 64, 56, 56), (128, 64, 1, 1), (1, 128, 56, 56)], "NCHW") == "1x1 convolution"
    depthwise = [(1, 58, 58, 64), (9, 64), (1, 1, 1, 64), (1, 56, 56, 64), (1, 56, 56, 64)]  # residual beside
    assert conv_kind(depthwise, "NHWC") == "depthwise convolution"
    assert conv_kind([(1, 3, 224, 224), (32, 3, 3, 3), (1, 32, 112, 112)], "NCHW") == "3x3 convolution"
    projection = [(1, 28, 28, 24), (1, 28, 28, 144), (3456,), (1, 1, 1, 24), (1, 28, 28, 24)]  # residual first
    assert conv_kind(projection, "NHWC") == "1x1 convolution"


def _assert_tiny_mobilenet(kernels: pd.DataFrame) -> None:
    """The test network: a 3x3 stem, then depthwise-separable blocks (depthwise + 1x1 each), the classifier."""
    counts = kernels.groupby("kind")["calls"].sum()
    assert counts["3x3 convolution"] == 1 and counts["depthwise convolution"] == counts["1x1 convolution"] >= 4
    assert counts["dense"] == 1 and (kernels["ms"] > 0).all() and kernels["share"].sum() == pytest.approx(1)


@pytest.mark.parametrize("layout", [ConvLayout.NHWC, ConvLayout.NCHW])
def test_kernel_times_group_a_mobilenet_into_its_layer_kinds(layout: ConvLayout, tmp_path: Path) -> None:
    model = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval()
    onnx_model = export_onnx(model, tmp_path / "m.onnx", resolution=32)
    artifact = compile_onnx(onnx_model, replace(load_device("x86"), layout=layout), tmp_path / "m.so")
    kernels = kernel_times(Profiled(artifact.path, artifact.input_shape, layout=str(layout)), threads=1, rounds=2,
                           runs=3)
    _assert_tiny_mobilenet(kernels)


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_onnx_runtime_nodes_get_the_layer_kinds_of_the_models_convolutions(dtype: str, tmp_path: Path) -> None:
    """ONNX Runtime fuses nodes (QLinearConv, FusedConv) and keeps the name of the Conv it replaced, whose
    weight tells the kind; its nodes are timed in the same rounds as the TVM kernels."""
    steps = [{"quantize": {}}] if dtype == "int8" else []
    recipe = recipe_from_dict(TINY_RECIPE | {"steps": steps}, "tiny")
    exported = export_variant(recipe, load_data(recipe.data, recipe.resolution), Workspace(tmp_path), progress=False)
    artifact = compile_onnx(exported.onnx, load_device("x86"), tmp_path / "m.so", options=exported.options)
    tvm_kernels, ort_nodes = kernel_times_side_by_side(
        [Profiled(artifact.path, artifact.input_shape)], threads=1, rounds=2, runs=3,
        onnx=[(exported.onnx.path, artifact.input_shape)])
    _assert_tiny_mobilenet(tvm_kernels)
    _assert_tiny_mobilenet(ort_nodes)


def test_compare_kinds_gives_each_kind_its_ratio_and_a_total() -> None:
    fp32 = pd.DataFrame({"kind": ["1x1 convolution", "depthwise convolution", "dense"], "ms": [2.0, 1.0, 0.5]})
    int8 = pd.DataFrame({"kind": ["1x1 convolution", "depthwise convolution", "elementwise"], "ms": [1.0, 1.5, 0.1]})
    table = compare_kinds(fp32, int8, ("fp32", "int8")).set_index("kind")
    assert table.loc["depthwise convolution", "ratio"] == pytest.approx(1.5)
    assert table.loc["1x1 convolution", "ratio"] == pytest.approx(0.5)
    assert table.loc["dense", "int8"] == 0 and pd.isna(table.loc["elementwise", "ratio"])
    assert table.index[-1] == "total" and table.loc["total", "ratio"] == pytest.approx(2.6 / 3.5)
    assert list(table.index[:2]) == ["depthwise convolution", "1x1 convolution"]  # longest in int8 first


def test_compare_kinds_adds_a_peer_and_the_ratio_to_it() -> None:
    fp32 = pd.DataFrame({"kind": ["1x1 convolution", "dense"], "ms": [2.0, 0.5]})
    int8 = pd.DataFrame({"kind": ["1x1 convolution", "dense"], "ms": [1.0, 0.5]})
    ort = pd.DataFrame({"kind": ["1x1 convolution", "quantize"], "ms": [0.5, 0.1]})
    table = compare_kinds(fp32, int8, ("fp32", "int8"), peer=("ORT int8", ort)).set_index("kind")
    assert list(table.columns) == ["fp32", "int8", "ratio", "ORT int8", "int8/ORT int8"]
    assert table.loc["1x1 convolution", "int8/ORT int8"] == pytest.approx(2.0)
    assert pd.isna(table.loc["dense", "int8/ORT int8"]) and table.loc["quantize", "int8"] == 0
    assert table.loc["total", "int8/ORT int8"] == pytest.approx(1.5 / 0.6)
