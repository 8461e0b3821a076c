"""Shared fixtures: tiny recipes and a results folder per test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`python -m harness ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def run_here(recipe: Path, results: Path) -> list:
    """What `python -m harness -q run RECIPE --results RESULTS` does, in this process: for tests whose subject is
    not the `run` command but what a run leaves (the table, the cache), the imports not paid again."""
    from harness.device import load_device
    from harness.pipeline import run_recipe
    from harness.recipe import load_recipe
    from harness.workspace import Workspace

    return run_recipe(load_recipe(str(recipe)), load_device("x86"), workspace=Workspace(results), progress=False)


TINY_RECIPE = {
    "model": {"name": "test_mobilenet_v1", "width": 0.25},
    "data": {"name": "digits", "resolution": 32, "eval_samples": 64},
    "train": {"epochs": 1, "lr": 0.05, "batch_size": 32},
    "measure": {"repeats": 3, "warmup": 1},
}


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe mapping to a YAML file and return its path."""

    def write(data: dict, name: str = "tiny") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def fresh_tune_trials(stdout: str) -> int:
    """The trials a `harness tune` from an empty database reports in its summary (0 when it reports none)."""
    found = re.search(r"\(0 tuned before\), (\d+) trials", stdout)
    return int(found[1]) if found else 0


def postprocessed_spaces(workload, target, rand_state: int = 0):  # noqa: ANN001, ANN201 (TVM types)
    """The design spaces of `workload` (a fused TIR kernel) in the harness's search for `target` that its
    postprocessors accept, postprocessed: schedules as MetaSchedule would measure them, taken without measuring."""
    from tvm.s_tir import meta_schedule as ms

    from harness.compile.intrinsics import design_space

    context = ms.TuneContext(mod=workload, target=target, space_generator=design_space(target),
                             rand_state=rand_state)
    return (s for s in context.generate_design_space() if all(p.apply(s) for p in context.space_generator.postprocs))


def tensorized_schedule(workload, target):  # noqa: ANN001, ANN201 (TVM types: imported lazily)
    """The first postprocessed design space of `workload` in the harness's dot-product search for `target` that
    tensorizes (a space that computes the padding inline does not). For tests of what tensorized kernels
    compute, not of their speed."""
    for sch in postprocessed_spaces(workload, target):
        if "Tensorize" in [inst.kind.name for inst in sch.trace.insts]:
            return sch
    raise AssertionError(f"no design space tensorizes for {target}")


def start_emulated_boards(device: str, boards: int = 1) -> list:
    """Start `boards` emulated boards of the profile `device`; skips the test, with the reason, where the
    emulator cannot be set up (no qemu-user-static or debootstrap, not root, no Debian mirror or PyPI)."""
    from harness import emulator
    from harness.device import load_device
    from harness.errors import HarnessError

    profile = load_device(device)
    try:
        emulator.setup(emulator.spec_of(profile))
    except HarnessError as exc:
        pytest.skip(f"emulator cannot be set up here: {exc}")
    return emulator.start(profile, boards=boards)

