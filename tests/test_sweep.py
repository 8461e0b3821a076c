import pytest

from harness.errors import HarnessError
from harness.recipe import load_recipe, recipe_from_dict
from harness.specs import QuantizeSpec, ResolutionSpec, WidthSpec, step_kind
from harness.sweep import expand


def test_grid_is_the_cartesian_product_in_order() -> None:
    recipe = load_recipe("v1_fp32")
    variants = expand(recipe, {"width": [1.0, 0.5], "resolution": [224, 160, 128]})
    assert len(variants) == 6
    assert [(v.width, v.resolution) for v in variants] == [
        (1.0, 224), (1.0, 160), (1.0, 128), (0.5, 224), (0.5, 160), (0.5, 128)]
    assert variants[3].name == "v1_fp32[width=0.5,resolution=224]"
    assert variants[3].steps == (WidthSpec(value=0.5), ResolutionSpec(value=224))
    assert len({v.key() for v in variants}) == 6
    # Equal (α, ρ) means equal trained base: the sweep reuses one training per cell.
    assert variants[0].base_key() == recipe.base_key()


def test_recipe_sweep_key_is_the_default_grid() -> None:
    recipe = recipe_from_dict({"model": {"name": "mobilenet_v1"}, "sweep": {"width": [0.25, 0.5]}}, "r.yaml")
    assert [v.width for v in expand(recipe)] == [0.25, 0.5]


def test_a_cell_is_not_its_recipe_file() -> None:
    """The untuned-kernels hint names a recipe by its file; a cell's kernels are not that file's."""
    cells = expand(load_recipe("v1_grid"))
    assert load_recipe("v1_grid").source == "v1_grid" and all(c.source == "" for c in cells)


def test_a_resolution_multiplier_below_the_smallest_input_is_an_error() -> None:
    recipe = recipe_from_dict({"model": {"name": "mobilenet_v1"}, "data": {"resolution": 32},
                               "sweep": {"resolution": [0.5, 0.1]}}, "r.yaml")
    with pytest.raises(HarnessError, match=r"sweep cell recipe\[resolution=0.1\]: steps\[0\]: resolution 0.1 × 32 "
                                           "px is below the smallest input, 8 px"):
        expand(recipe)


def test_sweep_errors() -> None:
    recipe = load_recipe("v1_fp32")
    with pytest.raises(HarnessError, match="nothing to sweep"):
        expand(recipe)
    with pytest.raises(HarnessError, match="sweep: unknown key 'depth'"):
        expand(recipe, {"depth": [1]})
    with pytest.raises(HarnessError, match=r"sweep\.width: no values"):
        expand(recipe, {"width": []})
    with pytest.raises(HarnessError, match="width must be in"):
        expand(recipe, {"width": [5]})


def test_a_dtype_sweep_keeps_the_recipes_own_quantize_options() -> None:
    recipe = load_recipe("v1_pruned_int8")  # quantize: {dtype: int8, reduce_range: true}, after prune and finetune
    fp32, int8, fp16 = expand(recipe, {"dtype": ["fp32", "int8", "fp16"]})
    assert [step_kind(s) for s in fp32.steps] == ["prune", "finetune"]
    assert int8.steps == recipe.steps  # its int8 step, reduce_range included
    assert fp16.steps[-1] == QuantizeSpec(dtype="fp16")  # the int8 options do not apply to fp16
