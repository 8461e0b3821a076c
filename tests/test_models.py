from pathlib import Path

import pytest
import torch
from torch import nn

from harness.errors import HarnessError
from harness.models import MODELS, build_model, model_cost

# MobileNet v1 paper (Howard et al. 2017), Tables 6 and 7: Mult-Adds (M) and parameters (M), 1000 classes.
PAPER_WIDTH = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
PAPER_RESOLUTION = {224: 569, 192: 418, 160: 290, 128: 186}


@pytest.mark.parametrize("width", PAPER_WIDTH)
def test_mobilenet_v1_width_matches_paper(width: float) -> None:
    macs, params = PAPER_WIDTH[width]
    cost = model_cost(build_model("mobilenet_v1", width=width), 224)
    assert round(cost.macs / 1e6) == pytest.approx(macs, abs=1)
    assert round(cost.params / 1e6, 1) == params


@pytest.mark.parametrize("resolution", PAPER_RESOLUTION)
def test_mobilenet_v1_resolution_matches_paper(resolution: int) -> None:
    cost = model_cost(build_model("mobilenet_v1"), resolution)
    assert cost.macs / 1e6 == pytest.approx(PAPER_RESOLUTION[resolution], abs=1)
    assert round(cost.params / 1e6, 1) == 4.2


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25])
@pytest.mark.parametrize("resolution", [224, 192, 160, 128])
def test_cost_scales_with_alpha_squared_and_rho_squared(width: float, resolution: int) -> None:
    """Every α × ρ cell: cost ~α²ρ² (FC excluded; depthwise layers scale with α alone, hence 20 %)."""
    full = model_cost(build_model("mobilenet_v1"), 224).macs - 1024 * 1000
    fc = int(1024 * width) * 1000
    cost = model_cost(build_model("mobilenet_v1", width=width), resolution).macs - fc
    assert cost / full == pytest.approx(width**2 * (resolution / 224) ** 2, rel=0.2)


def test_mobilenet_v1_structure() -> None:
    model = build_model("mobilenet_v1", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 27 and len(bns) == 27  # 28 layers with the classifier
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 13 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert convs[0].stride == (2, 2) and convs[0].out_channels == 32
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_models_adapt_to_class_count(name: str) -> None:
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


def test_any_torchvision_model_and_v2_width() -> None:
    assert build_model("mobilenet_v3_small", num_classes=3).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    thin, full = build_model("mobilenet_v2", width=0.5), build_model("mobilenet_v2")
    assert model_cost(thin, 224).macs < 0.4 * model_cost(full, 224).macs
    assert model_cost(full, 224).macs / 1e6 == pytest.approx(300, rel=0.02)  # v2 paper: 300 M


def test_errors() -> None:
    with pytest.raises(HarnessError, match="unknown model 'mobilenet_v9'; available: mobilenet_v1"):
        build_model("mobilenet_v9")
    with pytest.raises(HarnessError, match="model 'resnet18' has no width multiplier"):
        build_model("resnet18", width=0.5)
    with pytest.raises(HarnessError, match="weights file not found"):
        build_model("mobilenet_v1", weights="absent.pt")
    with pytest.raises(HarnessError, match="neither a checkpoint file nor a torchvision weights name"):
        build_model("mobilenet_v2", weights="NO_SUCH_WEIGHTS")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model("test_mobilenet_v1", width=0.25, num_classes=10)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    loaded = build_model("test_mobilenet_v1", width=0.25, num_classes=10, weights=str(path))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(HarnessError, match="do not fit model 'test_mobilenet_v1'"):
        build_model("test_mobilenet_v1", width=0.5, num_classes=10, weights=str(path))
