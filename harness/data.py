"""Datasets: scikit-learn digits (offline default), ImageFolder directories and CIFAR-10."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from harness.errors import HarnessError
from harness.specs import DatasetName, DataSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, slots=True)
class DataSplits:
    """Train split (None when a data set has no training images), eval split and class names."""

    train: Dataset | None
    val: Dataset
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class UpsampledDigits(Dataset):
    """8×8 digit images, bilinearly upsampled to `resolution`, replicated to 3 channels, standardised."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, resolution: int) -> None:
        self.images = torch.from_numpy(images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        self.images = (self.images - 0.5) / 0.5
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.interpolate(self.images[index : index + 1], size=self.resolution, mode="bilinear",
                            align_corners=False)
        return img[0].expand(3, -1, -1).contiguous(), self.labels[index]


def _digits(spec: DataSpec, resolution: int) -> DataSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(spec.seed).permutation(len(digits.target))
    n_val = int(round(len(order) * spec.val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return DataSplits(
        train=UpsampledDigits(digits.images[train_idx], digits.target[train_idx], resolution),
        val=UpsampledDigits(digits.images[val_idx], digits.target[val_idx], resolution),
        classes=tuple(str(c) for c in range(10)),
    )


def _imagenet_transforms(resolution: int, train: bool):  # noqa: ANN202 (torchvision transform)
    from torchvision import transforms as T

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(resolution), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.Resize(int(resolution / 0.875)), T.CenterCrop(resolution), T.ToTensor(), norm])


def _imagefolder(spec: DataSpec, resolution: int) -> DataSplits:
    from torchvision.datasets import ImageFolder

    if spec.path is None:
        raise HarnessError("data.path: imagefolder needs a folder (with val/ and optionally train/)")
    root = Path(spec.path)
    val_dir = root / "val" if (root / "val").is_dir() else root
    if not val_dir.is_dir():
        raise HarnessError(f"data.path: folder not found: {root}")
    try:
        val = ImageFolder(str(val_dir), transform=_imagenet_transforms(resolution, train=False))
        train = (ImageFolder(str(root / "train"), transform=_imagenet_transforms(resolution, train=True))
                 if (root / "train").is_dir() else None)
    except (FileNotFoundError, RuntimeError) as exc:
        raise HarnessError(f"data.path: {root}: {exc}") from None
    return DataSplits(train=train, val=val, classes=tuple(val.classes))


def _cifar10(spec: DataSpec, resolution: int) -> DataSplits:
    from torchvision import transforms as T
    from torchvision.datasets import CIFAR10

    root = Path(spec.path or Path.home() / ".cache" / "harness" / "cifar10")
    tf = T.Compose([T.Resize(resolution), T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465),
                                                                       (0.247, 0.243, 0.261))])
    try:
        train = CIFAR10(str(root), train=True, download=True, transform=tf)
        val = CIFAR10(str(root), train=False, download=True, transform=tf)
    except (OSError, RuntimeError) as exc:
        raise HarnessError(f"CIFAR-10: cannot load or download into {root}: {exc}") from None
    return DataSplits(train=train, val=val, classes=tuple(val.classes))


LOADERS = {
    DatasetName.DIGITS: _digits,
    DatasetName.IMAGEFOLDER: _imagefolder,
    DatasetName.CIFAR10: _cifar10,
}


def load_data(spec: DataSpec, resolution: int) -> DataSplits:
    """The train/eval splits of the data set `spec` names, at `resolution` pixels."""
    splits = LOADERS[spec.name](spec, resolution)
    if spec.eval_samples is not None and spec.eval_samples < len(splits.val):
        splits = DataSplits(splits.train, Subset(splits.val, range(spec.eval_samples)), splits.classes)
    return splits


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A deterministic single-process loader (2-core hosts gain nothing from worker processes)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=False)


def first_batch(splits: DataSplits, batch: int) -> np.ndarray:
    """The first `batch` images of `calibration_batches` as one batch: the input that is timed and checked."""
    return next(iter(calibration_batches(splits, batch, batch)))


def calibration_batches(splits: DataSplits, samples: int, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Up to `samples` images (from the train split, else eval) as float32 NCHW numpy batches."""
    source = splits.train if splits.train is not None else splits.val
    subset = Subset(source, range(min(samples, len(source))))
    for images, _ in make_loader(subset, batch_size):
        yield images.numpy()
