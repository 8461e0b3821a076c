"""Sweeps: a grid of α × ρ × dtype variants of one recipe, run as one command against one reference."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from harness.errors import HarnessError
from harness.recipe import check_resolution, check_sweep, parse_step
from harness.specs import Recipe, ResolutionSpec, WidthSpec, step_kind


def _with_point(recipe: Recipe, point: Mapping[str, Any]) -> Recipe:
    """The recipe with its width/resolution/quantize steps replaced by the grid point's values."""
    arch: list[Any] = []
    rest = [s for s in recipe.steps if not isinstance(s, WidthSpec | ResolutionSpec)]
    if "width" in point:
        arch.append(parse_step({"width": float(point["width"])}, "sweep.width"))
    else:
        arch += [s for s in recipe.steps if isinstance(s, WidthSpec)]
    if "resolution" in point:
        arch.append(parse_step({"resolution": point["resolution"]}, "sweep.resolution"))
    else:
        arch += [s for s in recipe.steps if isinstance(s, ResolutionSpec)]
    if "dtype" in point:
        own = [s for s in rest if step_kind(s) == "quantize"]  # kept where its dtype is the point's (its options)
        rest = [s for s in rest if step_kind(s) != "quantize"]
        if point["dtype"] != "fp32":
            rest.append(own[0] if own and own[0].dtype == point["dtype"] else
                        parse_step({"quantize": {"dtype": point["dtype"]}}, "sweep.dtype"))
    label = ",".join(f"{k}={v}" for k, v in point.items())
    cell = replace(recipe, name=f"{recipe.name}[{label}]", steps=tuple(arch + rest), sweep={}, source="")
    check_resolution(cell, f"sweep cell {cell.name}: steps")
    return cell


def expand(recipe: Recipe, grid: Mapping[str, Sequence[Any]] | None = None) -> list[Recipe]:
    """All variants of `recipe` over `grid` (default: the recipe's own `sweep:`), in grid order."""
    grid = dict(grid or recipe.sweep)
    if not grid:
        raise HarnessError(f"recipe {recipe.name}: nothing to sweep (give --width/--resolution/--dtype or `sweep:`)")
    check_sweep(grid, "sweep")
    keys = list(grid)
    return [_with_point(recipe, dict(zip(keys, combo, strict=True))) for combo in itertools.product(*grid.values())]
