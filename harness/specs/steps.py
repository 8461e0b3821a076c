"""Step specs: what each recipe step (`width`, `resolution`, `prune`, `finetune`, `quantize`) is configured by,
and the enums they use. A leaf: no stage imported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from harness.limits import check


class Optimizer(StrEnum):
    SGD = "sgd"
    ADAM = "adam"


class Importance(StrEnum):
    """How channels are ranked before the least important ones are removed."""

    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn_scale"
    TAYLOR = "taylor"
    LAMP = "lamp"
    FPGM = "fpgm"
    RANDOM = "random"


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


# ---------------------------------------------------------------- steps


class ArchitectureStep:
    """A step that sets the architecture or input before training (read by `Recipe.width`/`.resolution`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WidthSpec(ArchitectureStep):
    """`- width: 0.5`: α, scaling every layer's channels (cost ~α²)."""

    value: float

    def __post_init__(self) -> None:
        check("width", "width", self.value)


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolutionSpec(ArchitectureStep):
    """`- resolution: 160` (explicit size) or `- resolution: 0.714` (ρ, multiplier of the base size)."""

    value: int | float

    def __post_init__(self) -> None:
        if isinstance(self.value, float):
            check("resolution_multiplier", "a resolution multiplier", self.value)
        else:
            check("resolution", "a resolution (pixels)", self.value)

    def size(self, base: int) -> int:
        """Input size in pixels for base resolution `base`."""
        return self.value if isinstance(self.value, int) else max(8, round(base * self.value))


@dataclass(frozen=True, kw_only=True, slots=True)
class PruneSpec:
    """`- prune: {ratio: 0.5, importance: l2, global: false, round_to: 8, ignore: [...], layer_ratios: {...}}`."""

    ratio: float  # share of channels removed, in [0, 1)
    importance: Importance = Importance.L2
    global_pruning: bool = False  # YAML `global`: rank channels across layers instead of per layer
    iterative_steps: int = 1
    round_to: int | None = 8  # pruned channel counts are multiples of this (SIMD); None: no rounding
    ignore: tuple[str, ...] = ()  # module names (fnmatch patterns) left whole; the classifier always is
    layer_ratios: dict[str, float] = field(default_factory=dict)  # module-name pattern → ratio

    def __post_init__(self) -> None:
        for name, ratio in [("ratio", self.ratio), *((f"layer_ratios.{k}", v) for k, v in self.layer_ratios.items())]:
            check("ratio", name, ratio)
        check("count", "iterative_steps", self.iterative_steps)
        check("count", "round_to", self.round_to)


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneSpec:
    """`- finetune: {epochs: 2, lr: 0.01, distill: true}`."""

    epochs: int = 2
    lr: float = 0.01
    batch_size: int | None = None  # None: the recipe's train.batch_size
    optimizer: Optimizer = Optimizer.SGD
    distill: bool = False  # teacher: the model before the compression steps
    temperature: float = 4.0
    distill_weight: float = 0.7

    def __post_init__(self) -> None:
        check("count", "epochs", self.epochs)
        check("lr", "lr", self.lr)
        check("batch", "batch_size", self.batch_size)
        check("share", "distill_weight", self.distill_weight)
        check("temperature", "temperature", self.temperature)


@dataclass(frozen=True, kw_only=True, slots=True)
class QuantizeSpec:
    """`- quantize: {dtype: int8, per_channel: true, calibration: minmax, calibration_samples: 128}`."""

    dtype: Literal["int8", "fp16"] = "int8"
    per_channel: bool = True  # per-output-channel weight scales
    symmetric_activations: bool = False  # False: uint8 activations with zero points; True: int8 symmetric
    calibration: CalibrationMethod = CalibrationMethod.MINMAX
    calibration_samples: int = 128
    reduce_range: bool = False  # 7-bit weights: exact int16 pair sums in x86 kernels without VNNI (see README)
    integer: bool = True  # TVM: integer convolutions (True) or the importer's float dequantize→conv→quantize

    def __post_init__(self) -> None:
        check("samples", "calibration_samples", self.calibration_samples)


StepSpec = WidthSpec | ResolutionSpec | PruneSpec | FinetuneSpec | QuantizeSpec

STEPS: dict[str, type] = {
    "width": WidthSpec,
    "resolution": ResolutionSpec,
    "prune": PruneSpec,
    "finetune": FinetuneSpec,
    "quantize": QuantizeSpec,
}

# YAML keys that are not valid Python field names, per step.
STEP_ALIASES: dict[str, dict[str, str]] = {"prune": {"global": "global_pruning"}}


def step_kind(step: StepSpec) -> str:
    """The YAML name of a step spec."""
    for kind, cls in STEPS.items():
        if type(step) is cls:
            return kind
    raise TypeError(f"not a step spec: {step!r}")


def step_summary(step: StepSpec) -> str:
    """Compact description with non-default fields, e.g. 'prune(ratio=0.5,importance=l1)'."""
    kind = step_kind(step)
    if isinstance(step, ArchitectureStep):
        return f"{kind}={step.value}"
    parts = []
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value != default:
            parts.append(f"{f.name}={getattr(value, 'value', value)}")
    return f"{kind}({','.join(parts)})"
