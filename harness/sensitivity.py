"""Pruning sensitivity: prune one layer group at a time at several ratios and record the accuracy drop;
for a recipe, the table, its plot and the per-layer ratios a prune step can use, written beside the results."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from harness.build import trained_base
from harness.compress.prune import prune
from harness.data import load_data
from harness.models.counting import count_macs
from harness.progress import progress_over
from harness.results import write_json
from harness.specs import PruneSpec, Recipe
from harness.train import torch_top1
from harness.workspace import Workspace

DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7)


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the convolutions whose output channels can be pruned (depthwise ones follow their producer)."""
    return [name for name, mod in model.named_modules()
            if isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.out_channels > 8]


def analyze(model: nn.Module, evaluate: Callable[[nn.Module], float], resolution: int, *,
            ratios: Sequence[float] = DEFAULT_RATIOS, progress: bool = True) -> pd.DataFrame:
    """Top-1 after pruning each layer alone at each ratio: columns layer, ratio, top1, drop, macs."""
    example = torch.zeros(1, 3, resolution, resolution)
    base = evaluate(model)
    rows = [{"layer": "(none)", "ratio": 0.0, "top1": base, "drop": 0.0, "macs": count_macs(model, resolution)}]
    for layer in progress_over(prunable_layers(model), "sensitivity", "layer", enabled=progress):
        for ratio in ratios:
            pruned = copy.deepcopy(model)
            prune(pruned, PruneSpec(ratio=0.0, layer_ratios={layer: ratio}, round_to=None), example)
            top1 = evaluate(pruned.eval())
            rows.append({"layer": layer, "ratio": ratio, "top1": top1, "drop": base - top1,
                         "macs": count_macs(pruned, resolution)})
    return pd.DataFrame(rows)


def suggest_layer_ratios(table: pd.DataFrame, max_drop: float) -> dict[str, float]:
    """Per layer, the largest ratio whose accuracy drop stays within `max_drop`; 0.0 for a layer with none, so that
    a prune step's own `ratio` does not reach the layers that tolerate no pruning."""
    layers = table[table["layer"] != "(none)"]
    ok = layers[layers["drop"] <= max_drop].groupby("layer")["ratio"].max()
    return {layer: float(ok.get(layer, 0.0)) for layer in layers["layer"].unique()}


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


@dataclass(frozen=True, kw_only=True, slots=True)
class Sensitivity:
    """A recipe's sensitivity table, the ratios it suggests, and the files written (`.csv`, `.png`, `.json`)."""

    table: pd.DataFrame
    layer_ratios: dict[str, float]
    stem: Path  # the files are stem.csv, stem.png and stem.json


def analyze_recipe(recipe: Recipe, ws: Workspace, *, ratios: Sequence[float] = DEFAULT_RATIOS,
                   max_drop: float = 0.01, progress: bool = True) -> Sensitivity:
    """Sensitivity of the recipe's trained base model (PyTorch top-1), written to `results/sensitivity/`."""
    splits = load_data(recipe.data, recipe.resolution)
    model = trained_base(recipe, splits, ws, progress)
    table = analyze(model, lambda m: torch_top1(m, splits.val), recipe.resolution, ratios=ratios, progress=progress)
    stem = ws.root / "sensitivity" / f"{recipe.name}-{recipe.base_key()[:8]}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(stem.with_suffix(".csv"), index=False)
    plot(table, stem.with_suffix(".png"), title=f"{recipe.name}: pruning sensitivity (PyTorch top-1)")
    layer_ratios = suggest_layer_ratios(table, max_drop)
    write_json(stem.with_suffix(".json"), {"max_drop": max_drop, "layer_ratios": layer_ratios})
    return Sensitivity(table=table, layer_ratios=layer_ratios, stem=stem)
