"""MobileNet v1 (Howard et al., 2017) with the width multiplier α on every layer."""

from __future__ import annotations

from torch import Tensor, nn

# (output channels, stride) of the 13 depthwise-separable blocks, Table 1 of the paper.
V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


def scaled(channels: int, width: float, min_channels: int = 8) -> int:
    """Channels of a layer under width multiplier α (as the reference implementation: int(c·α), ≥ 8)."""
    return max(int(channels * width), min_channels)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias) → BatchNorm → ReLU, the unit every MobileNet v1 layer is made of."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """3×3 depthwise convolution then 1×1 pointwise convolution, each followed by BN and ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_bn_relu(cin, cin, 3, stride, groups=cin)
        self.pointwise = conv_bn_relu(cin, cout, 1, 1)


class MobileNetV1(nn.Module):
    """MobileNet v1: a 3×3/2 stem, depthwise-separable blocks, global average pool, classifier."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        blocks: tuple[tuple[int, int], ...] = V1_BLOCKS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be > 0, got {width}")
        cin = scaled(32, width)
        layers: list[nn.Module] = [conv_bn_relu(3, cin, 3, 2)]
        for cout, stride in blocks:
            layers.append(DepthwiseSeparable(cin, scaled(cout, width), stride))
            cin = scaled(cout, width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))
