"""Portable (ISA-level) build against native (CPU-model) build of the same recipes, timed in one process.

Both builds take their schedules from databases with the same records (MetaSchedule matches kernels by
workload, not by target), so the ratio isolates what the portable `mcpu` costs in code generation.
Usage: python scripts/portable_vs_native.py RECIPE... (the x86-native database must hold the records).
"""

from __future__ import annotations

import sys

import numpy as np

from harness.build import compile_variant, export_structural
from harness.data import first_batch
from harness.device import load_device
from harness.measure import LocalExecutor, latency_stats
from harness.recipe import load_recipe
from harness.tune import tuning_database
from harness.workspace import Workspace


def main(names: list[str], rounds: int = 5) -> None:
    ws = Workspace()
    for name in names:
        # untrained (build.structural): latency does not depend on the weights
        exported, splits = export_structural(load_recipe(name), ws, progress=False)
        batch, runs = first_batch(splits, 1), {}
        for device in ("x86", "x86-native"):
            profile = load_device(device)
            artifact = compile_variant(exported, profile, ws, tuning_database(profile, ws))
            runs[device] = (LocalExecutor(artifact.path, profile.thread_count), artifact)
        times: dict[str, list[float]] = {d: [] for d in runs}
        for r in range(rounds):  # interleaved, order alternating, so drift hits both alike
            for device in (list(runs) if r % 2 == 0 else list(reversed(runs))):
                times[device] += runs[device][0].time(batch, exported.recipe.measure)
        med = {d: latency_stats(t).median_ms for d, t in times.items()}
        for d, (_, artifact) in runs.items():
            print(f"{name} {d:<10} {artifact.report.tuned_kernels!s:>6} tuned  median {med[d]:.3f} ms  "
                  f"target {artifact.target}")
        p90 = {d: np.percentile(t, 90) * 1e3 for d, t in times.items()}
        print(f"{name} portable/native = {med['x86'] / med['x86-native']:.3f}  (n={len(times['x86'])} each, "
              f"p90 {p90['x86']:.3f} / {p90['x86-native']:.3f} ms)")


if __name__ == "__main__":
    main(sys.argv[1:])
