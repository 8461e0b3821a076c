"""The command handlers of `python -m harness`: each parses nothing, calls the stages and prints; files are
written by the stages they call (harness.cli builds the parser and maps errors to exit codes)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from harness.arguments import CHECK_OPTIONS, mode_options, out_file, out_folder, results_table
from harness.arguments import profile as _profile
from harness.arguments import workspace as _workspace
from harness.errors import HarnessError


def _print_recorded(rows: list, ws, record: bool) -> None:  # noqa: ANN001
    if record:
        print(f"\nappended {len(rows)} row(s) to {ws.table}")


def run(args: argparse.Namespace) -> int:
    from harness.recipe import load_recipe

    recipe = load_recipe(args.recipe).with_eval_samples(args.eval_samples)
    profile, ws = _profile(args), _workspace(args, recording=not args.no_record)
    from harness.pipeline import run_recipe  # torch and TVM load after the arguments are checked
    from harness.results import SUMMARY_COLUMNS, format_rows

    batches = args.batch or [recipe.measure.batch]
    rows = [row for batch in batches
            for row in run_recipe(recipe.with_batch(batch), profile, workspace=ws, progress=not args.quiet,
                                  record=not args.no_record, tune_minutes=args.tune_minutes)]
    columns = (*SUMMARY_COLUMNS, "batch") if len(batches) > 1 else SUMMARY_COLUMNS
    print(format_rows(rows, (*SUMMARY_COLUMNS, "batch", "images_per_s", "torch_fp16_latency_ms")
                      if profile.gpu_index is not None else columns))
    _print_recorded(rows, ws, not args.no_record)
    return 0


def sweep(args: argparse.Namespace) -> int:
    from harness.recipe import load_recipe
    from harness.sweep import expand

    recipe = load_recipe(args.recipe).with_eval_samples(args.eval_samples)
    grid = {k: v for k, v in (("width", args.width), ("resolution", args.resolution), ("dtype", args.dtype)) if v}
    ws, profile, variants = _workspace(args, recording=not args.no_record), _profile(args), expand(recipe, grid or None)
    from harness.pipeline import run_variants
    from harness.results import format_rows

    rows = run_variants(variants, recipe.reference(), profile, workspace=ws,
                        progress=not args.quiet, record=not args.no_record)
    print(format_rows(rows))
    _print_recorded(rows, ws, not args.no_record)
    return 0


def tune(args: argparse.Namespace) -> int:
    from harness.recipe import load_recipe

    profile, ws = _profile(args, tools=args.trials > 0 or args.remeasure or args.refine), _workspace(args)
    if args.shipped and args.recipe:
        raise HarnessError("tune --shipped tunes every shipped recipe: name no recipe")
    if args.batch and not (args.shipped or args.recipe):
        raise HarnessError("tune --batch: the batch sizes of the recipes named (or --shipped): name them")
    if args.remeasure and not (args.shipped or args.recipe) and (args.refine or args.minutes is not None):
        raise HarnessError("tune --remeasure: --refine and --minutes tune recipes after the re-measure: name them, "
                           "or --shipped")
    from harness import tune as tuner

    recipes = tuner.at_batches([load_recipe(r) for r in args.recipe], args.batch)
    if args.audit:
        if not recipes or args.shipped or args.refine or args.remeasure or args.minutes is not None:
            raise HarnessError("tune --audit only times what the database has: name the recipes, and no --shipped, "
                               "--refine, --remeasure or --minutes")
        audit, path = tuner.audit_recipes(recipes, profile, ws, progress=not args.quiet)
        print(f"{audit.table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n\n{audit.summary()}\n"
              f"table: {path}")
        return 0

    if args.remeasure or (args.refine and (args.shipped or recipes)):  # a refine competes with this machine's times
        report = tuner.remeasure_database(profile, ws, recipes or None, progress=not args.quiet)
        print(f"{tuner.tuning_database(profile, ws)}: {report.summary()}")
        if not (args.shipped or recipes):
            return 0
    if args.shipped:
        report, shipped, size = tuner.refresh_shipped(profile, ws, trials=args.trials, minutes=args.minutes,
                                                      progress=not args.quiet, refine=args.refine, batches=args.batch)
        if report is not None:
            print(f"tuned every shipped recipe for {profile.name}: {report.summary()}")
        print(f"shipped database: {shipped} ({size / 1e6:.2f} MB)")
        return 0
    if not recipes:
        raise HarnessError("tune: name at least one recipe, or --shipped for all of them")
    report = tuner.tune_recipes(recipes, profile, ws, trials=args.trials, minutes=args.minutes,
                                progress=not args.quiet, refine=args.refine)
    print(f"tuned {', '.join(dict.fromkeys(r.name for r in recipes))} for {profile.name}: {report.summary()}")
    print(f"database: {tuner.tuning_database(profile, ws)}")
    return 0


def bench(args: argparse.Namespace) -> int:
    from harness.recipe import load_recipe

    recipes, profile, ws = [load_recipe(r) for r in args.recipe], _profile(args), _workspace(args)
    from harness.bench import bench
    from harness.results import format_rows

    result = bench(recipes, profile, repeats=args.rounds, workspace=ws, progress=not args.quiet,
                   untuned=args.untuned)
    print(format_rows(result.rows, ["recipe", "dtype", "runtime", "latency_ms_median", "latency_ms_min",
                                    "latency_cv", "vs_ort", "vs_fp32", "tuned_kernels"]))
    for pair, kinds in result.layer_kinds.items():
        print(f"\nms per inference by layer kind ({pair}): TVM tuned, kernels timed one by one; ONNX Runtime's "
              "nodes by its profiler")
        print(kinds.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {result.path}")
    return 0


def build(args: argparse.Namespace) -> int:
    from harness.recipe import load_recipe

    recipes = [load_recipe(r) for r in args.recipe]
    profile, out, ws = _profile(args), out_folder(args.out), _workspace(args)
    from harness.artifacts import build_set

    saved = build_set(recipes, profile, out, ws, progress=not args.quiet)
    for name, artifact in saved.artifacts.items():
        print(f"{name:<20} {artifact.lib}  ({artifact.tuned_kernels} kernels tuned)")
    print(f"\nsaved {len(saved.artifacts)} artifact(s) for {saved.device} at revision {saved.git_rev}: {saved.root}")
    return 0


def check(args: argparse.Namespace) -> int:
    modes = [m for m in ("base", "against", "save") if getattr(args, m)]
    if len(modes) != 1:
        raise HarnessError("check: give exactly one of --base REV|DIR (same-run A/B), --against FILE (stored "
                           "baseline) or --save FILE")
    if args.new and not args.base:
        raise HarnessError("check: --new DIR goes with --base")
    mode_options(args, "check", modes[0], CHECK_OPTIONS)
    ws = _workspace(args)
    out = out_folder(args.out) if args.out else ws.root / "check"
    if args.save:
        out_file(args.save, "--save")
    if args.base:
        rows, context = _check_ab(args, ws)
    else:
        rows, context = _check_stored(args, ws)
        if rows is None:
            return 0
    from harness import check

    print(check.table(rows).to_string(index=False) if rows else "nothing compared")
    print(check.summary(rows))
    md, js = check.write_outputs(rows, out, context)
    print(f"wrote {md} and {js}")
    return check.exit_code(rows)


def _check_ab(args: argparse.Namespace, ws) -> tuple[list, dict]:  # noqa: ANN001
    import time

    from harness.recipe import load_recipe

    if not args.recipe and not args.new:
        raise HarnessError("check --base: name the recipes to build, or give --new DIR")
    started = time.monotonic()
    recipes, profile = [load_recipe(r) for r in args.recipe], _profile(args)
    from harness import check
    from harness.artifacts import build_set, load_set

    saved_base = Path(args.base).is_dir()
    base = load_set(Path(args.base)) if saved_base else check.resolve_revision(args.base)
    new = load_set(Path(args.new)) if args.new else build_set(recipes, profile, ws.root / "check" / "new", ws,
                                                              not args.quiet)
    if not saved_base:
        base = check.build_at_revision(base, args.recipe or list(new.artifacts), args.device,
                                       ws.root / "check" / "base", args.quiet)
    names = [r.name for r in recipes] if args.new and recipes else None
    rows = check.ab_check(base, new, names, rounds=args.rounds, threshold=args.threshold, alpha=args.alpha,
                          retries=args.retries, progress=not args.quiet)
    return rows, {"mode": "same-run A/B", "base": f"{args.base} ({base.git_rev})", "new": new.git_rev,
                  "threads": new.threads, "rounds": args.rounds, "threshold": args.threshold, "alpha": args.alpha,
                  "wall_s": round(time.monotonic() - started, 1)}


def _check_stored(args: argparse.Namespace, ws) -> tuple[list | None, dict]:  # noqa: ANN001
    from harness.recipe import load_recipe

    if args.save and not args.recipe:
        raise HarnessError("check --save: name the recipes to measure")
    profile = _profile(args)
    from harness import check

    baseline = check.load_baseline(Path(args.against)) if args.against else None
    from harness.pipeline import run_recipe

    try:  # every recipe loads before the first is measured
        recipes = [load_recipe(n) for n in args.recipe or sorted(set(baseline["recipe"].dropna()))]
    except HarnessError as exc:
        raise HarnessError(f"{exc}" + ("" if args.recipe else "; name the baseline's recipe files")) from None
    rows = [row for recipe in recipes
            for row in run_recipe(recipe, profile, workspace=ws, progress=not args.quiet, record=False)]
    if baseline is None:
        print(f"saved the baseline of {len(rows)} row(s) to {check.save_baseline(rows, Path(args.save))}")
        return None, {}
    return check.baseline_check(rows, baseline, threshold=args.threshold, max_acc_drop=args.max_acc_drop), {
        "mode": "stored baseline", "baseline": args.against, "threshold": args.threshold,
        "max_acc_drop": args.max_acc_drop}


def compare(args: argparse.Namespace) -> int:
    from harness.compare import compare_table, render

    ws = _workspace(args, write=False)
    frame = compare_table(results_table(ws), device=args.device, baseline=args.baseline)
    print(render(frame, args.format))
    return 0


def report(args: argparse.Namespace) -> int:
    from harness.report import build_report

    ws = _workspace(args)
    out = out_folder(args.out) if args.out else ws.root / "report"
    page, md = build_report(results_table(ws), out, ws.root / "runs", device=args.device, baseline=args.baseline,
                            profile=args.profile)
    print(f"wrote {page} and {md}")
    return 0


def emulator(args: argparse.Namespace) -> int:
    from harness import emulator
    from harness.device import load_device

    profile = load_device(args.device) if args.device is not None else None  # an unknown name is an error
    if args.action == "status":
        state, counts = emulator.status(profile.name if profile else None)
        if not state.boards:
            print(f"no emulated {profile.name + ' ' if profile else ''}boards running")
            return 0
        print(f"tracker 127.0.0.1:{state.tracker_port}")
        for board in state.boards:
            print(f"  {board.name:<14} key {board.key:<6} port {board.port}  pid {board.pid}")
        for key, count in counts.items():
            print(f"  key {key}: {count} board(s) registered with the tracker")
        return 0
    if args.action == "stop":
        stopped = emulator.stop(profile.name if profile else None)
        print(f"stopped {len(stopped)} board(s)" + (f": {', '.join(b.name for b in stopped)}" if stopped else ""))
        return 0
    if profile is None:
        raise HarnessError(f"emulator {args.action}: name a device, e.g. `emulator {args.action} rpi4`")
    if args.action == "setup":
        print(f"emulated root ready: {emulator.setup(emulator.spec_of(profile))}")
        return 0
    # --boards is how many to have; boards that will drop (fault injection) are added
    running = len(emulator.status(profile.name)[0].boards) if args.drop_after is None else 0
    boards = emulator.start(profile, max(0, args.boards - running), args.drop_after)
    tracker = f"127.0.0.1:{profile.emulator.tracker_port}"
    names = ", ".join(f"{b.name} (pid {b.pid})" for b in boards)
    print(f"started {len(boards)} emulated {profile.name} board(s) on tracker {tracker}, key {profile.remote.key!r}"
          + (f": {names}" if boards else "") + (f"; {running} already running" if running else ""))
    print(f"latencies measured on them are qemu's, not the board's; run: python -m harness run RECIPE --device "
          f"{profile.name}")
    return 0


def sensitivity(args: argparse.Namespace) -> int:
    import yaml

    from harness.recipe import load_recipe
    from harness.sensitivity import analyze_recipe

    result = analyze_recipe(load_recipe(args.recipe), _workspace(args), ratios=args.ratios, max_drop=args.max_drop,
                            progress=not args.quiet)
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwrote {result.stem}.csv, .png and .json")
    print(f"per-layer ratios keeping each drop <= {args.max_drop} (paste into a prune step):")
    print(yaml.safe_dump({"layer_ratios": result.layer_ratios}, sort_keys=False).rstrip())
    return 0


def inspect(args: argparse.Namespace) -> int:
    import torch

    from harness.models import build_model, model_cost

    with torch.device("meta"):  # shapes only: any size is counted at once, in no memory
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


def devices(args: argparse.Namespace) -> int:
    from harness.compile.target import build_target
    from harness.device import available_devices, load_device

    profiles = [load_device(name) for name in available_devices()]
    if args.json:
        shown = [{k: v for k, v in asdict(p).items() if k != "source"} for p in profiles]  # (where it was read)
        print(json.dumps(shown, default=str, indent=2))
        return 0
    for p in profiles:
        where = "local" if p.remote is None else f"RPC key {p.remote.key!r} via {p.remote.direct or p.remote.tracker}"
        print(f"{p.name:<8} {where}")
        print(f"         {p.description}")
        print(f"         target: {build_target(p)}")
    return 0


def results(args: argparse.Namespace) -> int:
    from harness.results import SUMMARY_COLUMNS, format_rows, load_results

    table = load_results(_workspace(args, write=False).table)
    if table.empty:
        print("no results yet")
        return 0
    print(format_rows(table.tail(args.last).to_dict("records"), ["run_id", *SUMMARY_COLUMNS]))
    return 0
