"""Fan-out over the boards of a remote device: measure variants in parallel, one per board, and replace a
board that fails mid-run by another."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from harness.build import Compiled
from harness.data import DataSplits
from harness.device import DeviceProfile, parse_hostport
from harness.errors import first_line
from harness.measure_variant import measure_variant
from harness.remote import DeviceUnreachable
from harness.results import Row

log = logging.getLogger(__name__)


def board_count(profile: DeviceProfile) -> int:
    """How many boards of the device a tracker serves (1 for local or direct RPC devices)."""
    remote = profile.remote
    if remote is None or remote.direct is not None or remote.tracker is None:
        return 1
    from harness.remote import tracker_devices

    host, port = parse_hostport(remote.tracker, f"device {profile.name} tracker")
    try:
        return max(1, tracker_devices(host, port, remote.key))
    except (OSError, RuntimeError):
        return 1  # connect() reports the unreachable tracker


def measure_retrying(compiled: Compiled, splits: DataSplits, profile: DeviceProfile, progress: bool,
                     attempts: int = 3) -> Row:
    """measure_variant; on a remote device, a board that fails mid-run is replaced by another (tracker)."""
    name = compiled.recipe.name
    for attempt in range(1, attempts + 1):
        try:
            return replace(measure_variant(compiled, profile, splits, progress), attempts=attempt)
        except (RuntimeError, OSError) as exc:  # TVM's RPC errors are RuntimeErrors
            if not profile.is_remote:
                raise
            reason = first_line(exc)
            if type(exc).__name__ == "RPCSessionTimeoutError":  # another board would time out alike
                raise DeviceUnreachable(f"device {profile.name}: {name} outlasted the RPC session "
                                        f"({profile.remote.session_timeout_s:g} s): raise session_timeout_s in "
                                        "the profile's remote settings, or use --eval-samples") from None
            if attempt == attempts:
                raise DeviceUnreachable(f"device {profile.name}: {name} failed on {attempts} boards; "
                                        f"last error: {reason}") from None
            log.warning("%s: board failed mid-run (%s); retrying on another board (attempt %d/%d)",
                        name, reason, attempt + 1, attempts)
    raise AssertionError("unreachable")


def measure_all(builds: list[tuple[Compiled, DataSplits]], profile: DeviceProfile, progress: bool) -> list[Row]:
    """Measure every build: in parallel over the boards of a tracker (one run per board at a time)."""
    workers = min(len(builds), board_count(profile)) if profile.is_remote and len(builds) > 1 else 1
    if workers == 1:
        return [measure_retrying(compiled, splits, profile, progress) for compiled, splits in builds]
    log.info("fanning %d runs out over %d boards of key %r", len(builds), workers, profile.remote.key)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda bs: measure_retrying(bs[0], bs[1], profile, False), builds))
