"""Parameter and multiply-add counts, as the MobileNet papers count them (convolutions and linear layers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import HarnessError, last_line


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCost:
    """Size and compute of a model at one input resolution."""

    params: int  # all parameters (weights, biases, BatchNorm affine)
    macs: int  # multiply-adds of Conv2d and Linear layers for one image


def forward(model: nn.Module, x: torch.Tensor) -> None:
    """`model(x)` without gradients; an input the model cannot take (too small for its depth, or not the one size
    it was built for) is a one-line error."""
    try:
        with torch.no_grad():
            model(x)
    except NotImplementedError:  # an operator without a kernel for this device: not the input's fault
        raise
    except (RuntimeError, AssertionError, ValueError) as exc:
        h, w = x.shape[-2:]
        raise HarnessError(f"{type(model).__name__} cannot take a {h}x{w} input: {last_line(exc)}") from None


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int | tuple[int, int]) -> int:
    """Multiply-adds of every Conv2d and Linear for one RGB image of the given resolution."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * mod.in_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device  # the meta device counts without computing
        forward(model, torch.zeros(1, 3, h, w, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def model_cost(model: nn.Module, resolution: int | tuple[int, int]) -> ModelCost:
    """Parameters and multiply-adds of `model` at `resolution`."""
    return ModelCost(params=count_params(model), macs=count_macs(model, resolution))
