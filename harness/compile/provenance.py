"""Which machine a tuning record's time was taken on, and which records a machine prefers.

A database serves every CPU of its key's level, but a schedule's speed belongs to a machine: the Xeons' fastest
schedule of v1's 14×14×512 pointwise convolution (its 14 input rows 28 KB apart: one set of a Zen 4's 8-way L1) ran
1.8× slower on an AMD Zen 4 than a schedule tuned there. Times from two machines do not rank schedules, so each
record names the machine that timed it, in its target's tag (`timed-on:<machine>`: metadata MetaSchedule neither
reads nor matches on). A machine is this host's CPU model as LLVM names it (`znver4`, `sapphirerapids`) for
kernels timed here, or the profile's name for those timed on a board (or a GPU). A build uses, per kernel, the
records timed on its machine where it has any, else those of the machine that timed most of the database (a
third CPU gets one machine's consistent choice, not whichever machine's clock looks fastest), else all.
Re-measuring adds this machine's copy of a record beside the others' (harness.compile.records.retime);
compaction keeps each machine's best. Records without a tag (tuned before this existed) count as one more
machine, unnamed.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm.s_tir import meta_schedule as ms

from harness.device import DeviceProfile

TAG = "timed-on:"


def host_machine() -> str:
    """This host's CPU model as LLVM names it."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def timing_machine(profile: DeviceProfile) -> str:
    """The machine whose times tuning or re-measuring for `profile` records: this host's CPU model for kernels
    run on this host's CPU, else the profile's name (a board, a GPU)."""
    local_cpu = profile.target.get("kind") == "llvm" and not profile.is_remote and not profile.cross_compiler
    return host_machine() if local_cpu else profile.name


def timed_on(record: ms.database.TuningRecord) -> str | None:
    """The machine `record`'s time was taken on, None when it does not say."""
    tag = str(record.target.tag) if record.target is not None else ""
    return tag.removeprefix(TAG) if tag.startswith(TAG) else None


def preferred(records: Sequence[ms.database.TuningRecord], machine: str | None, primary: str | None
              ) -> list[ms.database.TuningRecord]:
    """Of one kernel's `records`, those timed on `machine` where there are any, else those timed on `primary` (the
    machine that timed most of the database; None: records that name none), else all of them."""
    own = [r for r in records if machine is not None and timed_on(r) == machine]
    return own or [r for r in records if timed_on(r) == primary] or list(records)
