"""Command line: parses arguments and calls the stages; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from harness import commands
from harness.arguments import CHECK_OPTIONS
from harness.errors import HarnessError
from harness.limits import flag
from harness.specs import SWEEP_DTYPES as DTYPES

FORMATS = ("text", "md", "csv", "json", "html")  # harness compare --format

log = logging.getLogger("harness")


def _dtypes(text: str) -> list[str]:
    """--dtype fp32,int8: each one of the dtypes a sweep knows."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in DTYPES]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"expected dtypes among {', '.join(DTYPES)}, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported on one line (exit 2) like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _add_results_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", metavar="DIR", help="results folder (default: results/)")


def _add_device_arg(parser: argparse.ArgumentParser, help: str = "device profile name or file (default: x86)",
                    remote: bool = True) -> None:
    parser.add_argument("--device", default="x86", help=help)
    if remote:
        parser.add_argument("--rpc", metavar="HOST:PORT", help="reach the device's RPC server directly")
        parser.add_argument("--tracker", metavar="HOST:PORT", help="reach the device through this RPC tracker")


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    _add_device_arg(parser)
    _add_results_arg(parser)
    parser.add_argument("--no-record", action="store_true",
                        help="print the rows without appending them or keeping their run folder")
    parser.add_argument("--eval-samples", type=flag("samples"), metavar="N",
                        help="evaluate on the first N images of the eval split (e.g. on slow emulated boards)")


_Sub = Callable[..., argparse.ArgumentParser]  # adds a subcommand's parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness",
        description="Compress MobileNet-family models, compile them with TVM for a device, measure and record.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # -q/-v also after the command (`harness run v1_fp32 -q`); there they only set what is given
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = functools.partial(subparsers.add_parser, parents=[common])
    for add in (_add_run, _add_sweep, _add_tune, _add_bench, _add_build, _add_check, _add_compare, _add_report,
                _add_emulator, _add_sensitivity, _add_inspect, _add_devices, _add_results):
        add(sub)
    return parser


def _add_run(sub: _Sub) -> None:
    run = sub("run", help="run a recipe on a device and append its rows to the results table")
    run.add_argument("recipe", help="recipe file (or shipped recipe name, e.g. v1_fp32)")
    run.add_argument("--tune-minutes", type=flag("minutes"), metavar="N",
                     help="first tune the kernels the device's database lacks, for at most N minutes")
    run.add_argument("--batch", type=flag("batch", many=True), metavar="B,...",
                     help="batch sizes to measure, one row each (default: the recipe's measure.batch)")
    _add_gpu_arg(run)
    _add_device_args(run)
    run.set_defaults(func=commands.run)


def _add_sweep(sub: _Sub) -> None:
    sweep = sub("sweep", help="run a grid of α × ρ × dtype variants of a recipe against its reference")
    sweep.add_argument("recipe", help="recipe file or name; its `sweep:` mapping is the default grid")
    sweep.add_argument("--width", type=flag("width", many=True), help="α values, e.g. 1,0.75,0.5,0.25")
    sweep.add_argument("--resolution", type=flag("resolution", many=True), help="input sizes, e.g. 224,160,128")
    sweep.add_argument("--dtype", type=_dtypes, help="fp32,int8,fp16")
    _add_device_args(sweep)
    sweep.set_defaults(func=commands.sweep)


def _add_tune(sub: _Sub) -> None:
    tune = sub("tune", help="tune a recipe's kernels with MetaSchedule into the device's database")
    tune.add_argument("recipe", nargs="*", help="recipe file(s) or name(s); their references are tuned too")
    tune.add_argument("--shipped", action="store_true",
                      help="tune every shipped recipe, then write the database shipped for this target "
                           "(harness/tuning_db/<target key>/; --trials 0: write it only)")
    tune.add_argument("--trials", type=flag("trials"), default=1000, help="measured candidates in all (default 1000)")
    tune.add_argument("--minutes", type=flag("minutes"),
                      help="time budget (default none); stops at whichever of trials/minutes comes first")
    tune.add_argument("--refine", action="store_true",
                      help="tune the named recipes' kernels again too, continuing from their best schedules "
                           "(their references only where they have none; with --shipped, every kernel); their "
                           "records are first re-timed here, as with --remeasure")
    tune.add_argument("--remeasure", action="store_true",
                      help="first time the records of the named recipes' kernels (with --shipped or alone: every "
                           "record of the device's database) again here, on the profile's threads (or on its board), "
                           "keeping the new times; alone, does only that")
    tune.add_argument("--audit", action="store_true",
                      help="change nothing: time here the schedule each kernel of the named recipes gets, against "
                           "the time in its record, and name the kernels out of line (what --refine should search "
                           "again on this machine); the table is also written under results/audit/")
    tune.add_argument("--batch", type=flag("batch", many=True), metavar="B,...",
                      help="batch sizes whose kernels to tune (default: each recipe's measure.batch); with --shipped, "
                           "the batch sizes the shipped database covers")
    _add_device_arg(tune)
    _add_gpu_arg(tune)
    _add_results_arg(tune)
    tune.set_defaults(func=commands.tune)


