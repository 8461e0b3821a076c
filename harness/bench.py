"""Side-by-side latency benchmark on this host: TVM untuned, TVM tuned, ONNX Runtime and PyTorch.

Every runtime runs the same model variant with the same input, thread count and repeats, in one process. The
series are interleaved: each round times every runtime of every recipe once, so that a host whose speed drifts
(a shared cloud machine can slow down by half for minutes) slows all series alike and their ratios hold. The
table gives each latency as a ratio to ONNX Runtime's (the runtime people use when they do not compile), and
int8 latencies as a ratio to their fp32 model's. TVM tuned uses the device's tuning database (`harness tune`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.build import Exported, compile_variant, export_structural
from harness.compile import Artifact, CompileReport
from harness.compile.database import database_fingerprint
from harness.compile.target import build_target, target_json
from harness.data import first_batch
from harness.device import DeviceProfile
from harness.errors import HarnessError
from harness.measure import LatencyStats, LocalExecutor, latency_stats, ort_call, settle, time_callable, torch_call
from harness.noise import Load, NoiseLog, watch
from harness.progress import progress_over
from harness.results import Conditions, Row, write_table
from harness.schema import content_hash
from harness.specs import CompileOptions, MeasureSpec, QuantizeSpec, Recipe
from harness.tune import tuning_database
from harness.workspace import Workspace

log = logging.getLogger(__name__)


def _artifact(exported: Exported, profile: DeviceProfile, ws: Workspace, tuned: bool,
              options: CompileOptions) -> Artifact | None:
    """The variant compiled untuned, or with the tuning database (None when there is no database)."""
    database = tuning_database(profile, ws) if tuned else None
    if database is not None and database_fingerprint(database) is None:
        return None
    return compile_variant(exported, profile, ws, database, options=options)


def _tvm_runner(artifact: Artifact, batch: np.ndarray, threads: int | None) -> Callable[[], object]:
    return LocalExecutor(artifact.path, threads).bind(batch)


@dataclass(frozen=True, kw_only=True, slots=True)
class Runners:
    """Zero-argument callables that run one inference of the same variant in each runtime."""

    recipe: Recipe
    dtype: str
    threads: int | None
    calls: dict[str, Callable[[], object]]
    reports: dict[str, CompileReport]  # of each TVM runtime's artifact
    tuned: Artifact | None  # the "tvm tuned" artifact, profiled per layer kind
    onnx: Path  # the exported model ONNX Runtime runs


def runners(recipe: Recipe, profile: DeviceProfile, *, workspace: Workspace | None = None,
            progress: bool = True, untuned: bool = True) -> Runners:
    """TVM untuned (unless not `untuned`), TVM tuned (when the device has a database), ONNX Runtime and PyTorch
    for `recipe`.

    Thread counts are the profile's for all of them (PyTorch's is set process-wide). Latency does not depend
    on the weights, so the models are built untrained (`build.structural`): a bench trains nothing.
    """
    if profile.is_remote:
        raise HarnessError(f"bench runs on this host; device {profile.name} is remote (use `harness run`)")
    ws = workspace or Workspace()
    exported, splits = export_structural(recipe, ws, progress)
    batch = first_batch(splits, recipe.measure.batch)
    threads = profile.thread_count
    if threads is not None:
        torch.set_num_threads(threads)
    calls, reports, tuned_artifact = {}, {}, None
    variants = [("", exported.options)]
    if exported.options.integer:  # int8: also the importer's float dequantize→conv→quantize path
        variants.append((" (float QDQ)", replace(exported.options, integer=False)))
    for schedules, tuned in (("tvm untuned", False), ("tvm tuned", True))[0 if untuned else 1:]:
        for suffix, options in variants:
            artifact = _artifact(exported, profile, ws, tuned, options)
            if artifact is None:
                log.warning("%s: no tuning database for %s; run `harness tune` first", recipe.name, profile.name)
                break
            name = schedules + suffix
            if name == "tvm tuned":
                tuned_artifact = artifact
            calls[name] = _tvm_runner(artifact, batch, threads)
            reports[name] = artifact.report
    calls["onnxruntime"] = ort_call(exported.onnx.path, batch, threads)
    calls["pytorch"] = torch_call(exported.model, batch)  # eager fp32 (int8 exists only as the ONNX QDQ model)
    return Runners(recipe=recipe, dtype=exported.dtype, threads=threads, calls=calls, reports=reports,
                   tuned=tuned_artifact, onnx=exported.onnx.path)


@dataclass(frozen=True, slots=True)
class _Series:
    """One timed series of a bench: a runtime of one recipe."""

    runners: Runners
    name: str
    spec: MeasureSpec  # the recipe's, with the bench's repeats

    def sample(self) -> float:
        """One round: untimed calls for `measure.SETTLE_SECONDS` (at least one), then the mean wall time (s) of
        `number` calls."""
        call = self.runners.calls[self.name]
        settle(call)
        return time_callable(call, replace(self.spec, warmup=0, repeats=1))[0]


def time_interleaved(series: list[_Series], progress: bool = True) -> tuple[list[LatencyStats], Load]:
    """Each series' statistics over its rounds, and the load other processes put on the host meanwhile.

    Every series is warmed up first; then each round takes one sample of every series in turn."""
    for one in series:
        log.info("%s: warming up %s", one.runners.recipe.name, one.name)
        for _ in range(one.spec.warmup):
            one.runners.calls[one.name]()
    rounds = max(one.spec.repeats for one in series)
    samples: list[list[float]] = [[] for _ in series]
    with watch() as load:
        for _ in progress_over(range(rounds), "bench", "round", enabled=progress, leave=False):
            for one, taken in zip(series, samples, strict=True):
                if len(taken) < one.spec.repeats:
                    taken.append(one.sample())
    return [latency_stats(taken) for taken in samples], load


def _rows(series: list[_Series], stats: list[LatencyStats], load: Load, profile: DeviceProfile,
          conditions: Conditions) -> list[Row]:
    """One row per series, with `vs_ort` = latency / the same recipe's ONNX Runtime latency."""
    ort = {one.runners.recipe.name: s.median_ms for one, s in zip(series, stats, strict=True)
           if one.name == "onnxruntime"}
    target = target_json(build_target(profile))
    rows = []
    for one, s in zip(series, stats, strict=True):
        recipe, prepared, noise = one.runners.recipe, one.runners, NoiseLog()
        noise.add(one.name, s.cv, s.spread, load)
        rows.append(Row(recipe=recipe.name, dtype=prepared.dtype, model=recipe.model.name, width_mult=recipe.width,
                        resolution=recipe.resolution, runtime=one.name, latency_ms_median=s.median_ms,
                        latency_ms_min=s.min_ms, repeats=s.repeats, latency_cv=s.cv, host_busy=noise.busy,
                        noisy=noise.reason(), vs_ort=s.median_ms / ort[recipe.name],
                        threads=prepared.threads, batch=one.spec.batch, device=profile.name, target=target,
                        **(prepared.reports[one.name].row_fields() if one.name in prepared.reports else {})
                        ).stamped(conditions))
    return rows


