"""Model registry: name + α + class count → `torch.nn.Module`, with optional weights.

MobileNet v1 is ours (after the paper); MobileNet v2, VGG and ResNet come from torchvision, and any other
torchvision classification model can be named. `test_*` entries are tiny real models for fast tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError, first_line
from harness.models.counting import ModelCost, count_macs, count_params, model_cost
from harness.models.mobilenet_v1 import V1_BLOCKS, MobileNetV1

__all__ = [
    "MODELS",
    "ModelCost",
    "build_model",
    "count_macs",
    "count_params",
    "model_cost",
    "replace_classifier",
]

ModelFactory = Callable[[float, int], nn.Module]


def _torchvision(name: str) -> ModelFactory:
    def factory(width: float, num_classes: int) -> nn.Module:
        import torchvision

        kwargs: dict[str, float] = {}
        if name == "mobilenet_v2":
            kwargs["width_mult"] = width
        elif width != 1.0:
            raise HarnessError(f"model {name!r} has no width multiplier (width must be 1.0, got {width})")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    return factory


def _mobilenet_v1(width: float, num_classes: int) -> nn.Module:
    return MobileNetV1(width=width, num_classes=num_classes)


def _test_mobilenet_v1(width: float, num_classes: int) -> nn.Module:
    """MobileNet v1 cut to its first four blocks: every layer kind, milliseconds to run."""
    return MobileNetV1(width=width, num_classes=num_classes, blocks=V1_BLOCKS[:4])


MODELS: dict[str, ModelFactory] = {
    "mobilenet_v1": _mobilenet_v1,
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "vgg16": _torchvision("vgg16"),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "test_mobilenet_v1": _test_mobilenet_v1,
}


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Give `model` a fresh last Linear layer with `num_classes` outputs (e.g. after ImageNet weights)."""
    last_name, last = None, None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last_name, last = name, mod
    if last is None or last_name is None:
        raise HarnessError(f"{type(model).__name__}: no Linear classifier layer to adapt")
    if last.out_features == num_classes:
        return model
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))
    return model


def _load_weights(model: nn.Module, name: str, weights: str, width: float, num_classes: int) -> nn.Module:
    path = Path(weights)
    if path.suffix in (".pt", ".pth") or path.exists():
        if not path.is_file():
            raise HarnessError(f"weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (unpickling raises many types)
            raise HarnessError(f"weights {path}: not a PyTorch checkpoint of tensors "
                               f"({first_line(exc)[:200]})") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise HarnessError(f"weights {path}: holds a {type(state).__name__}, not a state_dict (a dict of tensors)")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:2])  # the first mismatch
            raise HarnessError(f"weights {path} do not fit model {name!r}: {detail[:200] or exc}") from None
        return model
    import torchvision

    try:
        tv_weights = torchvision.models.get_weight(f"{torchvision.models.get_model_weights(name).__name__}.{weights}")
    except (ValueError, KeyError, AttributeError):
        raise HarnessError(
            f"weights {weights!r}: neither a checkpoint file nor a torchvision weights name for {name!r}"
        ) from None
    try:
        state = tv_weights.get_state_dict(progress=False)
    except OSError as exc:  # URLError derives from OSError
        raise HarnessError(f"cannot download torchvision weights {weights!r} for {name!r}: {exc}") from None
    if width != 1.0:
        raise HarnessError(f"torchvision weights {weights!r} exist for width 1.0 only, not {width}")
    classes = len(tv_weights.meta.get("categories", [])) or num_classes
    full = MODELS[name](1.0, classes) if name in MODELS else torchvision.models.get_model(name, num_classes=classes)
    full.load_state_dict(state)
    return replace_classifier(full, num_classes)


def build_model(name: str, *, width: float = 1.0, num_classes: int = 1000, weights: str | None = None) -> nn.Module:
    """Build model `name` at width α with a `num_classes` classifier; `weights` is a file or torchvision name."""
    if name in MODELS:
        model = MODELS[name](width, num_classes)
    elif name in _torchvision_names():
        model = _torchvision(name)(width, num_classes)
    else:
        raise HarnessError(
            f"unknown model {name!r}; available: {', '.join(MODELS)} or any torchvision classification model"
        )
    if weights is not None:
        model = _load_weights(model, name, weights, width, num_classes)
    return model