def _add_bench(sub: _Sub) -> None:
    bench = sub("bench", help="latency of TVM untuned/tuned, ONNX Runtime and PyTorch, ratios to ORT")
    bench.add_argument("recipe", nargs="+", help="recipe file(s) or name(s), e.g. v1_fp32 v2_fp32")
    _add_device_arg(bench, help="a local device profile (default: x86)", remote=False)
    bench.add_argument("--rounds", "--repeats", dest="rounds", type=flag("repeats"), default=30,
                       help="interleaved rounds: each times every runtime once (default 30; --repeats is its old "
                            "name)")
    bench.add_argument("--no-untuned", dest="untuned", action="store_false",
                       help="leave out TVM without tuning (seconds an inference for VGG-16 or ResNet-50)")
    _add_results_arg(bench)
    bench.set_defaults(func=commands.bench)


def _add_build(sub: _Sub) -> None:
    build = sub("build", help="compile recipes (untrained) for a device and save them with a manifest")
    build.add_argument("recipe", nargs="+", help="recipe file(s) or name(s)")
    build.add_argument("--out", required=True, metavar="DIR", help="folder of the saved set (new, or a saved set)")
    _add_device_arg(build, help="a local CPU device profile (default: x86)", remote=False)
    _add_results_arg(build)
    build.set_defaults(func=commands.build)


def _add_check(sub: _Sub) -> None:
    check = sub("check", help="latency regression gate: same-run A/B against a revision, or a stored "
                              "baseline; exit 0 pass, 1 regression, 3 inconclusive (or nothing compared), 2 usage "
                              "error")
    check.add_argument("recipe", nargs="*", help="recipe file(s) or name(s)")
    mode = check.add_argument_group("mode (exactly one)")
    mode.add_argument("--base", metavar="REV|DIR", help="same-run A/B against a git revision (built in a worktree) "
                                                       "or a saved artifact set (harness build --out DIR)")
    mode.add_argument("--against", metavar="FILE", help="compare with a baseline written by --save")
    mode.add_argument("--save", metavar="FILE", help="measure the recipes and write them as a baseline")
    check.add_argument("--new", metavar="DIR", help="with --base: time this saved set instead of building the "
                                                    "working tree")
    defaults = {name: default for name, (default, _) in CHECK_OPTIONS.items()}
    check.add_argument("--threshold", type=flag("threshold"),
                       help=f"relative change that counts (default {defaults['threshold']})")
    check.add_argument("--alpha", type=flag("fraction"),
                       help=f"A/B: Mann-Whitney U p-value below which a change is significant (default "
                            f"{defaults['alpha']})")
    check.add_argument("--rounds", type=flag("rounds"), help=f"A/B: interleaved rounds (default {defaults['rounds']})")
    check.add_argument("--retries", type=flag("retries"),
                       help=f"A/B: measure a noisy comparison again up to N times (default {defaults['retries']})")
    check.add_argument("--max-acc-drop", type=flag("share"),
                       help=f"stored baseline: top-1/top-5 drop that fails (default {defaults['max_acc_drop']})")
    check.add_argument("--out", metavar="DIR", help="where check.md and check.json go (default results/check/)")
    _add_device_arg(check, help="a local CPU device profile (default: x86)", remote=False)
    _add_results_arg(check)
    check.set_defaults(func=commands.check)


def _add_compare(sub: _Sub) -> None:
    comp = sub("compare", help="every variant beside its baselines: Δtop-1, size, MACs, latency, speed-up, "
                               "Pareto front")
    comp.add_argument("--device", help="only rows of this device (default: every device, each compared apart)")
    comp.add_argument("--baseline", default="v1_fp32", help="recipe that Δtop-1 and speed-up refer to "
                                                            "(default v1_fp32)")
    comp.add_argument("--format", choices=FORMATS, default="text", help="output format (default text)")
    _add_results_arg(comp)
    comp.set_defaults(func=commands.compare)


