"""One run = one pipeline: build → train → compress → export → quantize → compile → measure → record.

Each stage is cached under a content hash of its inputs (see harness.workspace), so a rerun skips the
stages whose inputs did not change. The reference (the recipe without steps) is measured in the same
run so that `acc_delta` and `speedup` compare like with like.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from torch import nn

from harness import compress
from harness.compile import Artifact, compile_onnx, prepare_module, tuning
from harness.compile.target import build_target, target_json, target_key, target_spec
from harness.compress.finetune import FinetuneSpec
from harness.data import DataSplits, calibration_batches, load_data
from harness.device import DeviceProfile, parse_hostport
from harness.errors import HarnessError
from harness.export import OnnxModel, export_onnx
from harness.measure import (
    Executor,
    LocalExecutor,
    evaluate,
    gpu_info,
    latency_stats,
    max_abs_diff,
    ort_has_cuda,
    ort_latency,
    ort_session,
    torch_gpu_latency,
    torch_latency,
)
from harness.models import build_model, model_cost
from harness.recipe import MeasureSpec, Recipe, content_hash
from harness.remote import DeviceUnreachable
from harness.results import append_rows, git_revision, write_json
from harness.train import Distillation, fit
from harness.workspace import Workspace, link_or_copy, package_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Built:
    """A model variant ready to measure: the PyTorch model, its ONNX files and the compiled artifact."""

    recipe: Recipe
    model: nn.Module
    fp32_onnx: OnnxModel
    deploy_onnx: OnnxModel  # the file that is compiled: fp32, or the QDQ int8 model
    dtype: str
    artifact: Artifact
    step_info: dict[str, Any]


# ---------------------------------------------------------------- model: build, train, compress


def trained_base(recipe: Recipe, splits: DataSplits, ws: Workspace, progress: bool) -> nn.Module:
    """The recipe's base model at its width, trained on its data (cached by `recipe.base_key()`)."""
    model = build_model(recipe.model.name, width=recipe.width, num_classes=splits.num_classes,
                        weights=recipe.model.weights)
    cache = ws.model_dir(recipe.base_key()) / "model.pt"
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        log.info("reusing trained model %s", cache)
        return model.eval()
    if recipe.train.epochs > 0:
        if splits.train is None:
            raise HarnessError(f"recipe {recipe.name}: data set has no train split; set train.epochs: 0")
        t = recipe.train
        report = fit(model, splits.train, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                     optimizer=t.optimizer, weight_decay=t.weight_decay, seed=t.seed, progress=progress,
                     desc=f"train {recipe.model.name}")
        log.info("trained %s in %.0f s (loss %.3f)", recipe.model.name, report.seconds, report.final_loss)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)
    return model.eval()


def _finetune(model: nn.Module, teacher: nn.Module, spec: FinetuneSpec, recipe: Recipe,
              splits: DataSplits, progress: bool) -> None:
    if splits.train is None:
        raise HarnessError(f"recipe {recipe.name}: finetune needs a data set with a train split")
    kd = Distillation(teacher=teacher, temperature=spec.temperature, weight=spec.distill_weight) \
        if spec.distill else None
    fit(model, splits.train, epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size or recipe.train.batch_size,
        optimizer=spec.optimizer, seed=recipe.train.seed, distill=kd, progress=progress, desc="finetune")


def _apply_step(step: Any, model: nn.Module, teacher: nn.Module, recipe: Recipe, splits: DataSplits,
                progress: bool, info: dict[str, Any]) -> nn.Module:
    if isinstance(step, FinetuneSpec):
        _finetune(model, teacher, step, recipe, splits, progress)
        return model
    applier = compress.APPLIERS.get(type(step))
    if applier is None:
        raise HarnessError(f"recipe {recipe.name}: step {compress.step_kind(step)} does not act on a PyTorch model")
    return applier(model, step, recipe=recipe, splits=splits, progress=progress, info=info)


