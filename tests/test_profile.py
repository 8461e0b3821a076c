"""Per-kernel profile of a compiled artifact: kernels timed through the VM's instrument hook, grouped into
layer kinds read from their argument shapes (1×1, depthwise, full convolutions) in either layout."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from harness.compile import compile_onnx
from harness.device import ConvLayout, load_device
from harness.export import export_onnx
from harness.models import build_model
from harness.profile import Profiled, compare_kinds, conv_kind, kernel_times


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


@pytest.mark.parametrize("layout", [ConvLayout.NHWC, ConvLayout.NCHW])
def test_kernel_times_group_a_mobilenet_into_its_layer_kinds(layout: ConvLayout, tmp_path: Path) -> None:
    model = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval()
    onnx_model = export_onnx(model, tmp_path / "m.onnx", resolution=32)
    artifact = compile_onnx(onnx_model, replace(load_device("x86"), layout=layout), tmp_path / "m.so")
    kernels = kernel_times(Profiled(artifact.path, artifact.input_shape, layout=str(layout)), threads=1, rounds=2,
                           runs=3)
    counts = kernels.groupby("kind")["calls"].sum()
    # the test network: a 3x3 stem, then depthwise-separable blocks (depthwise + 1x1 each), then the classifier
    assert counts["3x3 convolution"] == 1 and counts["depthwise convolution"] == counts["1x1 convolution"] >= 4
    assert counts["dense"] == 1 and (kernels["ms"] > 0).all() and kernels["share"].sum() == pytest.approx(1)


def test_compare_kinds_gives_each_kind_its_ratio_and_a_total() -> None:
    fp32 = pd.DataFrame({"kind": ["1x1 convolution", "depthwise convolution", "dense"], "ms": [2.0, 1.0, 0.5]})
    int8 = pd.DataFrame({"kind": ["1x1 convolution", "depthwise convolution", "elementwise"], "ms": [1.0, 1.5, 0.1]})
    table = compare_kinds(fp32, int8, ("fp32", "int8")).set_index("kind")
    assert table.loc["depthwise convolution", "ratio"] == pytest.approx(1.5)
    assert table.loc["1x1 convolution", "ratio"] == pytest.approx(0.5)
    assert table.loc["dense", "int8"] == 0 and pd.isna(table.loc["elementwise", "ratio"])
    assert table.index[-1] == "total" and table.loc["total", "ratio"] == pytest.approx(2.6 / 3.5)
    assert list(table.index[:2]) == ["depthwise convolution", "1x1 convolution"]  # longest in int8 first
