"""Tuning orchestration: the device's database (seeded from the shipped one), tuning recipes into it, the
warning (with the command that fixes it) when an artifact has untuned kernels, and refreshing the shipped
databases."""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import tvm

from harness.audit import Audit, audit
from harness.build import Compiled, Exported, export_structural
from harness.cache import write_atomic
from harness.compile import database, prepare_module, remeasure, tuning
from harness.compile.intrinsics import dot_product
from harness.compile.kernels import extract_tasks, module_tasks
from harness.compile.runners import check_runner
from harness.compile.target import build_target, target_key, target_spec
from harness.device import DeviceProfile
from harness.recipe import available_recipes, load_recipe
from harness.specs import Recipe
from harness.workspace import Workspace

log = logging.getLogger(__name__)

TUNE_MINUTES_PER_KERNEL = 0.3  # 2 cores: 20 minutes for the 56 kernels of v1+v2 gave 1.1x ONNX Runtime on a Xeon


def tuning_database(profile: DeviceProfile, ws: Workspace) -> Path:
    """The tuning database of `profile`'s (portable) target in `ws`, seeded from the shipped one for that target."""
    key = target_key(target_spec(profile))
    path = database.database_dir(ws.tuning_root, key)
    database.seed(path, database.shipped_dir(key))
    return path


def tune_command(recipe: Recipe, profile: DeviceProfile, untuned: int) -> str:
    """The `harness tune` command that tunes the kernels `recipe` lacks on `profile`, with a fitting budget."""
    minutes = max(2, round(untuned * TUNE_MINUTES_PER_KERNEL))
    name = shlex.quote(recipe.source or recipe.name.removesuffix(":reference"))
    tracker = f" --tracker {profile.remote.tracker}" if profile.remote and profile.remote.tracker else ""
    gpu = f" --gpu {profile.gpu}" if profile.gpu_index else ""
    return (f"python -m harness tune {name} --device {shlex.quote(profile.source or profile.name)}{tracker}{gpu} "
            f"--batch {recipe.measure.batch} --trials 100000 --minutes {minutes}")


def warn_untuned(compiled: Compiled, profile: DeviceProfile, ws: Workspace) -> None:
    """One warning line when the artifact has untuned kernels: what is missing and the command that fixes it."""
    report, recipe = compiled.artifact.report, compiled.recipe
    covered = report.tuned_kernels
    if covered.complete:
        return
    untuned = covered.total - covered.tuned
    if report.schedules == "dlight":
        log.info("%s: %d of %d kernels run DLight's default GPU schedules; tuning may speed them up: %s",
                 recipe.name, untuned, covered.total, tune_command(recipe, profile, untuned))
        return
    key = target_key(target_spec(profile))
    others = database.databases_for_other_threads(key, [ws.tuning_root, database.SHIPPED_DIR])
    other = f" (databases exist for other thread counts: {', '.join(others)}; not used)" if others else ""
    log.warning("%s: %d of %d kernels are untuned for %s%s, so its latency is not representative; fix: %s",
                recipe.name, untuned, covered.total, key, other, tune_command(recipe, profile, untuned))


def tuning_modules(exports: list[Exported], profile: DeviceProfile) -> list[tvm.IRModule]:
    """The Relax modules that `exports` compile to on `profile`."""
    dot = dot_product(build_target(profile))
    return [prepare_module(e.onnx, layout=profile.layout, options=e.options, dot=dot)
            for e in exports]


def structural_exports(variants: list[Recipe], ws: Workspace, progress: bool = True) -> list[Exported]:
    """`variants` exported untrained (see `build.structural`): their kernels, without the training."""
    return [export_structural(variant, ws, progress)[0] for variant in variants]


def tune_exports(exports: list[Exported], profile: DeviceProfile, ws: Workspace, *, trials: int,
                 minutes: float | None = None, progress: bool = True,
                 refine: Sequence[Exported] = ()) -> tuning.TuneReport:
    """Tune the kernels of `exports` (as compiled for `profile`) into the device's database, together.

    Kernels shared between variants are tuned once; kernels already in the database are skipped, but for
    those of the exports in `refine` (some of `exports`), which are tuned again from their best schedules.
    """
    db = tuning_database(profile, ws)
    log.info("tuning %d model(s) for %s into %s", len(exports), profile.name, db)
    mods = tuning_modules(exports, profile)
    again = [mod for export, mod in zip(exports, mods, strict=True) if any(export is r for r in refine)]
    return tuning.tune(mods, build_target(profile), db, trials=trials, minutes=minutes, profile=profile,
                       progress=progress, refine=again)