def compressed_model(recipe: Recipe, splits: DataSplits, ws: Workspace, progress: bool
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """The base model after the recipe's PyTorch steps (prune, finetune), cached by the steps' hash."""
    base = trained_base(recipe, splits, ws, progress)
    steps = [s for s in recipe.compression_steps if not compress.is_onnx_step(s)]
    if not steps:
        return base, {}
    cache = ws.model_dir(content_hash({"base": recipe.base_key(), "steps": steps})) / "module.pt"
    info_path = cache.with_name("steps.json")
    if cache.is_file() and info_path.is_file():
        log.info("reusing compressed model %s", cache)
        # Our own cache file (a pruned model has no fixed architecture to load a state_dict into).
        return torch.load(cache, map_location="cpu", weights_only=False).eval(), json.loads(info_path.read_text())
    teacher, model, info = base, copy.deepcopy(base), {}
    for step in steps:
        model = _apply_step(step, model, teacher, recipe, splits, progress, info)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)
    write_json(info_path, info)
    return model.eval(), info


# ---------------------------------------------------------------- export, quantize, compile


@dataclass(frozen=True, kw_only=True, slots=True)
class Deployable:
    """A model variant up to the file that is compiled (before any device is involved)."""

    recipe: Recipe
    model: nn.Module
    fp32_onnx: OnnxModel
    deploy_onnx: OnnxModel  # fp32, or the QDQ int8 model
    dtype: str
    options: dict[str, Any]  # compile options from the steps (e.g. fp16)
    onnx_key: str
    step_info: dict[str, Any]


def deployable(recipe: Recipe, splits: DataSplits, ws: Workspace, progress: bool) -> Deployable:
    """Model → ONNX (→ int8 QDQ), every stage cached."""
    model, info = compressed_model(recipe, splits, ws, progress)
    torch_key = content_hash({"base": recipe.base_key(), "steps": recipe.compression_steps})
    fp32_path = ws.onnx_dir(torch_key) / "model.onnx"
    shape = (recipe.measure.batch, 3, recipe.resolution, recipe.resolution)
    fp32 = OnnxModel(path=fp32_path, input_shape=shape) if fp32_path.is_file() else \
        export_onnx(model, fp32_path, resolution=recipe.resolution, batch=recipe.measure.batch)
    deploy, dtype, options = fp32, "fp32", {}
    for step in recipe.compression_steps:
        if compress.is_onnx_step(step):
            deploy, dtype, options = compress.apply_onnx_step(step, fp32, splits=splits, progress=progress,
                                                               info=info)
    return Deployable(recipe=recipe, model=model, fp32_onnx=fp32, deploy_onnx=deploy, dtype=dtype,
                      options=options, onnx_key=content_hash({"onnx": torch_key, "deploy": deploy.path.name}),
                      step_info=info)


def tuning_database(profile: DeviceProfile, ws: Workspace) -> Path:
    """The tuning database of `profile`'s (portable) target in `ws`, seeded from the shipped one for that target."""
    key = target_key(target_spec(profile))
    path = tuning.database_dir(ws.tuning_root, key)
    tuning.seed(path, tuning.shipped_dir(key))
    return path


TUNE_MINUTES_PER_KERNEL = 0.3  # 2 cores: 20 minutes for the 56 kernels of v1+v2 gave 1.1x ONNX Runtime on a Xeon


def tune_command(recipe: Recipe, profile: DeviceProfile, untuned: int) -> str:
    """The `harness tune` command that tunes the kernels `recipe` lacks on `profile`, with a fitting budget."""
    minutes = max(2, round(untuned * TUNE_MINUTES_PER_KERNEL))
    name = recipe.name.removesuffix(":reference")
    return f"python -m harness tune {name} --device {profile.name} --trials 100000 --minutes {minutes}"


def warn_untuned(built: Built, profile: DeviceProfile, ws: Workspace) -> None:
    """One warning line when the artifact has untuned kernels: what is missing and the command that fixes it."""
    tuned, _, total = built.artifact.details.get("tuned_kernels", "").partition("/")
    if not total or int(tuned) == int(total):
        return
    untuned = int(total) - int(tuned)
    if built.artifact.details.get("schedules") == "dlight":
        log.info("%s: %d of %s kernels run DLight's default GPU schedules; tuning may speed them up: %s",
                 built.recipe.name, untuned, total, tune_command(built.recipe, profile, untuned))
        return
    key = target_key(target_spec(profile))
    others = tuning.databases_for_other_threads(key, [ws.tuning_root, tuning.SHIPPED_DIR])
    other = f" (databases exist for other thread counts: {', '.join(others)}; not used)" if others else ""
    log.warning("%s: %d of %s kernels are untuned for %s%s, so its latency is not representative; fix: %s",
                built.recipe.name, untuned, total, key, other, tune_command(built.recipe, profile, untuned))