def _add_report(sub: _Sub) -> None:
    rep = sub("report", help="an HTML page (plots embedded) and Markdown of the results")
    rep.add_argument("--device", help="only rows of this device (default: every device)")
    rep.add_argument("--baseline", default="v1_fp32", help="recipe compared against (default v1_fp32)")
    rep.add_argument("--profile", metavar="RECIPE", help="recipe whose per-kernel latency is shown "
                                                         "(default: the baseline)")
    rep.add_argument("--out", metavar="DIR", help="output folder (default results/report/)")
    _add_results_arg(rep)
    rep.set_defaults(func=commands.report)


def _add_emulator(sub: _Sub) -> None:
    emu = sub("emulator", help="emulated aarch64 boards (qemu-user) serving TVM RPC on a local tracker")
    emu.add_argument("action", choices=["setup", "start", "stop", "status"])
    emu.add_argument("device", nargs="?", help="device profile with an emulator section, e.g. rpi4")
    emu.add_argument("--boards", type=flag("count"), default=1, help="boards of the device to have running (default 1)")
    emu.add_argument("--drop-after", type=flag("seconds"), metavar="S",
                     help="fault injection for testing: each board dies S seconds into its first session")
    emu.set_defaults(func=commands.emulator)


def _add_sensitivity(sub: _Sub) -> None:
    sens = sub("sensitivity", help="prune one layer at a time at several ratios; table, plot, ratios")
    sens.add_argument("recipe", help="recipe file or name (its trained base model is analysed)")
    sens.add_argument("--ratios", type=flag("ratio", many=True), default=[0.1, 0.3, 0.5, 0.7],
                      help="shares of a layer's channels pruned, one evaluation each (default 0.1,0.3,0.5,0.7)")
    sens.add_argument("--max-drop", type=flag("share"), default=0.01,
                      help="top-1 drop allowed per layer (default 0.01)")
    _add_results_arg(sens)
    sens.set_defaults(func=commands.sensitivity)


def _add_inspect(sub: _Sub) -> None:
    ins = sub("inspect", help="parameters and multiply-adds of a model at a width and resolution")
    ins.add_argument("model", help="model name (mobilenet_v1, mobilenet_v2, vgg16, resnet18, ... )")
    ins.add_argument("--width", type=flag("width"), default=1.0, help="width multiplier α (default 1.0)")
    ins.add_argument("--resolution", type=flag("resolution"), default=224, help="input size in pixels (default 224)")
    ins.add_argument("--classes", type=flag("classes"), default=1000, help="classifier outputs (default 1000)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=commands.inspect)


def _add_devices(sub: _Sub) -> None:
    dev = sub("devices", help="list device profiles (devices/*.yaml) with their TVM targets")
    dev.add_argument("--json", action="store_true", help="machine-readable output")
    dev.set_defaults(func=commands.devices)


def _add_results(sub: _Sub) -> None:
    res = sub("results", help="show the last rows of the results table")
    res.add_argument("--last", type=flag("rows"), default=20, help="number of rows (default 20)")
    _add_results_arg(res)
    res.set_defaults(func=commands.results)


def _add_gpu_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", type=flag("gpu"), metavar="N",
                        help="CUDA profiles: which GPU of this host (default 0)")


def _configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def _one_line(text: str) -> str:
    """`text` with every unprintable character escaped: a recipe key such as "\\x1e" would otherwise break the one
    line an error is (Python's `splitlines` breaks at it, as terminals may)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# A full disk, a quota, a read-only or forbidden folder, a folder where a file belongs or the reverse: the host's
# state, which the user can fix
_HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                errno.EEXIST}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m harness`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return int(exc.code or 0)
    _configure_logging(args.quiet, args.verbose)
    try:
        return args.func(args)
    except HarnessError as exc:
        if not _interrupted(exc):  # a Ctrl-C can reach us as an error the harness wrapped
            print(f"error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the output was piped into a reader that stopped (`| head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno in _HOST_ERRNOS:
            # Caches and results are written beside their place and renamed into it: nothing finished is damaged
            from harness.cache import written_as

            name = exc.filename2 or exc.filename  # a rename's target, a temporary file's own name
            where = f": {written_as(str(name))}" if name else ""
            print(f"error: {_one_line(f'{exc.strerror or exc}{where}')} (nothing already written was changed; fix "
                  "it and run again)", file=sys.stderr)
            return 2
        if not _interrupted(exc):
            raise
    except Exception as exc:
        if not _interrupted(exc):
            raise
    print("interrupted", file=sys.stderr)  # Ctrl-C, also where a library turned it into its own error
    return 130


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` was raised because of a KeyboardInterrupt (e.g. ImportError when Ctrl-C hits an import)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False
