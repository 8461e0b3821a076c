"""Architecture steps: the width multiplier α and the resolution multiplier ρ."""

from __future__ import annotations

from dataclasses import dataclass


class ArchitectureStep:
    """A step that changes the architecture or input before training (not a transform of weights)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WidthSpec(ArchitectureStep):
    """`- width: 0.5`: α, scaling every layer's channels (cost ~α²)."""

    value: float

    def __post_init__(self) -> None:
        if not 0 < self.value <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.value}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolutionSpec(ArchitectureStep):
    """`- resolution: 160` (explicit size) or `- resolution: 0.714` (ρ, multiplier of the base size)."""

    value: int | float

    def __post_init__(self) -> None:
        if isinstance(self.value, float) and not 0 < self.value <= 1:
            raise ValueError(f"a resolution multiplier must be in (0, 1], got {self.value}")
        if isinstance(self.value, int) and self.value < 8:
            raise ValueError(f"a resolution must be >= 8 pixels, got {self.value}")

    def size(self, base: int) -> int:
        """Input size in pixels for base resolution `base`."""
        return self.value if isinstance(self.value, int) else max(8, round(base * self.value))
