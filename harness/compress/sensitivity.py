"""Pruning sensitivity: prune one layer group at a time at several ratios and record the accuracy drop."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from harness.compress.prune import PruneSpec, prune
from harness.models.counting import count_macs

DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7)


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the convolutions whose output channels can be pruned (depthwise ones follow their producer)."""
    return [name for name, mod in model.named_modules()
            if isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.out_channels > 8]


def analyze(model: nn.Module, evaluate: Callable[[nn.Module], float], resolution: int, *,
            ratios: Sequence[float] = DEFAULT_RATIOS, layers: Sequence[str] | None = None,
            progress: bool = True) -> pd.DataFrame:
    """Top-1 after pruning each layer alone at each ratio: columns layer, ratio, top1, drop, macs."""
    example = torch.zeros(1, 3, resolution, resolution)
    base = evaluate(model)
    rows = [{"layer": "(none)", "ratio": 0.0, "top1": base, "drop": 0.0, "macs": count_macs(model, resolution)}]
    layers = list(layers or prunable_layers(model))
    for layer in tqdm(layers, desc="sensitivity", unit="layer", disable=None if progress else True):
        for ratio in ratios:
            pruned = copy.deepcopy(model)
            prune(pruned, PruneSpec(ratio=0.0, layer_ratios={layer: ratio}, round_to=None), example)
            top1 = evaluate(pruned.eval())
            rows.append({"layer": layer, "ratio": ratio, "top1": top1, "drop": base - top1,
                         "macs": count_macs(pruned, resolution)})
    return pd.DataFrame(rows)


def suggest_layer_ratios(table: pd.DataFrame, max_drop: float) -> dict[str, float]:
    """Per layer, the largest ratio whose accuracy drop stays within `max_drop` (layers with none are left out)."""
    ok = table[(table["layer"] != "(none)") & (table["drop"] <= max_drop)]
    return {layer: float(group["ratio"].max()) for layer, group in ok.groupby("layer", sort=False)}


def plot(table: pd.DataFrame, path: Path, title: str = "pruning sensitivity") -> Path:
    """Accuracy drop against pruning ratio, one line per layer, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for layer, group in table[table["layer"] != "(none)"].groupby("layer", sort=False):
        ax.plot(group["ratio"], 100 * group["drop"], marker="o", label=layer)
    ax.set_xlabel("share of the layer's channels pruned")
    ax.set_ylabel("top-1 drop (points)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
