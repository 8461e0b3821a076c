"""Training and evaluation loops in PyTorch (base training, fine-tuning, knowledge distillation)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from harness.data import make_loader
from harness.progress import Progress
from harness.specs import Optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Distillation:
    """Knowledge distillation from `teacher`: loss = (1-w)·CE + w·T²·KL(student/T ‖ teacher/T)."""

    teacher: nn.Module
    temperature: float = 4.0
    weight: float = 0.7


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainReport:
    epochs: int
    seconds: float
    final_loss: float


def _loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
          kd: Distillation | None) -> torch.Tensor:
    ce = F.cross_entropy(logits, labels)
    if kd is None:
        return ce
    with torch.no_grad():
        soft_target = F.log_softmax(kd.teacher(images) / kd.temperature, dim=1)
    soft = F.log_softmax(logits / kd.temperature, dim=1)
    kl = F.kl_div(soft, soft_target, reduction="batchmean", log_target=True)
    return (1 - kd.weight) * ce + kd.weight * kd.temperature**2 * kl


def fit(model: nn.Module, dataset: Dataset, *, epochs: int, lr: float, batch_size: int,
        optimizer: Optimizer = Optimizer.SGD, weight_decay: float = 4e-5, seed: int = 0,
        distill: Distillation | None = None, progress: bool = True, desc: str = "train") -> TrainReport:
    """Train `model` in place with a warm-up + cosine schedule; returns the last epoch's mean loss."""
    torch.manual_seed(seed)
    loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer is Optimizer.ADAM:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    warmup = min(total // 10, len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    if distill is not None:
        distill.teacher.eval()
    start, mean_loss = time.perf_counter(), float("nan")
    bar = Progress(total, desc, "batch", enabled=progress, leave=False)
    model.to(memory_format=torch.channels_last)  # oneDNN's faster CPU convolutions (~1.2x for MobileNet v1)
    for epoch in range(epochs):
        model.train()
        running, count = 0.0, 0
        for images, labels in loader:
            images = images.contiguous(memory_format=torch.channels_last)
            loss = _loss(model(images), images, labels, distill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running, count = running + loss.item() * len(labels), count + len(labels)
            bar.update(status=f"epoch={epoch + 1}, loss={running / count:.3f}")
        mean_loss = running / max(1, count)
        log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, epochs, mean_loss)
    bar.close()
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return TrainReport(epochs=epochs, seconds=time.perf_counter() - start, final_loss=mean_loss)


@torch.no_grad()
def torch_top1(model: nn.Module, dataset: Dataset, batch_size: int = 64) -> float:
    """Top-1 accuracy of a PyTorch model (used for quick checks; rows are measured on TVM)."""
    model.eval()
    correct = total = 0
    for images, labels in make_loader(dataset, batch_size):
        correct += (model(images).argmax(1) == labels).sum().item()
        total += len(labels)
    return correct / max(1, total)
