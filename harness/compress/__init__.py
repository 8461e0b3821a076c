"""Compression steps: one object per step kind, each with one `apply` returning a typed `StepResult`
(harness.compress.step).

`make_step(spec)` gives the step for a spec of `harness.specs`. A step acts on the trained PyTorch model
(prune, finetune) or on the exported ONNX model (quantize); `acts_on` says which. Width and resolution are
not applied: they set the architecture that is built and trained (`Recipe.width`, `Recipe.resolution`).
"""

from __future__ import annotations

from harness.compress.finetune import Finetune
from harness.compress.prune import Prune
from harness.compress.quantize import Quantize
from harness.compress.step import Step, StepContext, StepResult
from harness.specs import FinetuneSpec, PruneSpec, QuantizeSpec, StepSpec, step_kind

_STEPS: dict[type, type] = {PruneSpec: Prune, FinetuneSpec: Finetune, QuantizeSpec: Quantize}


def make_step(spec: StepSpec) -> Step:
    """The step that applies `spec`."""
    if type(spec) not in _STEPS:
        raise TypeError(f"{step_kind(spec)} is not applied to a model (it sets the architecture)")
    return _STEPS[type(spec)](spec=spec)


__all__ = ["Step", "StepContext", "StepResult", "make_step"]