def structural(recipe: Recipe) -> Recipe:
    """`recipe` untrained and without fine-tuning: the same compiled kernels (tuning workloads), minutes sooner.

    Kept as it is when a step's structure depends on trained weights (global pruning ranks channels across
    layers by their magnitude).
    """
    from harness.compress.prune import PruneSpec

    if any(isinstance(s, PruneSpec) and s.global_pruning for s in recipe.steps):
        return recipe
    return replace(recipe, train=replace(recipe.train, epochs=0),
                   steps=tuple(s for s in recipe.steps if not isinstance(s, FinetuneSpec)))


def compiled_artifact(dep: Deployable, profile: DeviceProfile, ws: Workspace, options: dict[str, Any],
                      database: Path | None) -> Artifact:
    """`dep` compiled for `profile` with `options` (and the tuning `database`, if any), cached.

    The cache key includes the target, the layout and the database's contents: new schedules mean a rebuild.
    """
    fingerprint = tuning.database_fingerprint(database) if database is not None else None
    lib = ws.artifact_path(dep.onnx_key, profile.name, target_json(build_target(profile)),
                           options | {"layout": profile.layout, "tuning": fingerprint,
                                      "input_shape": list(dep.deploy_onnx.input_shape)})
    artifact = Artifact.load_meta(lib)
    if artifact is None:
        log.info("compiling %s for %s", dep.recipe.name, profile.name)
        return compile_onnx(dep.deploy_onnx, profile, lib, database=database, **options)
    log.info("reusing compiled artifact %s", lib)
    return artifact


def build_variant(recipe: Recipe, profile: DeviceProfile, splits: DataSplits, ws: Workspace,
                  progress: bool) -> Built:
    """Model → ONNX (→ int8 QDQ) → compiled artifact for `profile`, every stage cached."""
    dep = deployable(recipe, splits, ws, progress)
    artifact = compiled_artifact(dep, profile, ws, dep.options, tuning_database(profile, ws))
    built = Built(recipe=recipe, model=dep.model, fp32_onnx=dep.fp32_onnx, deploy_onnx=dep.deploy_onnx,
                  dtype=dep.dtype, artifact=artifact, step_info=dep.step_info)
    warn_untuned(built, profile, ws)
    return built


def tuning_modules(variants: list[Recipe], profile: DeviceProfile, ws: Workspace, progress: bool = True
                   ) -> list[tvm.IRModule]:
    """The Relax modules that `variants` compile to on `profile` (structurally: untrained, see `structural`)."""
    mods = []
    for variant in map(structural, variants):
        splits = load_data(variant.data, variant.resolution)
        dep = deployable(variant, splits, ws, progress)
        mods.append(prepare_module(dep.deploy_onnx, layout=profile.layout, **dep.options))
    return mods


def tune_variants(variants: list[Recipe], profile: DeviceProfile, *, trials: int, minutes: float | None = None,
                  workspace: Workspace | None = None, progress: bool = True, refine: bool = False
                  ) -> tuning.TuneReport:
    """Tune the kernels of all `variants` (as compiled for `profile`) into the device's database, together.

    Kernels shared between variants are tuned once; kernels already in the database are skipped (unless
    `refine`).
    """
    ws = workspace or Workspace()
    mods = tuning_modules(variants, profile, ws, progress)
    database = tuning_database(profile, ws)
    log.info("tuning %d model(s) for %s into %s", len(mods), profile.name, database)
    return tuning.tune(mods, build_target(profile), database, trials=trials, minutes=minutes, profile=profile,
                       progress=progress, refine=refine)


def with_references(recipes: list[Recipe]) -> list[Recipe]:
    """`recipes` and their references, each distinct variant once."""
    variants: dict[str, Recipe] = {}
    for recipe in recipes:
        for variant in (recipe.reference(), recipe):
            variants.setdefault(variant.key(), variant)
    return list(variants.values())


