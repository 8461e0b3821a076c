"""Every shipped recipe runs through the whole pipeline, shrunk to 32×32 inputs and a few images."""

from dataclasses import replace

import pytest

from harness.device import load_device
from harness.pipeline import run_recipe
from harness.recipe import RECIPES_DIR, load_recipe
from harness.specs import FinetuneSpec, QuantizeSpec, Recipe, ResolutionSpec, StepSpec
from harness.workspace import Workspace

HEAVY = {"vgg16_fp32", "vgg16_int8", "resnet50_fp32"}  # hundreds of MB of weights: slow suite only
# paths the default suite already runs: int8 through v1_int8 and v2_int8, pruning through v1_pruned50, width
# through v1_alpha025, resolution through v1_res128
REPEATS = {"v2_pruned_int8", "resnet18_int8", "v1_pruned_int8", "v1_alpha050", "v1_alpha075", "v1_res160"}
SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not load_recipe(p).sweep)


def _shrunk(step: StepSpec) -> StepSpec:
    """The step at a small scale that keeps what it does: a resolution becomes its share of 32 pixels."""
    if isinstance(step, ResolutionSpec):
        return replace(step, value=step.value if isinstance(step.value, float) else max(8, step.value * 32 // 224))
    if isinstance(step, FinetuneSpec):
        return replace(step, epochs=1)
    if isinstance(step, QuantizeSpec):
        return replace(step, calibration_samples=8)
    return step


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory) -> Workspace:
    """One workspace for all: recipes that share a reference (or a model) build it once, as a user's runs do."""
    return Workspace(tmp_path_factory.mktemp("shipped"))


def shrink(name: str) -> Recipe:
    """The shipped recipe at 32×32 (resolution steps scaled alike), untrained, 16 images, 2 timed repeats."""
    recipe = load_recipe(name)
    return replace(
        recipe,
        data=replace(recipe.data, resolution=32, eval_samples=16),
        train=replace(recipe.train, epochs=0),
        measure=replace(recipe.measure, repeats=2, warmup=1, peers=False),
        steps=tuple(map(_shrunk, recipe.steps)),
    )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY | REPEATS else n for n in SHIPPED]
)
def test_shipped_recipe_runs(name: str, shared_workspace: Workspace) -> None:
    recipe = shrink(name)
    rows = run_recipe(recipe, load_device("x86"), workspace=shared_workspace, progress=False)
    assert len(rows) == (2 if recipe.steps else 1)
    assert rows[-1].recipe == recipe.name and rows[-1].latency_ms_median > 0
    assert 0 <= rows[-1].top1 <= 1
    original = load_recipe(name)
    assert rows[-1].resolution < 32 if original.resolution < original.data.resolution else rows[-1].resolution == 32
