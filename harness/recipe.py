"""Recipes: YAML → `Recipe` (frozen, validated on load). A recipe is a model, data, training and steps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.compress import (
    STEP_ALIASES,
    STEPS,
    ArchitectureStep,
    ResolutionSpec,
    StepSpec,
    WidthSpec,
    step_kind,
    step_summary,
)
from harness.data import DatasetName
from harness.errors import HarnessError
from harness.schema import convert, from_dict, load_yaml
from harness.train import Optimizer

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    name: str
    width: float = 1.0
    weights: str | None = None  # checkpoint file or torchvision weights name; None: random init

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"model.width must be > 0, got {self.width}")


@dataclass(frozen=True, kw_only=True, slots=True)
class DataSpec:
    name: DatasetName = DatasetName.DIGITS
    resolution: int = 224  # base input size (the ρ = 1 resolution)
    path: str | None = None  # ImageFolder root (with train/ and val/) or CIFAR-10 download folder
    val_fraction: float = 0.2  # digits: held-out share
    eval_samples: int | None = None  # cap on evaluated images; None: the whole eval split
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"data.resolution must be >= 8, got {self.resolution}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSpec:
    epochs: int = 3  # 0: use the weights as they are
    lr: float = 0.05
    batch_size: int = 32
    optimizer: Optimizer = Optimizer.SGD
    weight_decay: float = 4e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("train needs epochs >= 0, batch_size >= 1 and lr > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasureSpec:
    batch: int = 1
    repeats: int = 30  # timed repeats (each the mean of `number` runs)
    number: int = 1
    warmup: int = 3
    tolerance: float = 1e-3  # fp32: max |TVM − PyTorch| on the logits, relative to max(1, max |logit|)
    int8_tolerance: float = 0.05  # int8: max |TVM − ONNX Runtime| on the same QDQ model, likewise
    peers: bool = True  # also time PyTorch eager and ONNX Runtime

    def __post_init__(self) -> None:
        if self.batch < 1 or self.repeats < 1 or self.number < 1 or self.warmup < 0:
            raise ValueError("measure needs batch, repeats, number >= 1 and warmup >= 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class TuneSpec:
    """MetaSchedule tuning before compiling (`harness tune` does the same on demand). 0 trials: none."""

    trials: int = 0  # measured candidates over all of the recipe's kernels not yet in the database
    minutes: float | None = None  # time budget; tuning stops at whichever of trials and minutes comes first

    def __post_init__(self) -> None:
        if self.trials < 0 or (self.minutes is not None and self.minutes <= 0):
            raise ValueError("tune needs trials >= 0 and minutes > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """What to build and how to compress it. Steps apply in order after the base model is trained."""

    name: str
    description: str = ""
    model: ModelSpec
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    steps: tuple[StepSpec, ...] = ()
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    tune: TuneSpec = field(default_factory=TuneSpec)  # not part of key(): it changes speed, not the model
    sweep: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def width(self) -> float:
        """α after the width steps."""
        widths = [s.value for s in self.steps if isinstance(s, WidthSpec)]
        return widths[-1] if widths else self.model.width

    @property
    def resolution(self) -> int:
        """Input size after the resolution steps (a multiplier applies to the base resolution)."""
        res = self.data.resolution
        for step in self.steps:
            if isinstance(step, ResolutionSpec):
                res = step.size(self.data.resolution)
        return res

    @property
    def compression_steps(self) -> tuple[StepSpec, ...]:
        """Steps that act on the trained model (everything but width and resolution)."""
        return tuple(s for s in self.steps if not isinstance(s, ArchitectureStep))

    def reference(self) -> Recipe:
        """The uncompressed base this recipe is compared with: no steps, no sweep."""
        return replace(self, name=f"{self.name}:reference", steps=(), sweep={})

    def base_key(self) -> str:
        """Content hash of everything that determines the trained base model (not the eval cap)."""
        return content_hash(
            {"model": self.model, "data": replace(self.data, eval_samples=None), "train": self.train,
             "width": self.width, "resolution": self.resolution}
        )

    def key(self) -> str:
        """Content hash of what is built and measured (name, description and spelling of steps excluded)."""
        measured = {"base": self.base_key(), "steps": self.compression_steps, "measure": self.measure}
        if self.data.eval_samples is not None:
            measured["eval_samples"] = self.data.eval_samples
        return content_hash(measured)

    def with_eval_samples(self, samples: int | None) -> Recipe:
        """The same recipe evaluated on at most `samples` images (None: unchanged)."""
        if samples is None:
            return self
        if samples < 1:
            raise HarnessError(f"--eval-samples must be >= 1, got {samples}")
        return replace(self, data=replace(self.data, eval_samples=samples))

    def with_batch(self, batch: int) -> Recipe:
        """The same recipe measured at batch size `batch`."""
        if batch < 1:
            raise HarnessError(f"batch must be >= 1, got {batch}")
        return replace(self, measure=replace(self.measure, batch=batch))

    def steps_summary(self) -> str:
        """The steps as a compact string for the results table, e.g. 'width=0.5;prune(ratio=0.5)'."""
        return ";".join(step_summary(step) for step in self.steps)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__type__": type(obj).__name__, **data}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def content_hash(obj: Any, length: int = 16) -> str:
    """Stable short hash of dataclasses, mappings and scalars."""
    text = json.dumps(_jsonable(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def parse_step(raw: Any, where: str) -> StepSpec:
    """One step: a single-key mapping such as `{width: 0.5}` or `{prune: {ratio: 0.5}}`."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise HarnessError(f"{where}: a step is a mapping with one key, one of: {', '.join(STEPS)}")
    ((kind, value),) = raw.items()
    if kind not in STEPS:
        raise HarnessError(f"{where}: unknown step {kind!r}; allowed: {', '.join(STEPS)}")
    cls = STEPS[kind]
    if issubclass(cls, ArchitectureStep):
        value = {"value": value}
    elif value is None:
        value = {}
    elif not isinstance(value, dict):
        raise HarnessError(f"{where}.{kind}: expected a mapping of options, got {value!r}")
    aliases = STEP_ALIASES.get(kind, {})
    value = {aliases.get(k, k): v for k, v in value.items()}
    return from_dict(cls, value, f"{where}.{kind}")


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
    for key in sweep:
        if key not in SWEEP_KEYS:
            raise HarnessError(f"{where}.sweep: unknown key {key!r}; allowed: {', '.join(SWEEP_KEYS)}")
    return replace(recipe, steps=steps, sweep=sweep)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe file (or a shipped recipe by name, e.g. 'v1_fp32')."""
    path = Path(name_or_path)
    if not path.exists() and path.suffix == "" and (RECIPES_DIR / f"{path}.yaml").is_file():
        path = RECIPES_DIR / f"{path}.yaml"
    return recipe_from_dict(load_yaml(path), str(path), default_name=path.stem)


def available_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


SWEEP_KEYS = ("width", "resolution", "dtype")
