"""Every spec and enum of a recipe (model, data, training, steps, measurement, tuning, compile options),
and the small value types that flow between stages (tuning coverage).

A leaf package (this file and `steps.py`): it imports no stage (no torch, TVM or ONNX), so every stage can
import it and none imports `recipe.py` back. Specs are frozen, keyword-only dataclasses validated in
`__post_init__`; an unused option is None. Parsing YAML into them is `harness.recipe`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from harness.limits import check, require
from harness.schema import INTERNAL, content_hash
from harness.specs.steps import (
    STEP_ALIASES,
    STEPS,
    ArchitectureStep,
    CalibrationMethod,
    FinetuneSpec,
    Importance,
    Optimizer,
    PruneSpec,
    QuantizeSpec,
    ResolutionSpec,
    StepSpec,
    WidthSpec,
    step_kind,
    step_summary,
)

# ---------------------------------------------------------------- enums


class DatasetName(StrEnum):
    DIGITS = "digits"
    IMAGEFOLDER = "imagefolder"
    CIFAR10 = "cifar10"


@dataclass(frozen=True, kw_only=True, slots=True)
class CompileOptions:
    """What the steps ask of the compiler; part of the compiled artifact's cache key."""

    fp16: bool = False  # convolutions and matrix products in float16 (mixed precision)
    integer: bool = False  # a QDQ model's quantized convolutions as integer ones


@dataclass(frozen=True, kw_only=True, slots=True)
class TuningCoverage:
    """How many of a module's tuning tasks (unique fused kernels) have a tuned schedule in the database."""

    tuned: int
    total: int

    @property
    def complete(self) -> bool:
        return self.tuned == self.total

    def __str__(self) -> str:
        return f"{self.tuned}/{self.total}"

    @classmethod
    def parse(cls, text: object) -> TuningCoverage | None:
        """From its "k/n" form (e.g. a results-table cell); None when `text` is not one."""
        tuned, sep, total = str(text).partition("/")
        return cls(tuned=int(tuned), total=int(total)) if sep and tuned.isdigit() and total.isdigit() else None


def fully_tuned(tuned_kernels: TuningCoverage | object, schedules: object) -> bool:
    """Every kernel of an artifact runs a real schedule: tuned, or on a GPU DLight's defaults (untuned CPU kernels are
    naive loops). `tuned_kernels` may be a results-table cell ("k/n"; a missing cell is not complete)."""
    coverage = tuned_kernels if isinstance(tuned_kernels, TuningCoverage) else TuningCoverage.parse(tuned_kernels)
    return (coverage is not None and coverage.complete) or schedules == "dlight"


# ---------------------------------------------------------------- recipe


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    name: str
    width: float = 1.0
    weights: str | None = None  # checkpoint file or torchvision weights name; None: random init

    def __post_init__(self) -> None:
        check("width", "width", self.width)


@dataclass(frozen=True, kw_only=True, slots=True)
class DataSpec:
    name: DatasetName = DatasetName.DIGITS
    resolution: int = 224  # base input size (the ρ = 1 resolution)
    path: str | None = None  # ImageFolder root (with train/ and val/) or CIFAR-10 download folder
    val_fraction: float = 0.2  # digits: held-out share
    eval_samples: int | None = None  # cap on evaluated images; None: the whole eval split
    seed: int = 0

    def __post_init__(self) -> None:
        check("resolution", "resolution", self.resolution)
        check("fraction", "val_fraction", self.val_fraction)
        check("samples", "eval_samples", self.eval_samples)
        check("seed", "seed", self.seed)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSpec:
    epochs: int = 3  # 0: use the weights as they are
    lr: float = 0.05
    batch_size: int = 32
    optimizer: Optimizer = Optimizer.SGD
    weight_decay: float = 4e-5
    seed: int = 0

    def __post_init__(self) -> None:
        check("epochs", "epochs", self.epochs)
        check("lr", "lr", self.lr)
        check("batch", "batch_size", self.batch_size)
        check("weight_decay", "weight_decay", self.weight_decay)
        check("seed", "seed", self.seed)


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
        check("batch", "batch", self.batch)
        check("repeats", "repeats", self.repeats)
        check("count", "number", self.number)
        check("warmup", "warmup", self.warmup)
        check("tolerance", "tolerance", self.tolerance)
        check("tolerance", "int8_tolerance", self.int8_tolerance)


@dataclass(frozen=True, kw_only=True, slots=True)
class TuneSpec:
    """MetaSchedule tuning before compiling (`harness tune` does the same on demand). 0 trials: none."""

    trials: int = 0  # measured candidates over all of the recipe's kernels not yet in the database
    minutes: float | None = None  # time budget; tuning stops at whichever of trials and minutes comes first

    def __post_init__(self) -> None:
        check("trials", "trials", self.trials)
        check("minutes", "minutes", self.minutes)


SWEEP_KEYS = ("width", "resolution", "dtype")
SWEEP_DTYPES = ("fp32", "fp16", "int8")  # fp32: without the recipe's quantize step


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
    source: str = field(default="", compare=False, metadata={INTERNAL: True})  # as the user named it (CLI hints)

    def __post_init__(self) -> None:
        if not self.name or self.name[0] in ".-" or not self.name.isprintable() or {"/", "\\"} & set(self.name):
            raise ValueError(f"name {self.name!r}: it names files and folders, so it must be printable, without / "
                             "or \\, and not start with . or -")

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
        require("samples", "--eval-samples", samples)
        return replace(self, data=replace(self.data, eval_samples=samples))

    def with_batch(self, batch: int) -> Recipe:
        """The same recipe measured at batch size `batch`."""
        require("batch", "batch", batch)
        return replace(self, measure=replace(self.measure, batch=batch))

    def steps_summary(self) -> str:
        """The steps as a compact string for the results table, e.g. 'width=0.5;prune(ratio=0.5)'."""
        return ";".join(step_summary(step) for step in self.steps)


__all__ = ["STEPS", "STEP_ALIASES", "SWEEP_DTYPES", "SWEEP_KEYS", "ArchitectureStep", "CalibrationMethod",
           "CompileOptions", "DataSpec", "DatasetName", "FinetuneSpec", "Importance", "MeasureSpec", "ModelSpec",
           "Optimizer", "PruneSpec", "QuantizeSpec", "Recipe", "ResolutionSpec", "StepSpec", "TrainSpec", "TuneSpec",
           "TuningCoverage", "WidthSpec", "step_kind", "step_summary"]
