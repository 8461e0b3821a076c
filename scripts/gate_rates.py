"""Measure the A/B gate's false-alarm rate and power on this host (README, "Regression gate").

Builds MobileNet v1 and v2 (224×224, digits classifier, x86 profile, tuned database) as the base set, an identical
copy of it (the unchanged case), and a controlled slowdown: the same networks with one block repeated, whose kernels
are identical to existing tuned ones (v1: two more 512-channel depthwise-separable blocks at 14×14, +105 M
Mult-Adds, +18 %; v2: two more 96-channel inverted residual blocks at 14×14, +45 M, +15 %; latency grows less than
the Mult-Adds, about 10 %). Then runs the gate `--runs` times against each and writes the verdicts.

    python scripts/gate_rates.py [--runs 20] [--out results/gate_rates]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from harness.abtest import Verdict
from harness.artifacts import build_set, load_set, save_set
from harness.check import ab_check
from harness.compile import compile_onnx
from harness.device import load_device
from harness.export import export_onnx
from harness.models import build_model, model_cost
from harness.noise import cpu_model
from harness.recipe import load_recipe
from harness.tune import tuning_database
from harness.workspace import Workspace


def slowed(name: str, repeats: int = 2):  # noqa: ANN201 (nn.Module)
    """`name` (10 classes) with one block repeated `repeats` more times: the original's kernels, more of them."""
    model = build_model(name, num_classes=10).eval()
    at = 8 if name == "mobilenet_v1" else 13  # v1: a 512→512 block at 14×14; v2: the last 96-channel block
    layers = list(model.features)
    copies = [copy.deepcopy(layers[at]) for _ in range(repeats)]
    model.features = type(model.features)(*layers[:at + 1], *copies, *layers[at + 1:])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/gate_rates"))
    args = parser.parse_args()
    profile, ws = load_device("x86"), Workspace()
    base = build_set([load_recipe("v1_fp32"), load_recipe("v2_fp32")], profile, args.out / "base", ws)
    shutil.copytree(base.root, args.out / "same", dirs_exist_ok=True)  # separate files: loaded as separate modules
    same = load_set(args.out / "same")
    built, extra = {}, {}
    database = tuning_database(profile, ws)
    for recipe, model_name in (("v1_fp32", "mobilenet_v1"), ("v2_fp32", "mobilenet_v2")):
        model = slowed(model_name)
        onnx = export_onnx(model, args.out / "slow_src" / recipe / "model.onnx", resolution=224)
        artifact = compile_onnx(onnx, profile, args.out / "slow_src" / recipe / "model.so", database=database)
        built[recipe] = artifact, (1, 3, 224, 224)
        extra[recipe] = model_cost(model, 224).macs / model_cost(build_model(model_name, num_classes=10), 224).macs
        print(f"{recipe} slowed: {artifact.report.tuned_kernels} kernels tuned, {extra[recipe]:.3f}× the Mult-Adds")
    slow = save_set(built, profile, args.out / "slow")
    records = []
    for case, new in (("unchanged", same), ("slowed", slow)):
        for run in range(args.runs):
            start = time.monotonic()
            rows = ab_check(base, new, progress=False)
            wall = time.monotonic() - start
            for r in rows:
                records.append({"case": case, "run": run, "recipe": r.recipe, "ratio": r.ratio, "p": r.p_value,
                                "verdict": str(r.verdict), "reason": r.reason, "wall_s": wall})
            print(case, run, [(r.recipe, round(r.ratio, 3), str(r.verdict)) for r in rows], f"{wall:.1f} s")
    frame = pd.DataFrame(records)
    frame.to_csv(args.out / "verdicts.csv", index=False)
    runs = frame.groupby(["case", "run"])["verdict"].apply(lambda v: Verdict.REGRESSION in set(v))
    summary = {"host": cpu_model(), "threads": profile.thread_count, "runs": args.runs,
               "false_alarms": int(runs["unchanged"].sum()), "catches": int(runs["slowed"].sum()),
               "inconclusive_checks": int((frame["verdict"] == "inconclusive").sum()),
               "median_ratio_slowed": frame[frame.case == "slowed"].groupby("recipe")["ratio"].median().to_dict(),
               "median_ratio_unchanged": frame[frame.case == "unchanged"].groupby("recipe")["ratio"].median().to_dict(),
               "macs_ratio_slowed": extra, "median_check_wall_s": float(frame.groupby(["case", "run"])["wall_s"]
                                                                        .first().median())}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