def refresh_shipped(profile: DeviceProfile, *, trials: int, minutes: float | None, workspace: Workspace | None = None,
                    progress: bool = True, refine: bool = False) -> tuple[tuning.TuneReport | None, Path, int]:
    """Tune every shipped recipe for `profile` and write the result as the database shipped for its target.

    Returns the tuning report (None with `trials` 0: pack only), the shipped folder and its size in bytes.
    """
    from harness.recipe import available_recipes, load_recipe

    ws = workspace or Workspace()
    variants = with_references([load_recipe(name) for name in available_recipes()])
    report = tune_variants(variants, profile, trials=trials, minutes=minutes, workspace=ws, progress=progress,
                           refine=refine) if trials > 0 else None
    key = target_key(target_spec(profile))
    tasks = tuning.extract_tasks(tuning_modules(variants, profile, ws, progress), build_target(profile))
    shipped = tuning.SHIPPED_DIR / key
    size = tuning.pack(tuning_database(profile, ws), shipped, [t.dispatched[0] for t in tasks])
    return report, shipped, size


# ---------------------------------------------------------------- measure and record


def _executor(built: Built, profile: DeviceProfile) -> tuple[Executor, bool, str | None]:
    """Load the artifact locally or on a board of the device; returns (executor, emulated, board name)."""
    if profile.is_remote:
        from harness.remote import remote_executor

        executor, emulated = remote_executor(profile, built.artifact.path)
        return executor, emulated, executor.info.get("name")
    try:
        return LocalExecutor(built.artifact.path, profile.thread_count, profile.gpu_index), False, None
    except HarnessError as exc:
        raise HarnessError(f"device {profile.name}: {exc}; the compiled artifact is kept at "
                           f"{built.artifact.path}") from None


def _check_agreement(built: Built, executor: Executor, batch: np.ndarray) -> float:
    """max |TVM − reference| on one batch: PyTorch for fp32, ONNX Runtime (same QDQ model) for int8."""
    tvm_out = executor.run(batch)
    if built.dtype == "fp32":
        with torch.no_grad():
            ref = built.model(torch.from_numpy(batch)).numpy()
    else:
        sess = ort_session(built.deploy_onnx.path, None, exact=True)
        ref = sess.run(None, {sess.get_inputs()[0].name: batch})[0]
    diff = max_abs_diff(tvm_out, ref)
    scale = max(1.0, float(np.abs(ref).max()))
    tol = built.recipe.measure.tolerance if built.dtype == "fp32" else built.recipe.measure.int8_tolerance
    if diff > tol * scale:
        raise HarnessError(
            f"recipe {built.recipe.name}: TVM output differs from the reference by {diff:.3g} "
            f"(> tolerance {tol} × {scale:.3g}); the compiled artifact is wrong"
        )
    return diff


EMULATED_REPEATS = 3  # timing repeats on an emulated board


def measure_variant(built: Built, profile: DeviceProfile, splits: DataSplits, progress: bool) -> dict[str, Any]:
    """Accuracy and latency of the compiled artifact, with PyTorch and ONNX Runtime peers; one result row."""
    recipe, spec = built.recipe, built.recipe.measure
    executor, emulated, board = _executor(built, profile)
    batch = next(iter(calibration_batches(splits, spec.batch, spec.batch)))
    diff = _check_agreement(built, executor, batch)
    where = "remote" if profile.is_remote else "local"
    log.info("evaluating %s on %d images (%s)", recipe.name, len(splits.val), where)
    acc = evaluate(executor, splits.val, spec.batch, splits.num_classes, progress, desc=f"eval {recipe.name}")
    if emulated and spec.repeats > EMULATED_REPEATS:  # qemu's latencies say nothing of the board's: time briefly
        spec = replace(spec, repeats=EMULATED_REPEATS, warmup=min(spec.warmup, 1))
    log.info("top-1 %.4f; timing %d repeats", acc.top1, spec.repeats)
    lat = latency_stats(executor.time(batch, spec))
    threads = profile.thread_count
    peers = spec.peers and not profile.is_remote
    cost = model_cost(built.model, recipe.resolution)
    peer_row = _gpu_peers(built, batch, spec, profile.gpu_index) if peers and profile.gpu_index is not None else {
        "torch_latency_ms": torch_latency(built.model, batch, spec, threads).median_ms if peers else None,
        "ort_latency_ms": ort_latency(built.deploy_onnx.path, batch, spec, threads).median_ms if peers else None}
    return {
        "recipe": recipe.name, "recipe_key": recipe.key(), "steps": recipe.steps_summary(),
        "model": recipe.model.name, "width_mult": recipe.width, "resolution": recipe.resolution,
        "dataset": str(recipe.data.name), "num_classes": splits.num_classes, "dtype": built.dtype,
        "integer": built.step_info.get("integer"), "prune_ratio": built.step_info.get("prune_ratio"),
        "calibration": built.step_info.get("calibration"), "params": cost.params, "macs": cost.macs,
        "onnx_bytes": built.deploy_onnx.bytes, "artifact_bytes": built.artifact.bytes, "device": profile.name,
        "target": built.artifact.target, "remote": profile.is_remote, "emulated": emulated, "board": board,
        "threads": threads, "batch": spec.batch, "top1": acc.top1, "top5": acc.top5, "eval_samples": acc.samples,
        "latency_ms_median": lat.median_ms, "latency_ms_mean": lat.mean_ms, "latency_ms_p90": lat.p90_ms,
        "latency_ms_min": lat.min_ms, "latency_ms_std": lat.std_ms, "repeats": lat.repeats,
        "images_per_s": spec.batch / (lat.median_ms / 1e3), "max_abs_diff": diff,
        "compile_s": built.artifact.compile_seconds,
    } | peer_row | built.artifact.details


