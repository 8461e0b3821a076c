"""The tuning databases shipped in harness/tuning_db/ load and cover the kernels of the shipped recipes.

Host-independent: each database is checked against the tasks its target extracts (a compile-side step; no
kernel runs), whatever CPU runs the test. No tuning happens here.
"""

from dataclasses import replace
from pathlib import Path

import pytest

from harness.compile import database, kernels
from harness.compile.target import VNNI, X86_64_V3, X86_64_V4, build_target, target_key, target_spec
from harness.device import load_device
from harness.recipe import available_recipes, load_recipe
from harness.specs import TuningCoverage
from harness.tune import structural_exports, tuning_modules, with_references
from harness.workspace import Workspace

LEVELS = {"x86-64-v3-t2": X86_64_V3, "x86-64-v4-t2": X86_64_V3 | X86_64_V4,
          "x86-64-v4-vnni-t2": X86_64_V3 | X86_64_V4 | {VNNI}}

# What each shipped database covers in full (harness/tuning_db/README.md says how each was made).
ALL = ["v1_fp32", "v2_fp32", "v1_int8", "v2_int8", "v1_pruned50", "v1_pruned_int8", "v2_pruned_int8", "v1_alpha025",
       "v1_alpha050", "v1_alpha075", "v1_res128", "v1_res160", "v1_grid", "resnet18_fp32", "resnet18_int8",
       "resnet50_fp32", "vgg16_fp32", "vgg16_int8"]
COVERS = {
    "x86-64-v3-t2": ALL,
    "x86-64-v4-t2": ALL,
    "x86-64-v4-vnni-t2": ALL,
}


def test_every_shipped_database_has_a_known_level_and_coverage() -> None:
    shipped = sorted(p.name for p in database.SHIPPED_DIR.iterdir() if database.shipped_dir(p.name))
    assert shipped == sorted(COVERS) == sorted(LEVELS)
    assert sorted(ALL) == sorted(available_recipes())
    for recipes in COVERS.values():
        assert set(recipes) <= set(ALL)


def _coverage(key: str, recipe: str, tmp_path: Path) -> TuningCoverage:
    """Coverage of `recipe` (and its reference) by the shipped database `key`, for the target of that level."""
    profile = load_device("x86")
    assert target_key(target_spec(profile, LEVELS[key])) == key
    fabricated = replace(profile, target=target_spec(profile, LEVELS[key]))  # that level, whatever this host is
    exports = structural_exports(with_references([load_recipe(recipe)]), Workspace(tmp_path), progress=False)
    mods = tuning_modules(exports, fabricated)
    db = tmp_path / "tuning" / key
    database.seed(db, database.shipped_dir(key))
    return kernels.coverage(mods, build_target(fabricated), db)


@pytest.mark.parametrize("key", sorted(COVERS))
def test_quick_start_recipe_is_fully_tuned_at_every_level(key: str, tmp_path: Path) -> None:
    covered = _coverage(key, "v1_fp32", tmp_path)
    assert covered.tuned == covered.total > 20, covered


@pytest.mark.slow  # extracts the kernels of every covered recipe at full size: minutes
@pytest.mark.parametrize(("key", "recipe"), [(k, r) for k, rs in sorted(COVERS.items()) for r in rs])
def test_shipped_database_covers_its_recipes(key: str, recipe: str, tmp_path: Path) -> None:
    covered = _coverage(key, recipe, tmp_path)
    assert covered.tuned == covered.total, f"{key} covers {covered} kernels of {recipe}"
