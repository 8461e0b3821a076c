"""Compression steps: the registry from YAML step name to spec class, and the functions applying them.

Steps that act on the PyTorch model (prune) register in `APPLIERS`; steps that act on the exported ONNX
model (quantize) register in `ONNX_STEPS`. `finetune` is applied by the pipeline (it needs the teacher).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.compress.finetune import FinetuneSpec
from harness.compress.prune import PruneSpec, prune
from harness.compress.quantize import QuantizeSpec, quantize_onnx
from harness.compress.scaling import ArchitectureStep, ResolutionSpec, WidthSpec
from harness.data import DataSplits, calibration_batches, make_loader
from harness.export import OnnxModel

StepSpec = Any  # an instance of one of the classes in STEPS

STEPS: dict[str, type] = {
    "width": WidthSpec,
    "resolution": ResolutionSpec,
    "prune": PruneSpec,
    "finetune": FinetuneSpec,
    "quantize": QuantizeSpec,
}

# YAML keys that are not valid Python field names, per step.
STEP_ALIASES: dict[str, dict[str, str]] = {"prune": {"global": "global_pruning"}}



def _prune_step(model: nn.Module, spec: PruneSpec, *, recipe: Any, splits: DataSplits, progress: bool,
                info: dict[str, Any]) -> nn.Module:
    example = torch.zeros(1, 3, recipe.resolution, recipe.resolution)
    calibration = None
    if splits.train is not None:
        loader = make_loader(splits.train, recipe.train.batch_size, shuffle=True, seed=recipe.train.seed)
        calibration = [batch for batch, _ in zip(loader, range(4), strict=False)]
    report = prune(model, spec, example, calibration=calibration)
    info["prune_ratio"] = spec.ratio
    info["macs_ratio"] = report.macs_ratio
    return model


def _quantize_step(spec: QuantizeSpec, fp32: OnnxModel, *, splits: DataSplits, progress: bool,
                   info: dict[str, Any]) -> tuple[OnnxModel, str, dict[str, Any]]:
    if spec.dtype == "fp16":
        return fp32, "fp16", {"fp16": True}
    from harness.recipe import content_hash

    calibration_key = content_hash({k: v for k, v in _fields(spec).items() if k != "integer"})
    out = fp32.path.with_name(f"model.int8-{calibration_key}.onnx")
    if not out.is_file():
        batches = calibration_batches(splits, spec.calibration_samples, batch_size=16)
        quantize_onnx(fp32.path, out, spec, batches, input_name=fp32.input_name, progress=progress)
    info["calibration"] = f"{spec.calibration.value}:{spec.calibration_samples}"
    info["integer"] = spec.integer
    options = {"integer": True} if spec.integer else {}
    return OnnxModel(path=out, input_shape=fp32.input_shape, input_name=fp32.input_name), "int8", options


def _fields(spec: Any) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


# spec class → fn(model, spec, *, recipe, splits, progress, info) -> model
APPLIERS: dict[type, Callable[..., nn.Module]] = {PruneSpec: _prune_step}
# spec class → fn(spec, fp32_onnx, *, splits, progress, info) -> (deploy OnnxModel, dtype, compile options)
ONNX_STEPS: dict[type, Callable[..., tuple[Any, str, dict[str, Any]]]] = {QuantizeSpec: _quantize_step}


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


__all__ = ["APPLIERS", "ONNX_STEPS", "STEPS", "STEP_ALIASES", "ArchitectureStep", "PruneSpec", "QuantizeSpec",
           "ResolutionSpec", "StepSpec", "WidthSpec", "apply_onnx_step", "is_onnx_step", "step_kind", "step_summary"]
