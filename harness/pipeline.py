"""One run: build every variant (harness.build), tune what the recipe asks, measure each on the device
(harness.boards, harness.measure_variant), compare with the reference and record the rows (harness.results).

The reference (the recipe without steps) is measured in the same run, so that `acc_delta` and `speedup`
compare like with like.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, replace
from typing import Any

from harness.boards import measure_all
from harness.build import Compiled, compile_variant, export_variant, preflight
from harness.compile.target import build_target
from harness.data import DataSplits, load_data
from harness.device import DeviceProfile
from harness.remote import DeviceUnreachable
from harness.results import Conditions, Row, append_rows, write_json
from harness.schema import content_hash
from harness.specs import Recipe
from harness.tune import tune_exports, tuning_database, warn_untuned
from harness.workspace import RUNNING, Workspace, link_or_copy, package_versions

log = logging.getLogger(__name__)


def compare(rows: list[Row], ref: Row) -> list[Row]:
    """`rows` with acc_delta, speedup (against the reference row) and vs_ort filled in.

    Latency ratios involving an artifact with untuned kernels are left empty, with the reason in `notes`:
    untuned TVM code is 10-200x slower than tuned, so such a ratio measures the tuning, not the model.
    """
    compared = []
    for row in rows:
        notes, speedup, vs_ort = [], None, None
        if row.fully_tuned() and ref.fully_tuned():
            speedup = ref.latency_ms_median / row.latency_ms_median
        else:
            notes.append(f"no speedup: untuned kernels (this {row.tuned_kernels}, reference {ref.tuned_kernels} tuned)")
        if row.ort_latency_ms and row.fully_tuned():
            vs_ort = row.latency_ms_median / row.ort_latency_ms
        elif row.ort_latency_ms:
            notes.append(f"no vs_ort: {row.tuned_kernels} kernels tuned")
        compared.append(replace(row, reference=ref.recipe, acc_delta=row.top1 - ref.top1, speedup=speedup,
                                vs_ort=vs_ort, notes="; ".join(notes) or None))
    return compared


def run_variants(variants: list[Recipe], reference: Recipe, profile: DeviceProfile, *,
                 workspace: Workspace | None = None, progress: bool = True, record: bool = True,
                 tune_minutes: float | None = None) -> list[Row]:
    """Measure `reference` and each variant in one run on `profile`; append the rows to the results table
    (`record`; else the run leaves no folder under `runs/`).

    `tune_minutes`: first tune the kernels the database lacks, for at most that long (as does a recipe's `tune:`).
    """
    ws = workspace or Workspace()
    ws.sweep()
    same = [v for v in variants if v.key() == reference.key()]
    todo = [same[0] if same else reference] + [v for v in variants if v.key() != reference.key()]
    build_target(profile)  # an unusable target fails here, before anything is trained
    data = [load_data(variant.data, variant.resolution) for variant in todo]
    for variant, splits in zip(todo, data, strict=True):
        preflight(variant, splits.num_classes)
    started = time.time()
    builds = _build_all(todo, data, profile, ws, progress, tune_minutes)
    run_id, run_dir = ws.new_run_dir(content_hash([v.key() for v in todo]))
    for i, (compiled, _) in enumerate(builds):
        link_or_copy(compiled.artifact.path, run_dir / f"{i:02d}-{compiled.recipe.key()[:8]}.so")
        link_or_copy(compiled.exported.onnx.path, run_dir / f"{i:02d}-{compiled.recipe.key()[:8]}.onnx")
    summary = {"recipes": [v.name for v in todo], "device": asdict(profile), "versions": package_versions()}
    try:
        rows = [row.stamped(Conditions.now(run_id)) for row in measure_all(builds, profile, progress)]
    except DeviceUnreachable as exc:  # the artifacts stay, for a retry on the board
        write_json(run_dir / "run.json", summary | {"failed": str(exc)})
        (run_dir / RUNNING).unlink(missing_ok=True)
        raise DeviceUnreachable(f"{exc} (compiled artifacts kept in {run_dir})") from None
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    rows = compare(rows, rows[0])
    if not record:  # no row names the run: its folder would be an orphan
        shutil.rmtree(run_dir)
        return rows
    write_json(run_dir / "run.json", summary | {"rows": [r.as_dict() for r in rows], "seconds": time.time() - started})
    try:
        append_rows(rows, ws.table)
    except BaseException:  # the measured rows stay in run.json
        log.error("the rows were not appended to %s; they are kept in %s", ws.table, run_dir / "run.json")
        raise
    finally:
        (run_dir / RUNNING).unlink(missing_ok=True)  # missing where someone removed the folder
    return rows


def _build_all(todo: list[Recipe], data: list[DataSplits], profile: DeviceProfile, ws: Workspace, progress: bool,
               tune_minutes: float | None) -> list[tuple[Compiled, DataSplits]]:
    """Export every variant once, tune them if asked (the recipes' `tune:` or `tune_minutes`), compile each."""
    exports = []
    for i, (variant, splits) in enumerate(zip(todo, data, strict=True)):
        log.info("[%d/%d] %s", i + 1, len(todo), variant.name)
        exports.append(export_variant(variant, splits, ws, progress))
    spec = max((v.tune for v in todo), key=lambda t: t.trials)
    if tune_minutes is not None:
        spec = replace(spec, trials=max(spec.trials, 100_000), minutes=tune_minutes)
    if spec.trials > 0:
        report = tune_exports(exports, profile, ws, trials=spec.trials, minutes=spec.minutes, progress=progress)
        log.info("tuning: %s", report.summary())
    database = tuning_database(profile, ws)
    builds = []
    for exported, splits in zip(exports, data, strict=True):
        compiled = Compiled(exported=exported, artifact=compile_variant(exported, profile, ws, database))
        warn_untuned(compiled, profile, ws)
        builds.append((compiled, splits))
    return builds


def run_recipe(recipe: Recipe, profile: DeviceProfile, **kwargs: Any) -> list[Row]:
    """Run `recipe` (and, when it has steps, its uncompressed reference) on `profile`."""
    return run_variants([recipe], recipe.reference() if recipe.steps else recipe, profile, **kwargs)
