"""The `prune` step: structured channel pruning with torch-pruning (DepGraph), behind a small typed spec.

The result is a physically smaller `nn.Module` (fewer channels, MACs and parameters), not a mask.
Coupled layers — a depthwise convolution and the layer feeding it, the two sides of a residual add in
MobileNet v2 — are pruned together by DepGraph, so depthwise convolutions stay depthwise.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from harness.compress.step import StepContext, StepResult
from harness.data import make_loader
from harness.errors import HarnessError
from harness.models.counting import count_macs, count_params
from harness.specs import Importance, PruneSpec

log = logging.getLogger(__name__)


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


def check_patterns(model: nn.Module, spec: PruneSpec) -> None:
    """Every `ignore` and `layer_ratios` pattern names at least one module of `model` (else a one-line error)."""
    for key, patterns in (("ignore", spec.ignore), ("layer_ratios", spec.layer_ratios)):
        for pattern in patterns:
            if not _matching(model, [pattern]):
                raise HarnessError(f"prune.{key}: no module of {type(model).__name__} matches {pattern!r} "
                                   f"(e.g. {', '.join(n for n, _ in list(model.named_modules())[1:4])})")


def _pruner(model: nn.Module, spec: PruneSpec, example: torch.Tensor) -> tp.pruner.MetaPruner:
    check_patterns(model, spec)
    ignored = [_classifier(model)] + [m for pattern in spec.ignore for _, m in _matching(model, [pattern])]
    ratio_dict: dict[nn.Module, float] = {}
    for pattern, ratio in spec.layer_ratios.items():
        ratio_dict.update({m: ratio for _, m in _matching(model, [pattern])})
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Prune:
    spec: PruneSpec
    acts_on: Literal["torch"] = "torch"

    def apply(self, model: nn.Module, ctx: StepContext) -> StepResult:
        """Prune `model` in place; a few training batches calibrate gradient-based importances."""
        example = torch.zeros(1, 3, ctx.recipe.resolution, ctx.recipe.resolution)
        calibration = None
        if ctx.splits.train is not None:
            loader = make_loader(ctx.splits.train, ctx.recipe.train.batch_size, shuffle=True,
                                 seed=ctx.recipe.train.seed)
            calibration = [batch for batch, _ in zip(loader, range(4), strict=False)]
        report = prune(model, self.spec, example, calibration=calibration)
        return StepResult(output=model, report={"prune_ratio": self.spec.ratio, "macs_ratio": report.macs_ratio})