def _gpu_peers(built: Built, batch: np.ndarray, spec: MeasureSpec, gpu: int) -> dict[str, Any]:
    """PyTorch eager fp32 and fp16 (autocast, channels_last) and ONNX Runtime's CUDA provider on GPU `gpu`,
    with the GPU's name and versions."""
    row: dict[str, Any] = gpu_info(gpu)
    row["torch_latency_ms"] = torch_gpu_latency(built.model, batch, spec, gpu).median_ms
    row["torch_fp16_latency_ms"] = torch_gpu_latency(built.model, batch, spec, gpu, fp16=True).median_ms
    if ort_has_cuda():
        row["ort_latency_ms"] = ort_latency(built.deploy_onnx.path, batch, spec, None, gpu).median_ms
    else:
        row["ort_latency_ms"], row["ort_note"] = None, "onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return row


def _boards(profile: DeviceProfile) -> int:
    """How many boards of the device a tracker serves (1 for local or direct RPC devices)."""
    remote = profile.remote
    if remote is None or remote.direct is not None or remote.tracker is None:
        return 1
    from harness.remote import tracker_devices

    host, port = parse_hostport(remote.tracker, f"device {profile.name} tracker")
    try:
        return max(1, tracker_devices(host, port, remote.key))
    except (OSError, RuntimeError):
        return 1  # connect() reports the unreachable tracker


def _measure_retrying(built: Built, splits: DataSplits, profile: DeviceProfile, progress: bool,
                      attempts: int = 3) -> dict[str, Any]:
    """measure_variant; on a remote device, a board that fails mid-run is replaced by another (tracker)."""
    for attempt in range(1, attempts + 1):
        try:
            return measure_variant(built, profile, splits, progress) | {"attempts": attempt}
        except (RuntimeError, OSError) as exc:  # TVM's RPC errors are RuntimeErrors
            if not profile.is_remote:
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if type(exc).__name__ == "RPCSessionTimeoutError":  # another board would time out alike
                raise DeviceUnreachable(f"device {profile.name}: {built.recipe.name} outlasted the RPC session "
                                        f"({profile.remote.session_timeout_s:g} s): raise session_timeout_s in "
                                        "the profile's remote settings, or use --eval-samples") from None
            if attempt == attempts:
                raise DeviceUnreachable(f"device {profile.name}: {built.recipe.name} failed on {attempts} boards; "
                                        f"last error: {reason}") from None
            log.warning("%s: board failed mid-run (%s); retrying on another board (attempt %d/%d)",
                        built.recipe.name, reason, attempt + 1, attempts)
    raise AssertionError("unreachable")


def _measure_all(builds: list[tuple[Built, DataSplits]], profile: DeviceProfile, progress: bool
                 ) -> list[dict[str, Any]]:
    """Measure every build: in parallel over the boards of a tracker (one run per board at a time)."""
    workers = min(len(builds), _boards(profile)) if profile.is_remote and len(builds) > 1 else 1
    if workers == 1:
        return [_measure_retrying(built, splits, profile, progress) for built, splits in builds]
    log.info("fanning %d runs out over %d boards of key %r", len(builds), workers, profile.remote.key)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda bs: _measure_retrying(bs[0], bs[1], profile, False), builds))


