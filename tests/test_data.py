from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import calibration_batches, load_data
from harness.errors import HarnessError
from harness.specs import DataSpec


def test_digits_split_is_fixed_and_upsampled() -> None:
    splits = load_data(DataSpec(), 48)
    again = load_data(DataSpec(), 48)
    assert splits.num_classes == 10
    assert len(splits.train) + len(splits.val) == 1797
    assert len(splits.val) == round(1797 * 0.2)
    image, label = splits.val[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert torch.equal(image, again.val[0][0]) and label == again.val[0][1]
    assert torch.equal(image[0], image[1])  # grey replicated to 3 channels
    assert -1.01 <= float(image.min()) and float(image.max()) <= 1.01


def test_eval_cap_and_calibration_batches() -> None:
    splits = load_data(DataSpec(eval_samples=10), 16)
    assert len(splits.val) == 10
    batches = list(calibration_batches(splits, samples=5, batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    assert all(b.dtype == np.float32 for b in batches)


def test_imagefolder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    splits = load_data(DataSpec(name="imagefolder", path=str(tmp_path)), 32)
    assert splits.classes == ("cat", "dog")
    assert len(splits.train) == 6 and len(splits.val) == 6
    assert splits.val[0][0].shape == (3, 32, 32)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="imagefolder needs a folder"):
        load_data(DataSpec(name="imagefolder"), 32)
    with pytest.raises(HarnessError, match="folder not found"):
        load_data(DataSpec(name="imagefolder", path=str(tmp_path / "absent")), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="empty"):
        load_data(DataSpec(name="imagefolder", path=str(tmp_path / "empty")), 32)
