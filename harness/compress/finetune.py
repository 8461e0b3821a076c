"""The `finetune` step: recover accuracy after pruning, optionally distilling from the unpruned model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from harness.compress.step import StepContext, StepResult
from harness.errors import HarnessError
from harness.specs import FinetuneSpec
from harness.train import Distillation, fit


@dataclass(frozen=True, kw_only=True, slots=True)
class Finetune:
    spec: FinetuneSpec
    acts_on: Literal["torch"] = "torch"

    def apply(self, model: nn.Module, ctx: StepContext) -> StepResult:
        """Train `model` (in place) for the spec's epochs, from the teacher's logits when `distill`."""
        spec, recipe = self.spec, ctx.recipe
        if ctx.splits.train is None:
            raise HarnessError(f"recipe {recipe.name}: finetune needs a data set with a train split")
        kd = Distillation(teacher=ctx.teacher, temperature=spec.temperature, weight=spec.distill_weight) \
            if spec.distill else None
        fit(model, ctx.splits.train, epochs=spec.epochs, lr=spec.lr,
            batch_size=spec.batch_size or recipe.train.batch_size, optimizer=spec.optimizer, seed=recipe.train.seed,
            distill=kd, progress=ctx.progress, desc="finetune")
        return StepResult(output=model)
