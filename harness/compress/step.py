"""The step interface: what a compression step gets (`StepContext`), returns (`StepResult`) and is (`Step`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from torch import nn

from harness.data import DataSplits
from harness.export import OnnxModel
from harness.specs import CompileOptions, Recipe


@dataclass(frozen=True, kw_only=True, slots=True)
class StepContext:
    """What a step may use besides its input: the recipe, its data and the model before any step."""

    recipe: Recipe
    splits: DataSplits
    teacher: nn.Module  # the trained base model (distillation's teacher)
    progress: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class StepResult:
    """A step's output: the transformed model, its dtype, what it asks of the compiler, and what it reports."""

    output: nn.Module | OnnxModel
    dtype: str = "fp32"
    options: CompileOptions = field(default_factory=CompileOptions)
    report: Mapping[str, Any] = field(default_factory=dict)  # recorded in the row (e.g. prune_ratio)


class Step(Protocol):
    """One compression step, configured by its spec."""

    acts_on: Literal["torch", "onnx"]

    def apply(self, model: Any, ctx: StepContext) -> StepResult:
        """Transform `model` (an nn.Module or an OnnxModel, as `acts_on` says)."""
        ...
