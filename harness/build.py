"""Build stage: recipe → trained model → compressed model → ONNX (→ int8 QDQ) → compiled artifact.

Each stage is cached in the workspace under a content hash of its inputs, so a rerun skips the stages whose
inputs did not change. `Exported` is a variant up to the file that is compiled; `Compiled` adds the artifact
built from it for one device.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from harness import cache
from harness.compile import Artifact, compile_onnx
from harness.compile.database import database_fingerprint
from harness.compile.provenance import timing_machine
from harness.compile.target import build_target, target_json
from harness.compress import StepContext, make_step
from harness.data import DataSplits, load_data
from harness.device import DeviceProfile
from harness.errors import HarnessError
from harness.export import OnnxModel, export_onnx
from harness.models import build_model
from harness.models.counting import forward
from harness.schema import content_hash
from harness.specs import CompileOptions, FinetuneSpec, PruneSpec, Recipe, StepSpec
from harness.train import fit
from harness.workspace import Workspace, exporter_digest

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class Exported:
    """A model variant up to the file that is compiled (no device involved yet)."""

    recipe: Recipe
    model: nn.Module  # after the PyTorch steps: the fp32 peer and reference
    fp32_onnx: OnnxModel
    onnx: OnnxModel  # the file that is compiled: `fp32_onnx`, or the QDQ int8 model
    dtype: str
    options: CompileOptions = field(default_factory=CompileOptions)
    key: str  # SHA-256 of the bytes of `onnx` (what an artifact is built from)
    report: dict[str, Any] = field(default_factory=dict)  # what the steps report (prune_ratio, calibration, ...)


@dataclass(frozen=True, kw_only=True, slots=True)
class Compiled:
    """An exported variant and the artifact compiled from it for one device."""

    exported: Exported
    artifact: Artifact

    @property
    def recipe(self) -> Recipe:
        return self.exported.recipe


def _activation_bytes(model: nn.Module, batch: int, resolution: int) -> tuple[int, int]:
    """(largest, total) float32 output bytes of `model`'s layers for one batch, on the meta device (no memory)."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * 4))
             for m in model.modules() if not list(m.children())]
    try:
        forward(model, torch.empty(batch, 3, resolution, resolution, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes, default=0), sum(sizes)


def preflight(recipe: Recipe, num_classes: int) -> None:
    """Refuse up front what would fail late: prune patterns that match no layer, and inputs too large for this
    host's memory (with the estimate), before anything is trained."""
    import psutil

    from harness.compress.prune import check_patterns

    with torch.device("meta"):
        model = build_model(recipe.model.name, width=recipe.width, num_classes=num_classes).eval()
    for spec in recipe.steps:
        if isinstance(spec, PruneSpec):
            try:
                check_patterns(model, spec)
            except HarnessError as exc:
                raise HarnessError(f"recipe {recipe.name}: {exc}") from None
    try:
        largest, _ = _activation_bytes(model, recipe.measure.batch, recipe.resolution)
    except HarnessError as exc:
        raise HarnessError(f"recipe {recipe.name}: {exc}") from None
    _, total = _activation_bytes(model, recipe.train.batch_size, recipe.resolution) if recipe.train.epochs else (0, 0)
    need = max(3 * largest, 2 * total)  # inference: a layer's input, output and workspace; training: activations
    free = psutil.virtual_memory().available  # and their gradients
    if need > free:
        raise HarnessError(f"recipe {recipe.name}: {recipe.model.name} at {recipe.resolution}x{recipe.resolution} "
                           f"(batch {recipe.measure.batch}, training batch {recipe.train.batch_size}) needs about "
                           f"{need / 2**30:.1f} GiB of activations; this host has {free / 2**30:.1f} GiB available")


def _load(path: Path, load: Callable[[Path], T], adopt: bool = False) -> T | None:
    """`load(path)` for an intact cache entry; None when it is missing or damaged (then it is removed).

    `adopt`: an entry from before checksums were kept is used (and given one) when it loads.
    """
    legacy = adopt and path.is_file() and not cache.has_checksum(path)
    if not legacy and cache.digest(path) is None:
        return None
    try:
        value = load(path)
    except Exception as exc:  # noqa: BLE001 (torch and pickle raise many types for a bad file)
        cache.discard(path, f"unreadable: {type(exc).__name__}")
        return None
    if legacy:
        cache.adopt(path)
    return value


def _trained(recipe: Recipe, splits: DataSplits, ws: Workspace, progress: bool) -> tuple[nn.Module, str]:
    """The trained base model and the checksum of its cached weights."""
    path = ws.model_dir(recipe.base_key()) / "model.pt"
    with cache.locked(path):
        def fresh() -> nn.Module:
            return build_model(recipe.model.name, width=recipe.width, num_classes=splits.num_classes,
                               weights=recipe.model.weights)

        model, cached = fresh(), path.is_file()
        if _load(path, lambda p: model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True)),
                 adopt=True) is not None:
            log.info("reusing trained model %s", path)
            return model.eval(), cache.file_digest(path)
        if cached:  # a damaged file may have been half loaded
            model = fresh()
        if recipe.train.epochs > 0:
            if splits.train is None:
                raise HarnessError(f"recipe {recipe.name}: data set has no train split; set train.epochs: 0")
            t = recipe.train
            report = fit(model, splits.train, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                         optimizer=t.optimizer, weight_decay=t.weight_decay, seed=t.seed, progress=progress,
                         desc=f"train {recipe.model.name}")
            log.info("trained %s in %.0f s (loss %.3f)", recipe.model.name, report.seconds, report.final_loss)
        return model.eval(), cache.write(path, lambda tmp: torch.save(model.state_dict(), tmp))


