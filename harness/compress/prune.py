"""The `prune` step: structured channel pruning with torch-pruning (DepGraph), behind a small typed spec.

The result is a physically smaller `nn.Module` (fewer channels, MACs and parameters), not a mask.
Coupled layers — a depthwise convolution and the layer feeding it, the two sides of a residual add in
MobileNet v2 — are pruned together by DepGraph, so depthwise convolutions stay depthwise.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from harness.errors import HarnessError
from harness.models.counting import count_macs, count_params

log = logging.getLogger(__name__)


class Importance(StrEnum):
    """How channels are ranked before the least important ones are removed."""

    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn_scale"
    TAYLOR = "taylor"
    LAMP = "lamp"
    FPGM = "fpgm"
    RANDOM = "random"


IMPORTANCES: dict[Importance, Any] = {
    Importance.L1: lambda: tp.importance.MagnitudeImportance(p=1),
    Importance.L2: lambda: tp.importance.MagnitudeImportance(p=2),
    Importance.BN_SCALE: lambda: tp.importance.BNScaleImportance(),
    Importance.TAYLOR: lambda: tp.importance.TaylorImportance(),
    Importance.LAMP: lambda: tp.importance.LAMPImportance(p=2),
    Importance.FPGM: lambda: tp.importance.FPGMImportance(),
    Importance.RANDOM: lambda: tp.importance.RandomImportance(),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class PruneSpec:
    """`- prune: {ratio: 0.5, importance: l2, global: false, round_to: 8, ignore: [...], layer_ratios: {...}}`."""

    ratio: float  # share of channels removed, in [0, 1)
    importance: Importance = Importance.L2
    global_pruning: bool = False  # YAML `global`: rank channels across layers instead of per layer
    iterative_steps: int = 1
    round_to: int | None = 8  # pruned channel counts are multiples of this (SIMD); None: no rounding
    ignore: tuple[str, ...] = ()  # module names (fnmatch patterns) left whole; the classifier always is
    layer_ratios: dict[str, float] = field(default_factory=dict)  # module-name pattern → ratio

    def __post_init__(self) -> None:
        for name, ratio in [("ratio", self.ratio), *((f"layer_ratios.{k}", v) for k, v in self.layer_ratios.items())]:
            if not 0 <= ratio < 1:
                raise ValueError(f"{name} must be in [0, 1), got {ratio}")
        if self.iterative_steps < 1:
            raise ValueError(f"iterative_steps must be >= 1, got {self.iterative_steps}")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"round_to must be >= 1 or null, got {self.round_to}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PruneReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before


def _classifier(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise HarnessError(f"{type(model).__name__}: no Linear classifier found to keep unpruned")
    return linears[-1]


def _matching(model: nn.Module, patterns: Iterable[str]) -> list[tuple[str, nn.Module]]:
    patterns = list(patterns)
    return [(n, m) for n, m in model.named_modules() if n and any(fnmatch.fnmatch(n, p) for p in patterns)]


def _pruner(model: nn.Module, spec: PruneSpec, example: torch.Tensor) -> tp.pruner.MetaPruner:
    ignored = [_classifier(model)]
    for pattern in spec.ignore:
        found = _matching(model, [pattern])
        if not found:
            raise HarnessError(f"prune.ignore: no module of {type(model).__name__} matches {pattern!r}")
        ignored += [m for _, m in found]
    ratio_dict: dict[nn.Module, float] = {}
    for pattern, ratio in spec.layer_ratios.items():
        found = _matching(model, [pattern])
        if not found:
            raise HarnessError(f"prune.layer_ratios: no module of {type(model).__name__} matches {pattern!r}")
        ratio_dict.update({m: ratio for _, m in found})
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=IMPORTANCES[spec.importance](),
        global_pruning=spec.global_pruning,
        pruning_ratio=spec.ratio,
        pruning_ratio_dict=ratio_dict or None,
        iterative_steps=spec.iterative_steps,
        round_to=spec.round_to,
        ignored_layers=ignored,
    )


def prune(model: nn.Module, spec: PruneSpec, example_input: torch.Tensor, *,
          calibration: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> PruneReport:
    """Prune `model` in place; Taylor importance needs `calibration` batches (images, labels) for gradients."""
    if spec.importance == Importance.TAYLOR and calibration is None:
        raise HarnessError("prune: importance 'taylor' needs calibration batches (a data set with labels)")
    resolution = tuple(example_input.shape[-2:])
    params_before, macs_before = count_params(model), count_macs(model, resolution)
    model.eval()
    pruner = _pruner(model, spec, example_input)
    batches = list(calibration or [])
    for step in range(spec.iterative_steps):
        if spec.importance == Importance.TAYLOR:
            model.zero_grad()
            for images, labels in batches:
                F.cross_entropy(model(images), labels).backward()
        pruner.step()
        log.info("prune step %d/%d: %d parameters", step + 1, spec.iterative_steps, count_params(model))
    model.zero_grad(set_to_none=True)
    _check_depthwise(model)
    return PruneReport(params_before=params_before, params_after=count_params(model),
                       macs_before=macs_before, macs_after=count_macs(model, resolution))


def _check_depthwise(model: nn.Module) -> None:
    """Every grouped convolution must still be depthwise (groups == in == out channels)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.groups > 1 and not mod.groups == mod.in_channels == mod.out_channels:
            raise HarnessError(f"prune: {name} ({type(mod).__name__}) lost its depthwise structure: "
                               f"groups={mod.groups}, in={mod.in_channels}, out={mod.out_channels}")
