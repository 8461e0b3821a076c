"""Auditing a tuning database on this machine: each kernel of a recipe, the schedule a build would take for it timed
here against the time its record holds, to find the kernels whose schedules were chosen by another machine's times
and run badly on this one (the ones `tune --refine` should search again here).

Another CPU is faster or slower than the one that timed the records in general, so a kernel's ratio (time here /
recorded time) is read against the median ratio of the kernels whose records that machine timed: a kernel far above
it ("out of line") lost to this machine's cache or cores (on a Zen 4 the Xeon-timed records of the shipped database
ran at a median 1.95× their recorded times, its own at 1.09×). Per model, it also counts the kernels whose schedules
another machine's times chose: a uniform loss that no ratio shows. Nothing is written to the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import tvm
from tvm.s_tir import meta_schedule as ms

from harness import noise
from harness.compile.database import records_for
from harness.compile.kernels import chosen_record, merge_tasks, workload_hash
from harness.compile.provenance import timed_on, timing_machine
from harness.compile.records import schedule_key
from harness.compile.remeasure import time_records
from harness.device import DeviceProfile
from harness.profile import kind_of

OUT_OF_LINE = 1.25  # a kernel's ratio over the median ratio from which it is out of line
MATERIAL = 0.01  # ... if what it costs beyond that median is this share of its model's time here, or more
NAMED = 5  # out-of-line kernels named in the summary
COLUMNS = ["model", "kernel", "layer", "calls", "record ms", "timed on", "here ms", "here/record", "vs median",
           "excess ms"]


@dataclass(frozen=True, slots=True)
class Audit:
    """Per model and kernel (rows sorted by `excess ms`: calls × the time beyond what its machine's median ratio
    predicts), the machine that timed them here, the median ratio (each distinct kernel once) per machine that timed
    the records, and the cores other processes kept busy meanwhile."""

    table: pd.DataFrame
    machine: str
    medians: dict[str, tuple[float, int]]  # per machine that timed records: its kernels' median ratio, how many
    other_cores: float

    def out_of_line(self) -> pd.DataFrame:
        """The rows far above their machine's median ratio whose excess matters to their model (a 3-round timing
        of a microsecond kernel varies by more than `OUT_OF_LINE`)."""
        model_ms = (self.table["here ms"] * self.table["calls"]).groupby(self.table["model"]).transform("sum")
        return self.table[(self.table["vs median"] >= OUT_OF_LINE) & (self.table["excess ms"] >= MATERIAL * model_ms)]

    def per_model(self) -> pd.DataFrame:
        """Per model: its kernels, the ms they take here (one inference), and how many of them, taking how many of
        those ms, run schedules that another machine's times chose (or none: untuned)."""
        t = self.table.assign(ms=self.table["here ms"] * self.table["calls"],
                              foreign=self.table["timed on"] != self.machine)
        return t.groupby("model", sort=False).apply(lambda m: pd.Series({
            "kernels": len(m), "here ms": m["ms"].sum(), "elsewhere": int(m["foreign"].sum()),
            "elsewhere ms": m.loc[m["foreign"], "ms"].sum()}), include_groups=False)

    def summary(self) -> str:
        """What the audit found, in a few lines, with what to do about it."""
        medians = ", ".join(f"{ratio:.2f}x for the {n} timed on {machine}" for machine, (ratio, n)
                            in self.medians.items()) or "none"
        lines = [f"here/record on {self.machine}, median: {medians}"]
        for model, m in self.per_model().iterrows():
            if m["elsewhere"]:
                lines.append(f"{model}: {m['elsewhere']:.0f} of its {m['kernels']:.0f} kernels run schedules chosen "
                             f"by another machine's times or none ({m['elsewhere ms']:.2f} of its {m['here ms']:.2f} "
                             f"ms here): `tune {model} --refine` searches them on this machine")
        if untuned := sorted(set(self.table.loc[self.table["record ms"].isna(), "kernel"])):
            lines.append(f"{len(untuned)} kernel(s) have no schedule in the database (untuned): `harness tune` them")
        failed = self.table[self.table["record ms"].notna() & self.table["here ms"].isna()]
        if len(failed):
            lines.append(f"{len(failed)} record(s) did not build or run here: {', '.join(failed['kernel'])}")
        if len(slow := self.out_of_line()):
            names = ", ".join((slow["model"] + ":" + slow["kernel"])[:NAMED]) + (", ..." if len(slow) > NAMED else "")
            lines.append(f"{len(slow)} kernel(s) out of line (>= {OUT_OF_LINE:.2f}x the median of their machine, "
                         f"costing >= {MATERIAL:.0%} of their model's time): {names}; {slow['excess ms'].sum():.2f} "
                         "ms beyond that median: `tune MODEL --refine` re-times their records here and searches them "
                         "again")
        else:
            lines.append("no kernel out of line: the schedules rank here as on the machines that timed them")
        if self.other_cores > noise.MAX_BUSY:
            lines.append(f"the host was busy (other processes used {self.other_cores:.1f} cores on average): "
                         "audit again on an idle machine")
        return "\n".join(lines)


def _kernel(record: ms.database.TuningRecord | None, here: list[float] | None) -> dict:
    secs = [float(s) for s in record.run_secs or []] if record is not None else []
    return {"record ms": 1e3 * sum(secs) / len(secs) if secs else None,
            "timed on": (timed_on(record) or "(unnamed)") if record is not None else None,
            "here ms": 1e3 * min(here) if here else None}


def audit(models: dict[str, Sequence[ms.ExtractedTask]], db_path: Path, target: tvm.target.Target,
          profile: DeviceProfile, progress: bool = True) -> Audit:
    """Time here, with `profile`'s runner, the record a build for `profile` takes for each kernel of `models` (name:
    its kernels) from the database at `db_path`, beside the time the record holds; each schedule once."""
    machine = timing_machine(profile)
    tasks = merge_tasks(models.values())
    db = records_for(db_path, [t.dispatched[0] for t in tasks], machine)
    chosen = {workload_hash(t): chosen_record(db, t, target) for t in tasks}
    records = list({schedule_key(r): r for r in chosen.values() if r is not None}.values())
    times, other_cores = time_records(records, target, profile, progress) if records else ({}, 0.0)
    kernels = {key: _kernel(r, times.get(schedule_key(r)) if r is not None else None) for key, r in chosen.items()}
    timed = pd.DataFrame(kernels.values()).dropna(subset=["here ms", "record ms"])
    ratios = (timed["here ms"] / timed["record ms"]).groupby(timed["timed on"])  # each machine's speed against here
    medians = {str(m): (float(r.median()), len(r)) for m, r in ratios}
    rows = []
    for model, model_tasks in models.items():
        for task in model_tasks:
            key = workload_hash(task)
            record = chosen[key]
            shapes = [tuple(int(d) for d in a.shape) for a in record.args_info] if record is not None else None
            rows.append({"model": model, "kernel": task.task_name, "layer": kind_of(task.task_name, shapes,
                         profile.layout), "calls": int(task.weight), **kernels[key]})
    table = pd.DataFrame(rows, columns=COLUMNS[:7])
    table["here/record"] = table["here ms"] / table["record ms"]
    expected = table["timed on"].map({m: ratio for m, (ratio, _) in medians.items()})
    table["vs median"] = table["here/record"] / expected
    table["excess ms"] = table["calls"] * (table["here ms"] - expected * table["record ms"])
    table = table.sort_values("excess ms", ascending=False, na_position="last", ignore_index=True)
    return Audit(table=table, machine=machine, medians=medians, other_cores=other_cores)
