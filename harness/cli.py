"""Command line: parses arguments and calls the stages; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from harness.errors import HarnessError

log = logging.getLogger("harness")


def _run(args: argparse.Namespace) -> int:
    from harness.device import load_device
    from harness.pipeline import run_recipe
    from harness.recipe import load_recipe
    from harness.results import SUMMARY_COLUMNS, format_rows
    from harness.workspace import Workspace

    recipe = load_recipe(args.recipe).with_eval_samples(args.eval_samples)
    profile = load_device(args.device).with_remote(tracker=args.tracker, direct=args.rpc).with_gpu(args.gpu)
    ws = Workspace(Path(args.results)) if args.results else Workspace()
    rows = [row for batch in (args.batch or [recipe.measure.batch])
            for row in run_recipe(recipe.with_batch(batch), profile, workspace=ws, progress=not args.quiet,
                                  record=not args.no_record, tune_minutes=args.tune_minutes)]
    print(format_rows(rows, (*SUMMARY_COLUMNS, "batch", "images_per_s", "torch_fp16_latency_ms")
                      if profile.gpu_index is not None else SUMMARY_COLUMNS))
    if not args.no_record:
        print(f"\nappended {len(rows)} row(s) to {ws.table}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from harness.device import load_device
    from harness.pipeline import run_variants
    from harness.recipe import load_recipe
    from harness.results import format_rows
    from harness.sweep import expand
    from harness.workspace import Workspace

    recipe = load_recipe(args.recipe).with_eval_samples(args.eval_samples)
    grid = {k: v for k, v in (("width", args.width), ("resolution", args.resolution), ("dtype", args.dtype)) if v}
    variants = expand(recipe, grid or None)
    profile = load_device(args.device).with_remote(tracker=args.tracker, direct=args.rpc)
    ws = Workspace(Path(args.results)) if args.results else Workspace()
    rows = run_variants(variants, recipe.reference(), profile, workspace=ws, progress=not args.quiet,
                        record=not args.no_record)
    print(format_rows(rows))
    if not args.no_record:
        print(f"\nappended {len(rows)} row(s) to {ws.table}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from harness.device import load_device
    from harness.pipeline import refresh_shipped, tune_variants, tuning_database, with_references
    from harness.recipe import load_recipe
    from harness.workspace import Workspace

    profile = load_device(args.device).with_remote(tracker=args.tracker, direct=args.rpc)
    ws = Workspace(Path(args.results)) if args.results else Workspace()
    if args.shipped:
        if args.recipe:
            raise HarnessError("tune --shipped tunes every shipped recipe: name no recipe")
        report, shipped, size = refresh_shipped(profile, trials=args.trials, minutes=args.minutes, workspace=ws,
                                                progress=not args.quiet, refine=args.refine)
        if report is not None:
            print(f"tuned every shipped recipe for {profile.name}: {report.summary()}")
        print(f"shipped database: {shipped} ({size / 1e6:.2f} MB)")
        return 0
    if not args.recipe:
        raise HarnessError("tune: name at least one recipe, or --shipped for all of them")
    recipes = [load_recipe(r) for r in args.recipe]
    report = tune_variants(with_references(recipes), profile, trials=args.trials, minutes=args.minutes,
                           workspace=ws, progress=not args.quiet, refine=args.refine)
    print(f"tuned {', '.join(r.name for r in recipes)} for {profile.name}: {report.summary()}")
    print(f"database: {tuning_database(profile, ws)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    from harness.bench import add_fp32_ratios, bench_recipe
    from harness.device import load_device
    from harness.recipe import load_recipe
    from harness.results import format_rows
    from harness.workspace import Workspace

    recipes = [load_recipe(r) for r in args.recipe]
    profile = load_device(args.device)
    ws = Workspace(Path(args.results)) if args.results else Workspace()
    rows = [row for r in recipes for row in bench_recipe(r, profile, repeats=args.repeats, workspace=ws,
                                                          progress=not args.quiet)]
    add_fp32_ratios(rows)
    print(format_rows(rows, ["recipe", "dtype", "runtime", "latency_ms_median", "latency_ms_min", "vs_ort",
                             "vs_fp32", "tuned_kernels"]))
    out = ws.root / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"\nwrote {out}")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from harness import emulator
    from harness.device import load_device

    if args.action == "status":
        state, counts = emulator.status()
        if not state.boards:
            print("no emulated boards running")
            return 0
        print(f"tracker 127.0.0.1:{state.tracker_port}")
        for board in state.boards:
            print(f"  {board.name:<14} key {board.key:<6} port {board.port}  pid {board.pid}")
        for key, count in counts.items():
            print(f"  key {key}: {count} board(s) registered with the tracker")
        return 0
    if args.action == "stop":
        stopped = emulator.stop(args.device)
        print(f"stopped {len(stopped)} board(s)" + (f": {', '.join(b.name for b in stopped)}" if stopped else ""))
        return 0
    if args.device is None:
        raise HarnessError(f"emulator {args.action}: name a device, e.g. `emulator {args.action} rpi4`")
    profile = load_device(args.device)
    if args.action == "setup":
        print(f"emulated root ready: {emulator.setup(emulator.spec_of(profile))}")
        return 0
    boards = emulator.start(profile, args.boards, args.drop_after)
    tracker = f"127.0.0.1:{profile.emulator.tracker_port}"
    print(f"started {len(boards)} emulated {profile.name} board(s) on tracker {tracker}, key {profile.remote.key!r}: "
          + ", ".join(f"{b.name} (pid {b.pid})" for b in boards))
    print(f"latencies measured on them are qemu's, not the board's; run: python -m harness run RECIPE --device "
          f"{profile.name}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    import yaml

    from harness.compress import sensitivity
    from harness.data import load_data
    from harness.pipeline import trained_base
    from harness.recipe import load_recipe
    from harness.results import write_json
    from harness.train import evaluate
    from harness.workspace import Workspace

    recipe = load_recipe(args.recipe)
    ws = Workspace(Path(args.results)) if args.results else Workspace()
    splits = load_data(recipe.data, recipe.resolution)
    model = trained_base(recipe, splits, ws, progress=not args.quiet)
    table = sensitivity.analyze(model, lambda m: evaluate(m, splits.val), recipe.resolution, ratios=args.ratios,
                                progress=not args.quiet)
    out = ws.root / "sensitivity" / f"{recipe.name}-{recipe.base_key()[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    sensitivity.plot(table, out.with_suffix(".png"), title=f"{recipe.name}: pruning sensitivity (PyTorch top-1)")
    ratios = sensitivity.suggest_layer_ratios(table, args.max_drop)
    write_json(out.with_suffix(".json"), {"max_drop": args.max_drop, "layer_ratios": ratios})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwrote {out}.csv and {out}.png")
    print(f"per-layer ratios keeping each drop <= {args.max_drop} (paste into a prune step):")
    print(yaml.safe_dump({"layer_ratios": ratios}, sort_keys=False).rstrip())
    return 0


def _values(kind: type) -> Callable[[str], list]:
    """argparse type for comma-separated lists, e.g. --width 1,0.75,0.5."""

    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def _inspect(args: argparse.Namespace) -> int:
    from harness.models import build_model, model_cost

    model = build_model(args.model, width=args.width, num_classes=args.classes)
    cost = model_cost(model, args.resolution)
    info = {"model": args.model, "width": args.width, "resolution": args.resolution,
            "num_classes": args.classes, "params": cost.params, "macs": cost.macs}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.model}  α={args.width}  {args.resolution}×{args.resolution}  {args.classes} classes")
        print(f"  parameters     {cost.params:>14,}  ({cost.params / 1e6:.2f} M)")
        print(f"  multiply-adds  {cost.macs:>14,}  ({cost.macs / 1e6:.1f} M)")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from harness.compile.target import build_target
    from harness.device import available_devices, load_device

    profiles = [load_device(name) for name in available_devices()]
    if args.json:
        print(json.dumps([asdict(p) for p in profiles], default=str, indent=2))
        return 0
    for p in profiles:
        where = "local" if p.remote is None else f"RPC key {p.remote.key!r} via {p.remote.direct or p.remote.tracker}"
        print(f"{p.name:<8} {where}")
        print(f"         {p.description}")
        print(f"         target: {build_target(p)}")
    return 0


def _results(args: argparse.Namespace) -> int:
    from harness.results import SUMMARY_COLUMNS, format_rows, load_results
    from harness.workspace import Workspace

    table = load_results(Workspace(Path(args.results)).table if args.results else None)
    if table.empty:
        print("no results yet")
        return 0
    print(format_rows(table.tail(args.last).to_dict("records"), ["run_id", *SUMMARY_COLUMNS]))
    return 0


def _positive_minutes(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}")
    return value


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="x86", help="device profile name or file (default: x86)")
    parser.add_argument("--rpc", metavar="HOST:PORT", help="reach the device's RPC server directly")
    parser.add_argument("--tracker", metavar="HOST:PORT", help="reach the device through this RPC tracker")
    parser.add_argument("--results", metavar="DIR", help="results folder (default: results/)")
    parser.add_argument("--no-record", action="store_true", help="print the rows without appending them")
    parser.add_argument("--eval-samples", type=int, metavar="N",
                        help="evaluate on the first N images of the eval split (e.g. on slow emulated boards)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Compress MobileNet-family models, compile them with TVM for a device, measure and record.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe on a device and append its rows to the results table")
    run.add_argument("recipe", help="recipe file (or shipped recipe name, e.g. v1_fp32)")
    run.add_argument("--tune-minutes", type=_positive_minutes, metavar="N",
                     help="first tune the kernels the device's database lacks, for at most N minutes")
    run.add_argument("--batch", type=_values(int), metavar="B,...",
                     help="batch sizes to measure, one row each (default: the recipe's measure.batch)")
    run.add_argument("--gpu", type=int, metavar="N", help="CUDA profiles: which GPU of this host (default 0)")
    _add_device_args(run)
    run.set_defaults(func=_run)

    sweep = sub.add_parser("sweep", help="run a grid of α × ρ × dtype variants of a recipe against its reference")
    sweep.add_argument("recipe", help="recipe file or name; its `sweep:` mapping is the default grid")
    sweep.add_argument("--width", type=_values(float), help="α values, e.g. 1,0.75,0.5,0.25")
    sweep.add_argument("--resolution", type=_values(int), help="input sizes, e.g. 224,160,128")
    sweep.add_argument("--dtype", type=_values(str), help="fp32,int8,fp16")
    _add_device_args(sweep)
    sweep.set_defaults(func=_sweep)

    tune = sub.add_parser("tune", help="tune a recipe's kernels with MetaSchedule into the device's database")
    tune.add_argument("recipe", nargs="*", help="recipe file(s) or name(s); their references are tuned too")
    tune.add_argument("--shipped", action="store_true",
                      help="tune every shipped recipe, then write the database shipped for this target "
                           "(harness/tuning_db/<target key>/; --trials 0: write it only)")
    tune.add_argument("--trials", type=int, default=1000, help="measured candidates in all (default 1000)")
    tune.add_argument("--minutes", type=_positive_minutes,
                      help="time budget; stops at whichever of trials/minutes comes first")
    tune.add_argument("--refine", action="store_true",
                      help="tune kernels that already have schedules too (continuing from the best ones)")
    tune.add_argument("--device", default="x86", help="device profile name or file (default: x86)")
    tune.add_argument("--rpc", metavar="HOST:PORT", help="measure on the device's RPC server directly")
    tune.add_argument("--tracker", metavar="HOST:PORT", help="measure on devices of the profile's key at this tracker")
    tune.add_argument("--results", metavar="DIR", help="results folder holding tuning/ (default: results/)")
    tune.set_defaults(func=_tune)

    bench = sub.add_parser("bench", help="latency of TVM untuned/tuned, ONNX Runtime and PyTorch, ratios to ORT")
    bench.add_argument("recipe", nargs="+", help="recipe file(s) or name(s), e.g. v1_fp32 v2_fp32")
    bench.add_argument("--device", default="x86", help="a local device profile (default: x86)")
    bench.add_argument("--repeats", type=int, default=30, help="timed repeats per runtime (default 30)")
    bench.add_argument("--results", metavar="DIR", help="results folder (default: results/)")
    bench.set_defaults(func=_bench)

    emu = sub.add_parser("emulator", help="emulated aarch64 boards (qemu-user) serving TVM RPC on a local tracker")
    emu.add_argument("action", choices=["setup", "start", "stop", "status"])
    emu.add_argument("device", nargs="?", help="device profile with an emulator section, e.g. rpi4")
    emu.add_argument("--boards", type=int, default=1, help="boards to start (default 1)")
    emu.add_argument("--drop-after", type=float, metavar="S",
                     help="fault injection for testing: each board dies S seconds into its first session")
    emu.set_defaults(func=_emulator)

    sens = sub.add_parser("sensitivity", help="prune one layer at a time at several ratios; table, plot, ratios")
    sens.add_argument("recipe", help="recipe file or name (its trained base model is analysed)")
    sens.add_argument("--ratios", type=_values(float), default=[0.1, 0.3, 0.5, 0.7], help="default 0.1,0.3,0.5,0.7")
    sens.add_argument("--max-drop", type=float, default=0.01, help="top-1 drop allowed per layer (default 0.01)")
    sens.add_argument("--results", metavar="DIR", help="results folder (default: results/)")
    sens.set_defaults(func=_sensitivity)

    ins = sub.add_parser("inspect", help="parameters and multiply-adds of a model at a width and resolution")
    ins.add_argument("model", help="model name (mobilenet_v1, mobilenet_v2, vgg16, resnet18, ... )")
    ins.add_argument("--width", type=float, default=1.0, help="width multiplier α (default 1.0)")
    ins.add_argument("--resolution", type=int, default=224, help="input size in pixels (default 224)")
    ins.add_argument("--classes", type=int, default=1000, help="classifier outputs (default 1000)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=_inspect)

    dev = sub.add_parser("devices", help="list device profiles (devices/*.yaml) with their TVM targets")
    dev.add_argument("--json", action="store_true", help="machine-readable output")
    dev.set_defaults(func=_devices)

    res = sub.add_parser("results", help="show the last rows of the results table")
    res.add_argument("--last", type=int, default=20, help="number of rows (default 20)")
    res.add_argument("--results", metavar="DIR", help="results folder (default: results/)")
    res.set_defaults(func=_results)
    return parser


def _configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m harness`; returns the exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet, args.verbose)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
