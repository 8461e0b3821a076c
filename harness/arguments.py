"""What the command handlers take from their parsed arguments: the results folder, the device profile, output
paths and the results table, each checked before any work starts (a one-line error naming the flag)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    import pandas as pd

    from harness.device import DeviceProfile
    from harness.workspace import Workspace


# check's options: their default and the modes (--base, --against, --save) that use them
CHECK_OPTIONS: dict[str, tuple[object, tuple[str, ...]]] = {
    "threshold": (0.05, ("base", "against")),
    "alpha": (0.01, ("base",)),
    "rounds": (30, ("base",)),
    "retries": (2, ("base",)),
    "max_acc_drop": (0.005, ("against",)),
    "out": (None, ("base", "against")),
}


def mode_options(args: argparse.Namespace, command: str, mode: str,
                 options: dict[str, tuple[object, tuple[str, ...]]]) -> None:
    """An option given that `mode` does not use is a one-line error (rather than silently ignored); the options
    not given get their defaults."""
    for name, (default, modes) in options.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif mode not in modes:
            raise HarnessError(f"{command} --{mode}: --{name.replace('_', '-')} does not apply (it goes with "
                               f"{' or '.join('--' + m for m in modes)})")


def workspace(args: argparse.Namespace, write: bool = True, recording: bool = False) -> Workspace:
    """The results folder named by --results (or the default one), checked to be a folder we can write to;
    `recording`: with a results table rows can be appended to (checked now, not after the work)."""
    from harness.results import load_results
    from harness.workspace import Workspace

    ws = Workspace(Path(args.results)) if args.results else Workspace()
    if ws.root.exists() and not ws.root.is_dir():
        raise HarnessError(f"--results {ws.root}: not a folder")
    if write:
        try:
            ws.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HarnessError(f"--results {ws.root}: cannot create it ({exc.strerror})") from None
        if not os.access(ws.root, os.W_OK | os.X_OK):
            raise HarnessError(f"--results {ws.root}: not writable")
    if recording:  # the table and its lock, as the append at the end will use them
        from harness.cache import locked

        with locked(ws.table):
            load_results(ws.table)
    return ws


def profile(args: argparse.Namespace, tools: bool = True) -> DeviceProfile:
    """The device profile named by --device, with --tracker/--rpc (and --gpu) applied where the command has them;
    `tools`: the command compiles for it, so its cross compiler must be here."""
    from harness.device import load_device, parse_hostport

    found = load_device(args.device)
    if getattr(args, "rpc", None) and getattr(args, "tracker", None):
        raise HarnessError("--rpc and --tracker: give one (--rpc reaches a board's server directly, --tracker "
                           "asks a tracker for one)")
    for flag in ("rpc", "tracker"):
        if getattr(args, flag, None):
            parse_hostport(getattr(args, flag), f"--{flag}")
    if tools:  # after the usage errors: those are the user's to fix first
        found.check_tools()
    if hasattr(args, "rpc"):
        found = found.with_remote(tracker=args.tracker, direct=args.rpc)
    if getattr(args, "gpu", None) is None:
        return found
    if found.gpu_index is None:
        raise HarnessError(f"--gpu {args.gpu}: device {found.name} is not a CUDA GPU of this host")
    return found.with_gpu(args.gpu)


def out_folder(value: str, flag: str = "--out") -> Path:
    """An output folder: new, or an existing folder (not a file), its nearest existing parent a folder."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{flag} {path}: a file, not a folder")
    _existing_parent_is_folder(path, flag)
    return path


def out_file(value: str, flag: str) -> Path:
    """An output file: new, or an existing file (not a folder), its nearest existing parent a folder."""
    path = Path(value)
    if path.is_dir():
        raise HarnessError(f"{flag} {path}: a folder; give a file name")
    _existing_parent_is_folder(path, flag)
    return path


def _existing_parent_is_folder(path: Path, flag: str) -> None:
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise HarnessError(f"{flag} {path}: {parent} is a file, not a folder")


def results_table(ws: Workspace) -> pd.DataFrame:
    """The results table of `ws`, or a one-line error when there is none yet."""
    from harness.results import load_results

    if not ws.table.is_file():
        raise HarnessError(f"no results table at {ws.table}: run some recipes first (python -m harness run v1_fp32)")
    return load_results(ws.table)
