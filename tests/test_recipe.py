from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.recipe import RECIPES_DIR, load_recipe, recipe_from_dict
from harness.specs import Recipe, ResolutionSpec, WidthSpec, step_summary

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.resolution >= 8 and recipe.width > 0


def test_recipe_by_name_and_defaults() -> None:
    recipe = load_recipe("v1_fp32")
    assert recipe.model.name == "mobilenet_v1"
    assert recipe.resolution == 224 and recipe.width == 1.0
    assert recipe.steps == () and recipe.reference().steps == ()


def _recipe(**extra) -> dict:
    return {"model": {"name": "mobilenet_v1"}, **extra}


def test_architecture_steps_set_width_and_resolution() -> None:
    recipe = recipe_from_dict(_recipe(steps=[{"width": 0.5}, {"resolution": 160}]), "r.yaml")
    assert recipe.width == 0.5 and recipe.resolution == 160
    assert recipe.steps == (WidthSpec(value=0.5), ResolutionSpec(value=160))
    assert recipe.compression_steps == ()
    assert [step_summary(s) for s in recipe.steps] == ["width=0.5", "resolution=160"]
    rho = recipe_from_dict(_recipe(steps=[{"resolution": 0.5}]), "r.yaml")
    assert rho.resolution == 112


def test_keys_change_with_what_matters() -> None:
    a = recipe_from_dict(_recipe(), "a.yaml")
    b = recipe_from_dict(_recipe(description="other words"), "b.yaml")
    c = recipe_from_dict(_recipe(steps=[{"width": 0.5}]), "c.yaml")
    assert a.key() == b.key()
    assert a.base_key() != c.base_key()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_recipe(modle=1), r"r\.yaml: unknown key 'modle'; allowed: .*model"),
        ({"model": {"name": "mobilenet_v1", "widht": 2}}, r"r\.yaml\.model: unknown key 'widht'"),
        ({"model": {"name": "mobilenet_v1", "width": "big"}}, r"r\.yaml\.model\.width: expected float, got 'big'"),
        (_recipe(train={"epochs": "3"}), r"r\.yaml\.train\.epochs: expected int"),
        (_recipe(data={"name": "mnist"}), r"r\.yaml\.data\.name: 'mnist' is not allowed; expected one of 'digits'"),
        (_recipe(steps=[{"shrink": 1}]), r"r\.yaml\.steps\[0\]: unknown step 'shrink'; allowed: width, resolution"),
        (_recipe(steps=[{"width": 0.5, "resolution": 1}]), r"a step is a mapping with one key"),
        (_recipe(steps=[{"width": -1}]), r"steps\[0\]\.width: width must be in \(0, 4\]"),
        (_recipe(steps=[{"width": "x"}]), r"steps\[0\]\.width: expected float, got 'x'$"),  # not .width.value
        (_recipe(steps=[{"resolution": [1]}]), r"steps\[0\]\.resolution: expected int or float, got \[1\]$"),
        (_recipe(steps=[{"finetune": {"epochs": 1}}, {"width": 0.5}]), r"width must come before finetune"),
        (_recipe(steps=[{"finetune": 3}]), r"finetune: expected a mapping of options"),
        (_recipe(sweep={"depth": [1]}), r"sweep: unknown key 'depth'"),
        (_recipe(sweep={"width": ["a"]}), r"r\.yaml\.sweep\.width\[0\]: width must be a number in \(0, 4\], got 'a'"),
        (_recipe(sweep={"width": [True]}), r"sweep\.width\[0\]: width must be a number"),
        (_recipe(sweep={"width": [[1]]}), r"sweep\.width\[0\]: width must be a number"),
        (_recipe(sweep={"width": [0.5, 7]}), r"sweep\.width\[1\]: width must be in \(0, 4\], got 7"),
        (_recipe(sweep={"resolution": ["abc"]}), r"sweep\.resolution\[0\]: a resolution \(pixels\) must be a number"),
        (_recipe(sweep={"dtype": ["int8", 1]}), r"sweep\.dtype\[1\]: 1 is not allowed; expected one of fp32"),
        (_recipe(sweep={"dtype": []}), r"sweep\.dtype: no values"),
        (_recipe(data={"seed": -1}), r"r\.yaml\.data: seed must be in \[0, 4294967295\], got -1"),
        (_recipe(train={"seed": 2**70}), r"r\.yaml\.train: seed must be in"),
        (_recipe(name="../../etc/x"), r"r\.yaml: name '\.\./\.\./etc/x': it names files and folders"),
        (_recipe(name=""), r"r\.yaml: name '': it names files"),
        (_recipe(name="a/b"), r"without / or"),
        ({}, r"r\.yaml: missing required key 'model'"),
        # keys that would be silently ignored
        (_recipe(steps=[{"width": 0.5}, {"width": 0.25}]), r"steps\[1\]: a second width step \(only the last would"),
        (_recipe(steps=[{"resolution": 160}, {"resolution": 128}]), r"steps\[1\]: a second resolution step"),
        (_recipe(data={"name": "digits", "path": "/data"}), r"r\.yaml\.data\.path: digits ships with scikit-learn"),
        (_recipe(data={"name": "imagefolder", "path": "/d", "val_fraction": 0.1}),
         r"data\.val_fraction: applies to digits only \(imagefolder has"),
        (_recipe(steps=[{"quantize": {"dtype": "fp16", "per_channel": True}}]),
         r"steps\[0\]\.quantize\.per_channel: applies to int8 only \(dtype is fp16\)"),
    ],
)
def test_bad_recipes_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(HarnessError, match=message):
        recipe_from_dict(data, "r.yaml")


def test_a_sweep_takes_every_value_its_steps_take() -> None:
    recipe = recipe_from_dict(_recipe(sweep={"width": [1, 0.5], "resolution": [160, 0.5], "dtype": ["fp32", "int8"]}),
                              "r.yaml")
    assert recipe.sweep == {"width": (1, 0.5), "resolution": (160, 0.5), "dtype": ("fp32", "int8")}


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="file not found"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(HarnessError, match=r"'v1_fp3': neither a recipe file nor a shipped recipe \(shipped: .*v1_"):
        load_recipe("v1_fp3")
    with pytest.raises(HarnessError, match="a folder, not a YAML file"):
        load_recipe(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(HarnessError, match=r"bad\.yaml: invalid YAML \(line"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(HarnessError, match="expected a mapping at the top level"):
        load_recipe(listy)


def test_recipe_is_frozen() -> None:
    recipe = load_recipe("v1_fp32")
    with pytest.raises(AttributeError):
        recipe.name = "x"  # type: ignore[misc]
    assert isinstance(recipe, Recipe)
