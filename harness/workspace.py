"""Where a run keeps things: content-addressed caches and per-run folders under `results/`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness import cache
from harness.schema import content_hash

log = logging.getLogger(__name__)
RUNNING = "RUNNING"  # in a run folder while its run is in progress: its process (`cache.owner`)
EMPTY_S = 60  # a run folder still empty after this long was left by a run killed as it made it
RESULTS_DIR = Path(os.environ.get("HARNESS_RESULTS", Path(__file__).resolve().parent.parent / "results"))


def package_versions() -> dict[str, str]:
    """Versions of the packages whose change invalidates cached artifacts."""
    import onnx
    import onnxruntime
    import torch
    import tvm

    return {"tvm": tvm.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _sources_digest(paths: list[Path], prefix: str = "") -> str:
    digest = hashlib.sha256(prefix.encode())
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def compiler_digest() -> str:
    """SHA-256 of the harness's compile passes (`harness/compile/*.py`)."""
    return _sources_digest(sorted((Path(__file__).resolve().parent / "compile").glob("*.py")))


@functools.cache
def exporter_digest() -> str:
    """SHA-256 of what makes a model's ONNX files: the harness's export and quantization code and the torch, onnx
    and ONNX Runtime versions (a changed exporter must not reuse the files of the old one)."""
    import onnx
    import onnxruntime
    import torch

    here = Path(__file__).resolve().parent
    return _sources_digest([here / "export.py", here / "compress" / "quantize.py"],
                           f"{torch.__version__} {onnx.__version__} {onnxruntime.__version__}")


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
        """Cache path of a compiled artifact: a hash of its inputs, target, options, package versions and the
        compiler's own source (a changed compile pass must not reuse artifacts of the old one)."""
        key = content_hash({"onnx": onnx_key, "target": target, "options": options,
                            "versions": package_versions(), "compiler": compiler_digest()})
        return self.root / "cache" / "artifacts" / device / key / "model.so"

    @property
    def tuning_root(self) -> Path:
        """Tuning databases: `tuning/<device>/<target hash>/` (see harness.compile.tuning)."""
        return self.root / "tuning"

    def new_run_dir(self, recipe_key: str) -> tuple[str, Path]:
        """A fresh run folder named by time and recipe hash, marked as running (by this process, `cache.owner`)
        until the run has recorded its rows."""
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{recipe_key[:8]}"
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        for suffix in itertools.count(1):
            path = self.root / "runs" / (run_id if suffix == 1 else f"{run_id}-{suffix}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            try:
                (path / RUNNING).write_text(f"{cache.owner()}\n")
            except OSError:  # e.g. a full disk: no marker-less folder stays behind
                shutil.rmtree(path, ignore_errors=True)
                raise
            return path.name, path
        raise AssertionError("unreachable")

    def sweep(self) -> None:
        """Remove what killed runs left behind: temporary files, and run folders whose process has ended (on this
        host and in this PID namespace; another's, by age: `cache.ended`)."""
        removed = cache.sweep(self.root)
        for marker in (self.root / "runs").glob(f"*/{RUNNING}"):
            try:
                recorded, mtime = marker.read_bytes().decode(errors="replace"), marker.stat().st_mtime
            except OSError:  # gone meanwhile, or not a file
                continue
            if cache.ended(recorded, mtime):
                shutil.rmtree(marker.parent, ignore_errors=True)
                removed += 1
        for folder in (self.root / "runs").glob("*/"):  # killed between making a folder and marking it
            with contextlib.suppress(OSError):  # not empty (rmdir refuses), or gone meanwhile
                if time.time() - folder.stat().st_mtime > EMPTY_S:
                    folder.rmdir()
                    removed += 1
        if removed:
            log.info("removed %d leftover(s) of killed runs under %s", removed, self.root)


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst` (a hard link when possible: artifacts can be large)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