def fully_tuned(row: dict[str, Any]) -> bool:
    """Whether every kernel of the row's artifact ran a real schedule: tuned ("k/n" with k = n), or on a GPU
    DLight's default ones (untuned CPU kernels are naive loops)."""
    tuned, _, total = str(row.get("tuned_kernels", "")).partition("/")
    return bool(total) and tuned == total or row.get("schedules") == "dlight"


def _compare(rows: list[dict[str, Any]], ref: dict[str, Any]) -> None:
    """Fill acc_delta, speedup (against the reference row) and vs_ort of each row.

    Latency ratios involving an artifact with untuned kernels are left empty, with the reason in `notes`:
    untuned TVM code is 10-200x slower than tuned, so such a ratio measures the tuning, not the model.
    """
    for row in rows:
        row["reference"] = ref["recipe"]
        row["acc_delta"] = row["top1"] - ref["top1"]
        notes = []
        if fully_tuned(row) and fully_tuned(ref):
            row["speedup"] = ref["latency_ms_median"] / row["latency_ms_median"]
        else:
            row["speedup"] = None
            notes.append(f"no speedup: untuned kernels (this {row['tuned_kernels']}, "
                         f"reference {ref['tuned_kernels']} tuned)")
        if row.get("ort_latency_ms") and fully_tuned(row):
            row["vs_ort"] = row["latency_ms_median"] / row["ort_latency_ms"]
        else:
            row["vs_ort"] = None
            if row.get("ort_latency_ms"):
                notes.append(f"no vs_ort: {row['tuned_kernels']} kernels tuned")
        row["notes"] = "; ".join(notes) or None


def run_variants(variants: list[Recipe], reference: Recipe, profile: DeviceProfile, *,
                 workspace: Workspace | None = None, progress: bool = True, record: bool = True,
                 tune_minutes: float | None = None) -> list[dict[str, Any]]:
    """Measure `reference` and each variant in one run on `profile`; append the rows to the results table.

    `tune_minutes`: first tune the kernels the database lacks, for at most that long (as does a recipe's `tune:`).
    """
    ws = workspace or Workspace()
    same = [v for v in variants if v.key() == reference.key()]
    todo = [same[0] if same else reference] + [v for v in variants if v.key() != reference.key()]
    run_id, run_dir = ws.new_run_dir(content_hash([v.key() for v in todo]))
    versions = package_versions()
    common = {"run_id": run_id, "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "git_rev": git_revision(), "tvm_version": versions["tvm"], "torch_version": versions["torch"]}
    started = time.time()
    spec = max((v.tune for v in todo), key=lambda t: t.trials)
    if tune_minutes is not None:
        spec = replace(spec, trials=max(spec.trials, 100_000), minutes=tune_minutes)
    if spec.trials > 0:
        report = tune_variants(todo, profile, trials=spec.trials, minutes=spec.minutes, workspace=ws,
                               progress=progress)
        log.info("tuning: %s", report.summary())
    builds = []
    for i, variant in enumerate(todo):
        log.info("[%d/%d] %s", i + 1, len(todo), variant.name)
        splits = load_data(variant.data, variant.resolution)
        built = build_variant(variant, profile, splits, ws, progress)
        link_or_copy(built.artifact.path, run_dir / f"{i:02d}-{variant.key()[:8]}.so")
        link_or_copy(built.deploy_onnx.path, run_dir / f"{i:02d}-{variant.key()[:8]}.onnx")
        builds.append((built, splits))
    try:
        rows = [common | row for row in _measure_all(builds, profile, progress)]
    except DeviceUnreachable as exc:
        raise DeviceUnreachable(f"{exc} (compiled artifacts kept in {run_dir})") from None
    _compare(rows, rows[0])
    write_json(run_dir / "run.json", {"recipes": [v.name for v in todo], "device": asdict(profile), "rows": rows,
                                      "seconds": time.time() - started, "versions": versions})
    if record:
        append_rows(rows, ws.table)
    return rows


def run_recipe(recipe: Recipe, profile: DeviceProfile, **kwargs: Any) -> list[dict[str, Any]]:
    """Run `recipe` (and, when it has steps, its uncompressed reference) on `profile`."""
    return run_variants([recipe], recipe.reference() if recipe.steps else recipe, profile, **kwargs)
