"""Saved artifact sets (`harness build --out DIR`): the compiled libraries of some recipes for one device with a
`manifest.json` naming each one's input, target and tuning, so that another revision's builds can be timed
against this one's (`harness check --base DIR`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.device import DeviceProfile
from harness.errors import HarnessError
from harness.results import git_revision, write_json
from harness.specs import Recipe
from harness.workspace import Workspace, link_or_copy

if TYPE_CHECKING:
    from harness.compile import Artifact

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = 1  # manifest format version


@dataclass(frozen=True, kw_only=True, slots=True)
class SavedArtifact:
    """One compiled model of a saved set: its library and the input it is timed on."""

    recipe: str
    lib: Path
    input_shape: tuple[int, ...]
    target: str
    tuned_kernels: str
    dtype: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ArtifactSet:
    root: Path
    git_rev: str
    device: str
    threads: int | None
    artifacts: dict[str, SavedArtifact]


def build_set(recipes: list[Recipe], profile: DeviceProfile, out: Path, ws: Workspace, progress: bool = True
              ) -> ArtifactSet:
    """Compile each recipe's model (untrained: latency does not depend on the weights) for `profile` with its
    tuning database, and save the libraries under `out` with a manifest."""
    if profile.is_remote or profile.gpu_index is not None:
        raise HarnessError(f"device {profile.name}: saved artifact sets are timed on this host's CPU")
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise HarnessError(f"--out {out}: a folder that is not a saved artifact set; give a new or empty folder")
    # The build stages load torch and TVM (seconds): only here, so that reading a saved set (and `check`'s usage
    # errors) stays quick.
    from harness.build import compile_variant, export_structural
    from harness.data import first_batch
    from harness.tune import tuning_database

    database = tuning_database(profile, ws)
    built = {}
    for recipe in recipes:
        exported, splits = export_structural(recipe, ws, progress)
        artifact = compile_variant(exported, profile, ws, database)
        batch = first_batch(splits, recipe.measure.batch)
        built[recipe.name] = artifact, tuple(batch.shape)
        log.info("%s: compiled (%s kernels tuned)", recipe.name, artifact.report.tuned_kernels)
    return save_set(built, profile, out)


def save_set(built: dict[str, tuple[Artifact, tuple[int, ...]]], profile: DeviceProfile, out: Path) -> ArtifactSet:
    """Save compiled artifacts (each with the float32 input shape it is timed on) as a set under `out`."""
    entries = {}
    for name, (artifact, shape) in built.items():
        link_or_copy(artifact.path, out / name / "model.so")
        entries[name] = {"lib": f"{name}/model.so", "input_shape": list(shape), "dtype": "float32",
                         "target": artifact.target,
                         "tuned_kernels": str(artifact.report.tuned_kernels)}
    write_json(out / MANIFEST, {"format": FORMAT, "git_rev": git_revision(), "device": profile.name,
                                "threads": profile.thread_count, "artifacts": entries})
    return load_set(out)


def load_set(root: Path) -> ArtifactSet:
    """A saved artifact set, checked: its manifest's format and every library it names."""
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{root}: not a saved artifact set (no {MANIFEST}; make one with `harness build "
                           "RECIPE... --out DIR`)") from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HarnessError(f"{path}: manifest format {data.get('format') if isinstance(data, dict) else None!r}, "
                           f"this harness reads format {FORMAT}")
    artifacts = {}
    try:
        for name, entry in data["artifacts"].items():
            lib = root / entry["lib"]
            if not lib.is_file():
                raise HarnessError(f"{path}: {name}: library {lib} is missing")
            artifacts[name] = SavedArtifact(recipe=name, lib=lib, input_shape=tuple(entry["input_shape"]),
                                            target=entry["target"], tuned_kernels=entry["tuned_kernels"],
                                            dtype=entry["dtype"])
        return ArtifactSet(root=root, git_rev=data["git_rev"], device=data["device"], threads=data["threads"],
                           artifacts=artifacts)
    except (KeyError, TypeError, AttributeError) as exc:
        raise HarnessError(f"{path}: malformed manifest (missing or wrong {exc})") from None

