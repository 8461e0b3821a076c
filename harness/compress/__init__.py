"""Compression steps: the registry from YAML step name to spec class, and the functions applying them.

Steps that act on the PyTorch model (prune) register in `APPLIERS`; steps that act on the exported ONNX
model (quantize) register in `ONNX_STEPS`. `finetune` is applied by the pipeline (it needs the teacher).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from harness.compress.finetune import FinetuneSpec
from harness.compress.scaling import ArchitectureStep, ResolutionSpec, WidthSpec

StepSpec = Any  # an instance of one of the classes in STEPS

STEPS: dict[str, type] = {
    "width": WidthSpec,
    "resolution": ResolutionSpec,
    "finetune": FinetuneSpec,
}

# YAML keys that are not valid Python field names, per step.
STEP_ALIASES: dict[str, dict[str, str]] = {}

# spec class → fn(model, spec, *, recipe, splits, progress, info) -> model
APPLIERS: dict[type, Callable[..., nn.Module]] = {}
# spec class → fn(spec, fp32_onnx, *, splits, progress, info) -> (deploy OnnxModel, dtype, compile options)
ONNX_STEPS: dict[type, Callable[..., tuple[Any, str, dict[str, Any]]]] = {}


def step_kind(step: StepSpec) -> str:
    """The YAML name of a step spec."""
    for kind, cls in STEPS.items():
        if type(step) is cls:
            return kind
    raise TypeError(f"not a step spec: {step!r}")


def is_onnx_step(step: StepSpec) -> bool:
    """Whether the step acts on the exported ONNX model rather than the PyTorch model."""
    return type(step) in ONNX_STEPS


def apply_onnx_step(step: StepSpec, fp32_onnx: Any, **kwargs: Any) -> tuple[Any, str, dict[str, Any]]:
    """Apply an ONNX-level step; returns the model to compile, its dtype and compile options."""
    return ONNX_STEPS[type(step)](step, fp32_onnx, **kwargs)


def step_summary(step: StepSpec) -> str:
    """Compact description with non-default fields, e.g. 'prune(ratio=0.5,importance=l1)'."""
    kind = step_kind(step)
    if isinstance(step, ArchitectureStep):
        return f"{kind}={step.value}"
    parts = []
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value != default:
            parts.append(f"{f.name}={getattr(value, 'value', value)}")
    return f"{kind}({','.join(parts)})"


__all__ = ["APPLIERS", "ONNX_STEPS", "STEPS", "STEP_ALIASES", "ArchitectureStep", "ResolutionSpec", "StepSpec",
           "WidthSpec", "apply_onnx_step", "is_onnx_step", "step_kind", "step_summary"]