def kernels_of(exports: list[Exported], profile: DeviceProfile) -> list[tvm.IRModule]:
    """The distinct kernels (tuning workloads) that `exports` compile to on `profile`."""
    return [t.dispatched[0] for t in extract_tasks(tuning_modules(exports, profile), build_target(profile))]


def remeasure_database(profile: DeviceProfile, ws: Workspace, recipes: list[Recipe] | None = None,
                       progress: bool = True) -> remeasure.RemeasureReport:
    """Time the records of `profile`'s database again, here with the profile's threads or on its board: those of
    the kernels of `recipes` and their references, or every record."""
    check_runner(profile)
    kernels = None if recipes is None else kernels_of(structural_exports(with_references(recipes), ws, progress),
                                                        profile)
    return remeasure.remeasure(tuning_database(profile, ws), build_target(profile), profile, kernels=kernels,
                               progress=progress)


def audit_recipes(recipes: list[Recipe], profile: DeviceProfile, ws: Workspace, progress: bool = True
                  ) -> tuple[Audit, Path]:
    """Audit the schedules the kernels of `recipes` (not their references) get from `profile`'s database, timed here
    (harness.audit); the table is also written as a CSV under `results/audit/`."""
    exports = structural_exports(recipes, ws, progress)
    target = build_target(profile)
    per_model = module_tasks(tuning_modules(exports, profile), target)
    several = len({r.measure.batch for r in recipes}) > 1
    models = {f"{r.name} (batch {r.measure.batch})" if several else r.name: tasks
              for r, tasks in zip(recipes, per_model, strict=True)}
    result = audit(models, tuning_database(profile, ws), target, profile, progress)
    path = write_atomic(ws.root / "audit" / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.csv",
                      result.table.to_csv(index=False))
    return result, path


def at_batches(recipes: list[Recipe], batches: Sequence[int] | None) -> list[Recipe]:
    """Each of `recipes` at each of `batches` (None: as they are); a batch size is part of the kernels' shapes."""
    return [r.with_batch(b) for r in recipes for b in batches] if batches else recipes


def with_references(recipes: list[Recipe]) -> list[Recipe]:
    """`recipes` and their references, each distinct variant once."""
    variants: dict[str, Recipe] = {}
    for recipe in recipes:
        for variant in (recipe.reference(), recipe):
            variants.setdefault(variant.key(), variant)
    return list(variants.values())


def tune_recipes(recipes: list[Recipe], profile: DeviceProfile, ws: Workspace, *, trials: int,
                 minutes: float | None = None, progress: bool = True, refine: bool = False) -> tuning.TuneReport:
    """Tune `recipes` and their references (untrained: only their kernels matter). With `refine`, the kernels
    of `recipes` are tuned again too; their references' only where they have no schedule (a refine spends its
    budget on the recipes named)."""
    if trials > 0:
        check_runner(profile)
    variants = with_references(recipes)
    exports = structural_exports(variants, ws, progress)
    named = {r.key() for r in recipes}
    again = [e for v, e in zip(variants, exports, strict=True) if refine and v.key() in named]
    return tune_exports(exports, profile, ws, trials=trials, minutes=minutes, progress=progress, refine=again)


def refresh_shipped(profile: DeviceProfile, ws: Workspace, *, trials: int, minutes: float | None,
                    progress: bool = True, refine: bool = False, batches: Sequence[int] | None = None
                    ) -> tuple[tuning.TuneReport | None, Path, int]:
    """Tune every shipped recipe for `profile` (at `batches`, else at its own batch size) and write the result as
    the database shipped for its target: the records of those recipes' kernels.

    Returns the tuning report (None with `trials` 0: pack only), the shipped folder and its size in bytes.
    """
    if trials > 0:
        check_runner(profile)
    recipes = at_batches([load_recipe(n) for n in available_recipes()], batches)
    exports = structural_exports(with_references(recipes), ws, progress)
    report = tune_exports(exports, profile, ws, trials=trials, minutes=minutes, progress=progress,
                          refine=exports if refine else ()) if trials > 0 else None
    shipped = database.SHIPPED_DIR / target_key(target_spec(profile))
    size = database.pack(tuning_database(profile, ws), shipped, kernels_of(exports, profile))
    return report, shipped, size
