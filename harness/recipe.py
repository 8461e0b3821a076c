"""Recipes: YAML → `Recipe` (see `harness.specs`), validated on load: unknown keys, wrong types and a
wrong step order are one-line errors naming the file and the key."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.limits import RANGES
from harness.schema import convert, from_dict, load_yaml, shown
from harness.specs import (
    STEP_ALIASES,
    STEPS,
    SWEEP_DTYPES,
    SWEEP_KEYS,
    ArchitectureStep,
    DatasetName,
    QuantizeSpec,
    Recipe,
    ResolutionSpec,
    StepSpec,
    WidthSpec,
    step_kind,
)

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def parse_step(raw: Any, where: str) -> StepSpec:
    """One step: a single-key mapping such as `{width: 0.5}` or `{prune: {ratio: 0.5}}`."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise HarnessError(f"{where}: a step is a mapping with one key, one of: {', '.join(STEPS)}")
    ((kind, value),) = raw.items()
    if kind not in STEPS:
        raise HarnessError(f"{where}: unknown step {kind!r}; allowed: {', '.join(STEPS)}")
    cls = STEPS[kind]
    if issubclass(cls, ArchitectureStep):  # `- width: 0.5`: errors name the step's key, not the field behind it
        value = {"value": convert(typing.get_type_hints(cls)["value"], value, f"{where}.{kind}")}
    elif value is None:
        value = {}
    elif not isinstance(value, dict):
        raise HarnessError(f"{where}.{kind}: expected a mapping of options, got {value!r}")
    aliases = STEP_ALIASES.get(kind, {})
    spelled = {next((k for k, f in aliases.items() if f == name), name) for name in cls.__dataclass_fields__}
    unknown = sorted(map(str, set(value) - spelled))
    if unknown:
        raise HarnessError(f"{where}.{kind}: unknown key {shown(unknown[0])}; allowed: {', '.join(sorted(spelled))}")
    step = from_dict(cls, {aliases.get(k, k): v for k, v in value.items()}, f"{where}.{kind}")
    if isinstance(step, QuantizeSpec) and step.dtype != "int8":
        extra = sorted(map(str, set(value) - {"dtype"}))
        if extra:
            raise HarnessError(f"{where}.quantize.{extra[0]}: applies to int8 only (dtype is {step.dtype})")
    return step


def _check_order(steps: tuple[StepSpec, ...], where: str) -> None:
    seen_compression, seen_quantize = None, False
    for i, step in enumerate(steps):
        if isinstance(step, ArchitectureStep) and seen_compression is not None:
            raise HarnessError(
                f"{where}.steps[{i}]: {step_kind(step)} must come before {seen_compression} "
                "(it changes the architecture that is trained)"
            )
        if seen_quantize:
            raise HarnessError(
                f"{where}.steps[{i}]: {step_kind(step)} cannot follow quantize "
                "(quantization works on the exported ONNX model and must be the last step)"
            )
        if not isinstance(step, ArchitectureStep):
            seen_compression = seen_compression or step_kind(step)
        seen_quantize = step_kind(step) == "quantize"


def _check_applicable(recipe: Recipe, raw_data: Any, where: str) -> None:
    """Keys that would be silently ignored are errors: a second width or resolution step (the last would win), a
    data key its data set does not read. (`model.width` with a width step is not one: it is the reference's α.)"""
    for kind in (WidthSpec, ResolutionSpec):
        at = [i for i, step in enumerate(recipe.steps) if isinstance(step, kind)]
        if len(at) > 1:
            raise HarnessError(f"{where}.steps[{at[1]}]: a second {step_kind(recipe.steps[at[1]])} step (only the last "
                               "would apply); give one")
    check_resolution(recipe, f"{where}.steps")
    given = set(raw_data) if isinstance(raw_data, dict) else set()
    if recipe.data.name == DatasetName.DIGITS and "path" in given:
        raise HarnessError(f"{where}.data.path: digits ships with scikit-learn and reads no folder (path is for "
                           "imagefolder and cifar10)")
    if recipe.data.name != DatasetName.DIGITS and "val_fraction" in given:
        raise HarnessError(f"{where}.data.val_fraction: applies to digits only ({recipe.data.name} has its own "
                           "validation split)")


def check_resolution(recipe: Recipe, where: str) -> None:
    """A resolution multiplier that gives less than the smallest input is an error (it would be raised to it)."""
    smallest = RANGES["resolution"].lo
    for i, step in enumerate(recipe.steps):
        if isinstance(step, ResolutionSpec) and isinstance(step.value, float) \
                and round(recipe.data.resolution * step.value) < smallest:
            raise HarnessError(f"{where}[{i}]: resolution {step.value} × {recipe.data.resolution} px is below the "
                               f"smallest input, {smallest:g} px")


def recipe_from_dict(data: dict[str, Any], where: str, default_name: str = "recipe") -> Recipe:
    """Validate a recipe mapping (unknown keys, wrong types and step order are one-line errors)."""
    data = dict(data)
    data.setdefault("name", default_name)
    raw_steps = data.pop("steps", []) or []
    if not isinstance(raw_steps, list):
        raise HarnessError(f"{where}.steps: expected a list of steps, got {raw_steps!r}")
    steps = tuple(parse_step(s, f"{where}.steps[{i}]") for i, s in enumerate(raw_steps))
    _check_order(steps, where)
    raw_sweep = data.pop("sweep", {}) or {}
    recipe = from_dict(Recipe, data, where)
    sweep = convert(dict[str, list[Any]], raw_sweep, f"{where}.sweep")
    check_sweep(sweep, f"{where}.sweep")
    recipe = replace(recipe, steps=steps, sweep=sweep)
    _check_applicable(recipe, data.get("data"), where)
    return recipe


def check_sweep(sweep: Mapping[str, Sequence[Any]], where: str) -> None:
    """Every key of a sweep grid is known and every value one its step takes (a recipe's `sweep:` is checked on
    load, as `run` reads the file too)."""
    for key, values in sweep.items():
        if key not in SWEEP_KEYS:
            raise HarnessError(f"{where}: unknown key {shown(key)}; allowed: {', '.join(SWEEP_KEYS)}")
        if not values:
            raise HarnessError(f"{where}.{key}: no values")
        for i, value in enumerate(values):
            try:
                if key == "dtype" and value not in SWEEP_DTYPES:
                    raise ValueError(f"{shown(value)} is not allowed; expected one of {', '.join(SWEEP_DTYPES)}")
                if key != "dtype":
                    {"width": WidthSpec, "resolution": ResolutionSpec}[key](value=value)
            except ValueError as exc:
                raise HarnessError(f"{where}.{key}[{i}]: {exc}") from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe file (or a shipped recipe by name, e.g. 'v1_fp32'; a file of that name comes first)."""
    path = Path(name_or_path)
    if not path.is_file() and path.suffix == "" and path.name == str(name_or_path):
        if not (RECIPES_DIR / f"{path}.yaml").is_file():
            raise HarnessError(f"{str(name_or_path)!r}: neither a recipe file nor a shipped recipe (shipped: "
                               f"{', '.join(available_recipes())})")
        path = RECIPES_DIR / f"{path}.yaml"
    return replace(recipe_from_dict(load_yaml(path), str(path), default_name=path.stem), source=str(name_or_path))


def available_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