def trained_base(recipe: Recipe, splits: DataSplits, ws: Workspace, progress: bool) -> nn.Module:
    """The recipe's base model at its width, trained on its data (cached by `recipe.base_key()`)."""
    return _trained(recipe, splits, ws, progress)[0]


def _torch_steps(recipe: Recipe) -> list[StepSpec]:
    return [s for s in recipe.compression_steps if make_step(s).acts_on == "torch"]


def compressed_model(recipe: Recipe, splits: DataSplits, ws: Workspace, progress: bool
                     ) -> tuple[nn.Module, dict[str, Any], str]:
    """The base model after the recipe's PyTorch steps (prune, finetune), their reports, and the checksum of
    the cached model; cached by the base model's weights and the steps."""
    base, base_digest = _trained(recipe, splits, ws, progress)
    steps = _torch_steps(recipe)
    if not steps:
        return base, {}, base_digest
    path = ws.model_dir(content_hash({"base": base_digest, "steps": steps})) / "module.pt"
    info_path = path.with_name("steps.json")
    with cache.locked(path):
        info = _load(info_path, lambda p: json.loads(p.read_text()))
        # Our own cache file (a pruned model has no fixed architecture to load a state_dict into).
        model = _load(path, lambda p: torch.load(p, map_location="cpu", weights_only=False)) \
            if info is not None else None
        if model is not None:
            log.info("reusing compressed model %s", path)
            return model.eval(), info, cache.file_digest(path)
        ctx = StepContext(recipe=recipe, splits=splits, teacher=base, progress=progress)
        model, report = copy.deepcopy(base), {}
        for spec in steps:
            result = make_step(spec).apply(model, ctx)
            model, report = result.output, report | dict(result.report)
        digest = cache.write(path, lambda tmp: torch.save(model, tmp))
        cache.write(info_path, lambda tmp: tmp.write_text(json.dumps(report)))
        return model.eval(), report, digest


def export_variant(recipe: Recipe, splits: DataSplits, ws: Workspace, progress: bool) -> Exported:
    """Model → ONNX (→ int8 QDQ), every stage cached by what it is made from (the weights' checksum)."""
    model, report, weights = compressed_model(recipe, splits, ws, progress)
    data = replace(recipe.data, eval_samples=None)  # int8 calibration images come from the data set
    fp32_path = ws.onnx_dir(content_hash({"weights": weights, "resolution": recipe.resolution, "data": data,
                                          "exporter": exporter_digest()})) / "model.onnx"
    with cache.locked(fp32_path):
        if cache.digest(fp32_path) is None:
            cache.write(fp32_path, lambda tmp: export_onnx(model, tmp, resolution=recipe.resolution))
    fp32 = OnnxModel(path=fp32_path, input_shape=(recipe.measure.batch, 3, recipe.resolution, recipe.resolution))
    onnx, dtype, options = fp32, "fp32", CompileOptions()
    ctx = StepContext(recipe=recipe, splits=splits, teacher=model, progress=progress)
    for spec in recipe.compression_steps:
        step = make_step(spec)
        if step.acts_on == "onnx":
            result = step.apply(fp32, ctx)
            onnx, dtype, options, report = result.output, result.dtype, result.options, report | dict(result.report)
    return Exported(recipe=recipe, model=model, fp32_onnx=fp32, onnx=onnx, dtype=dtype, options=options,
                    key=cache.file_digest(onnx.path), report=report)


def structural(recipe: Recipe) -> Recipe:
    """`recipe` untrained and without fine-tuning: the same compiled kernels (tuning workloads), minutes sooner.

    Kept as it is when a step's structure depends on trained weights (global pruning ranks channels across
    layers by their magnitude).
    """
    if any(isinstance(s, PruneSpec) and s.global_pruning for s in recipe.steps):
        return recipe
    return replace(recipe, train=replace(recipe.train, epochs=0),
                   steps=tuple(s for s in recipe.steps if not isinstance(s, FinetuneSpec)))


def export_structural(recipe: Recipe, ws: Workspace, progress: bool = True) -> tuple[Exported, DataSplits]:
    """`structural(recipe)` checked (`preflight`) and exported, with its data splits."""
    shape = structural(recipe)
    splits = load_data(shape.data, shape.resolution)
    preflight(shape, splits.num_classes)
    return export_variant(shape, splits, ws, progress), splits


def compile_variant(exported: Exported, profile: DeviceProfile, ws: Workspace, database: Path | None, *,
                    options: CompileOptions | None = None) -> Artifact:
    """`exported` compiled for `profile` (with its options, or `options`) and the tuning `database`, cached.

    The cache key includes the target, the layout and the database's contents: new schedules mean a rebuild.
    """
    options = options or exported.options
    lib = ws.artifact_path(exported.key, profile.name, target_json(build_target(profile)),
                           {"options": options, "layout": profile.layout,
                            "tuning": database_fingerprint(database) if database is not None else None,
                            "timed_on": timing_machine(profile) if database is not None else None,
                            "input_shape": list(exported.onnx.input_shape)})
    with cache.locked(lib):
        artifact = Artifact.load_meta(lib)
        if artifact is None:
            log.info("compiling %s for %s", exported.recipe.name, profile.name)
            return compile_onnx(exported.onnx, profile, lib, options=options, database=database)
    log.info("reusing compiled artifact %s", lib)
    return artifact
