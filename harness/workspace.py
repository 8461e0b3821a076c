"""Where a run keeps things: content-addressed caches and per-run folders under `results/`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.recipe import content_hash
from harness.results import RESULTS_DIR


def package_versions() -> dict[str, str]:
    """Versions of the packages whose change invalidates cached artifacts."""
    import onnx
    import onnxruntime
    import torch
    import tvm

    return {"tvm": tvm.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


@dataclass(frozen=True, slots=True)
class Workspace:
    """The results folder: `results.csv`, `runs/<run_id>/`, and `cache/` (models, ONNX, artifacts)."""

    root: Path = RESULTS_DIR

    @property
    def table(self) -> Path:
        return self.root / "results.csv"

    def model_dir(self, key: str) -> Path:
        """Cache of a trained (and possibly pruned and fine-tuned) PyTorch model."""
        return self.root / "cache" / "models" / key

    def onnx_dir(self, key: str) -> Path:
        """Cache of the exported (and possibly quantized) ONNX files of a model variant."""
        return self.root / "cache" / "onnx" / key

    def artifact_path(self, onnx_key: str, device: str, target: str, options: object) -> Path:
        """Cache path of a compiled artifact: a hash of its inputs, target, options and package versions."""
        key = content_hash({"onnx": onnx_key, "target": target, "options": options,
                            "versions": package_versions()})
        return self.root / "cache" / "artifacts" / device / key / "model.so"

    @property
    def tuning_root(self) -> Path:
        """Tuning databases: `tuning/<device>/<target hash>/` (see harness.compile.tuning)."""
        return self.root / "tuning"

    def new_run_dir(self, recipe_key: str) -> tuple[str, Path]:
        """A fresh run folder named by time and recipe hash."""
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{recipe_key[:8]}"
        path = self.root / "runs" / run_id
        suffix = 1
        while path.exists():
            suffix += 1
            path = self.root / "runs" / f"{run_id}-{suffix}"
        path.mkdir(parents=True)
        return path.name, path


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst` (a hard link when possible: artifacts can be large)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)
