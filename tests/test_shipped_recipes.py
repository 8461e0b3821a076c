"""Every shipped recipe runs through the whole pipeline, shrunk to 32×32 inputs and a few images."""

from dataclasses import replace
from pathlib import Path

import pytest

from harness.device import load_device
from harness.pipeline import run_recipe
from harness.recipe import RECIPES_DIR, load_recipe
from harness.workspace import Workspace

HEAVY = {"vgg16_fp32", "vgg16_int8", "resnet50_fp32"}  # hundreds of MB of weights: slow suite only
SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not load_recipe(p).sweep)


def shrink(name: str):
    recipe = load_recipe(name)
    steps = tuple(replace(s, epochs=1) if hasattr(s, "epochs") else s for s in recipe.steps)
    steps = tuple(replace(s, calibration_samples=8) if hasattr(s, "calibration_samples") else s for s in steps)
    return replace(
        recipe,
        data=replace(recipe.data, resolution=32, eval_samples=16),
        train=replace(recipe.train, epochs=0),
        measure=replace(recipe.measure, repeats=2, warmup=1, peers=False),
        steps=tuple(s for s in steps if type(s).__name__ != "ResolutionSpec"),
    )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in SHIPPED]
)
def test_shipped_recipe_runs(name: str, tmp_path: Path) -> None:
    recipe = shrink(name)
    rows = run_recipe(recipe, load_device("x86"), workspace=Workspace(tmp_path), progress=False)
    assert len(rows) == (2 if recipe.steps else 1)
    assert rows[-1]["recipe"] == recipe.name and rows[-1]["latency_ms_median"] > 0
    assert 0 <= rows[-1]["top1"] <= 1