def with_fp32_ratios(rows: list[Row], twins: list[str]) -> list[Row]:
    """`rows` with `vs_fp32` on rows of a quantized model: latency / the same runtime's on its fp32 model benched
    alongside. `twins[i]`: row i's recipe's `_float_twin` (a pruned fp32 model of the same network is another
    model: it has a twin of its own).

    The int8 "(float QDQ)" variants compare with the fp32 row of the same schedules ("tvm untuned"/"tvm tuned").
    """
    fp32 = {(twin, r.runtime): r.latency_ms_median for r, twin in zip(rows, twins, strict=True) if r.dtype == "fp32"}
    out = []
    for row, twin in zip(rows, twins, strict=True):
        reference = fp32.get((twin, (row.runtime or "").removesuffix(" (float QDQ)")))
        out.append(replace(row, vs_fp32=row.latency_ms_median / reference
                           if reference and row.dtype != "fp32" else None))
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchResult:
    """The rows of a bench, the CSV they were written to, and per int8 model benched beside its fp32 model
    the tuned TVM milliseconds per layer kind of both and ONNX Runtime's of the int8 model
    (harness.profile.compare_kinds)."""

    rows: list[Row]
    path: Path
    layer_kinds: dict[str, pd.DataFrame]


def _float_twin(recipe: Recipe) -> str:
    """What an int8 recipe and the fp32 recipe it is compared with share (the model and every step but
    quantization), as a content hash: steps hold unhashable mappings (a prune step's `layer_ratios`)."""
    return content_hash({"model": recipe.model, "width": recipe.width, "resolution": recipe.resolution,
                         "steps": [s for s in recipe.compression_steps if not isinstance(s, QuantizeSpec)]})


def _layer_kinds(tuned: list[tuple[Runners, Artifact]], threads: int | None) -> dict[str, pd.DataFrame]:
    """Per layer kind, the tuned int8 artifact of each model against its fp32 one, where both were benched, and
    ONNX Runtime's nodes of the int8 model (its profiler), all timed in the same rounds."""
    from harness.profile import Profiled, compare_kinds, kernel_times_side_by_side

    def profiled(artifact: Artifact) -> Profiled:
        return Profiled(artifact.path, artifact.input_shape, layout=artifact.report.layout)

    fp32 = {_float_twin(p.recipe): (p.recipe, artifact) for p, artifact in tuned if p.dtype == "fp32"}
    tables = {}
    for p, artifact in tuned:
        if p.dtype == "int8" and (twin := fp32.get(_float_twin(p.recipe))) is not None:
            fp32_kernels, int8_kernels, ort_nodes = kernel_times_side_by_side(
                [profiled(twin[1]), profiled(artifact)], threads=threads, onnx=[(p.onnx, artifact.input_shape)])
            tables[f"{twin[0].name} vs {p.recipe.name}"] = compare_kinds(
                fp32_kernels, int8_kernels, ("fp32", "int8"), peer=("ORT int8", ort_nodes))
    return tables


def bench(recipes: list[Recipe], profile: DeviceProfile, *, repeats: int = 30, workspace: Workspace | None = None,
          progress: bool = True, untuned: bool = True) -> BenchResult:
    """Bench every recipe in one process, their series interleaved; the rows are also written as a CSV under
    `results/bench/`. Without `untuned` no untuned TVM series is built or timed (for a large model it takes
    seconds an inference, most of a bench's time)."""
    ws = workspace or Workspace()
    run_id = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    conditions = Conditions.now(run_id)
    prepared = [runners(recipe, profile, workspace=ws, progress=progress, untuned=untuned) for recipe in recipes]
    series = [_Series(p, name, replace(p.recipe.measure, repeats=repeats)) for p in prepared for name in p.calls]
    log.info("timing %d series of %d recipes interleaved, %d rounds", len(series), len(recipes), repeats)
    stats, load = time_interleaved(series, progress)
    rows = with_fp32_ratios(_rows(series, stats, load, profile, conditions),
                            [_float_twin(one.runners.recipe) for one in series])
    path = write_table(rows, ws.root / "bench" / f"{run_id}.csv")
    tuned = [(p, p.tuned) for p in prepared if p.tuned is not None]
    return BenchResult(rows=rows, path=path, layer_kinds=_layer_kinds(tuned, profile.thread_count))
