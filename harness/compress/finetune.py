"""The `finetune` step: recover accuracy after pruning, optionally distilling from the unpruned model."""

from __future__ import annotations

from dataclasses import dataclass

from harness.train import Optimizer


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneSpec:
    """`- finetune: {epochs: 2, lr: 0.01, distill: true}`."""

    epochs: int = 2
    lr: float = 0.01
    batch_size: int | None = None  # None: the recipe's train.batch_size
    optimizer: Optimizer = Optimizer.SGD
    distill: bool = False  # teacher: the model before the compression steps
    temperature: float = 4.0
    distill_weight: float = 0.7

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0:
            raise ValueError(f"finetune needs epochs >= 1 and lr > 0, got epochs={self.epochs}, lr={self.lr}")
        if not 0 <= self.distill_weight <= 1 or self.temperature <= 0:
            raise ValueError("finetune needs distill_weight in [0, 1] and temperature > 0")
