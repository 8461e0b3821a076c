import pytest
import torch
from torch import nn

from harness.compress.prune import prune
from harness.errors import HarnessError
from harness.models import build_model, count_macs
from harness.recipe import recipe_from_dict
from harness.specs import Importance, PruneSpec

EXAMPLE = torch.zeros(1, 3, 32, 32)


def _calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]


def _assert_depthwise_intact(model: nn.Module) -> None:
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped
    for conv in grouped:
        assert conv.groups == conv.in_channels == conv.out_channels
        assert conv.weight.shape[1] == 1


@pytest.mark.parametrize("importance", list(Importance))
def test_every_criterion_shrinks_mobilenet_v1(importance: Importance) -> None:
    model = build_model("mobilenet_v1", width=0.25, num_classes=10)
    report = prune(model, PruneSpec(ratio=0.5, importance=importance), EXAMPLE, calibration=_calibration())
    assert report.macs_after < 0.6 * report.macs_before
    assert report.params_after < report.params_before
    assert report.macs_after == count_macs(model, 32)
    _assert_depthwise_intact(model)
    assert model(EXAMPLE).shape == (1, 10)


def test_mobilenet_v2_residuals_and_round_to() -> None:
    model = build_model("mobilenet_v2", width=0.5, num_classes=10)
    classifier = model.classifier[-1]
    report = prune(model, PruneSpec(ratio=0.3, round_to=8), EXAMPLE)
    assert report.macs_after < 0.75 * report.macs_before
    _assert_depthwise_intact(model)
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.classifier[-1] is classifier and classifier.out_features == 10
    assert model(EXAMPLE).shape == (1, 10)


def test_ignored_layers_and_per_layer_ratios() -> None:
    model = build_model("mobilenet_v1", width=0.5, num_classes=10)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    spec = PruneSpec(ratio=0.5, ignore=("features.13.pointwise.0",),
                     layer_ratios={"features.1.pointwise.0": 0.25, "features.3.pointwise.0": 0.0})
    prune(model, spec, EXAMPLE)
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert after["features.13.pointwise.0"] == before["features.13.pointwise.0"]
    assert after["features.1.pointwise.0"] == before["features.1.pointwise.0"] * 3 // 4
    assert after["features.2.pointwise.0"] == before["features.2.pointwise.0"] // 2
    assert after["features.3.pointwise.0"] == before["features.3.pointwise.0"]  # 0.0: as sensitivity suggests


def test_iterative_steps_reach_the_same_ratio() -> None:
    one, three = (build_model("mobilenet_v1", width=0.25, num_classes=10) for _ in range(2))
    a = prune(one, PruneSpec(ratio=0.5), EXAMPLE)
    b = prune(three, PruneSpec(ratio=0.5, iterative_steps=3), EXAMPLE)
    assert b.macs_after == pytest.approx(a.macs_after, rel=0.1)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        PruneSpec(ratio=1.0)
    with pytest.raises(ValueError, match=r"layer_ratios\.x must be in \[0, 1\)"):
        PruneSpec(ratio=0.5, layer_ratios={"x": -0.1})
    with pytest.raises(HarnessError, match="importance 'taylor' needs calibration"):
        prune(build_model("test_mobilenet_v1", width=0.25), PruneSpec(ratio=0.3, importance="taylor"), EXAMPLE)
    with pytest.raises(HarnessError, match="prune.ignore: no module of MobileNetV1 matches 'nope'"):
        prune(build_model("test_mobilenet_v1", width=0.25), PruneSpec(ratio=0.3, ignore=("nope",)), EXAMPLE)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"ratio": 1.5}, r"steps\[0\]\.prune: ratio must be in \[0, 1\)"),
        ({"ratio": 0.5, "importance": "l3"}, r"prune\.importance: 'l3' is not allowed; expected one of 'l1'"),
        ({"ratio": 0.5, "rate": 1}, r"prune: unknown key 'rate'"),
    ],
)
def test_recipe_errors(step: dict, message: str) -> None:
    with pytest.raises(HarnessError, match=message):
        recipe_from_dict({"model": {"name": "mobilenet_v1"}, "steps": [{"prune": step}]}, "r.yaml")


def test_recipe_global_key_and_order() -> None:
    recipe = recipe_from_dict({"model": {"name": "mobilenet_v1"},
                               "steps": [{"prune": {"ratio": 0.5, "global": True}}]}, "r.yaml")
    assert recipe.steps[0].global_pruning is True
    with pytest.raises(HarnessError, match="prune cannot follow quantize"):
        recipe_from_dict({"model": {"name": "mobilenet_v1"},
                          "steps": [{"quantize": {}}, {"prune": {"ratio": 0.5}}]}, "r.yaml")
