"""Re-timing a tuning database's records on this host and the profile's threads (`harness tune --remeasure`), and
timing them without keeping the times (`harness tune --audit`)."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_RECIPE, postprocessed_spaces, run_cli

from harness import audit
from harness.compile import compile_onnx, database, import_onnx, prepare_module, records, remeasure
from harness.compile.kernels import extract_tasks
from harness.compile.provenance import TAG, host_machine, timed_on, timing_machine
from harness.compile.target import build_target, target_key, target_spec
from harness.device import load_device
from harness.export import export_onnx

FAKE_SECS = 5.0  # a time no schedule of a 16x16 convolution takes: a re-timed record no longer has it


@pytest.fixture(scope="module")
def conv_task(tmp_path_factory):  # noqa: ANN201 (TVM types)
    """A one-convolution model's (fused) kernel as a tuning task, and the single-thread x86 profile (no database is
    shipped for it, so a workspace's database holds only what a test puts there)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    mod = import_onnx(export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", resolution=16))
    profile = replace(load_device("x86"), threads=1)
    (task,) = extract_tasks([mod], build_target(profile))
    return task, profile


@pytest.fixture(scope="module")
def conv_workload(conv_task):  # noqa: ANN001, ANN201 (TVM types)
    """`conv_task`'s kernel (its TIR workload) and profile."""
    task, profile = conv_task
    return task.dispatched[0], profile


def _records(workload, profile, count: int, secs: float):  # noqa: ANN001, ANN202
    """`count` records of `workload` (distinct design spaces, postprocessed) claiming `secs` each."""
    from tvm.s_tir import meta_schedule as ms

    target = build_target(profile)
    spaces = list(postprocessed_spaces(workload, target, rand_state=1))
    assert len(spaces) >= count
    return [(s.trace, [secs], target, ms.arg_info.ArgInfo.from_entry_func(s.mod, remove_preproc=True))
            for s in spaces[:count]]


def _commit(db_path: Path, workload, records) -> None:  # noqa: ANN001
    from tvm.s_tir import meta_schedule as ms

    db = database.open_database(db_path)
    entry = db.commit_workload(workload)
    for trace, secs, target, args in records:
        db.commit_tuning_record(ms.database.TuningRecord(trace, entry, secs, target, args))


def _times(db_path: Path, machine: str | None | bool = False) -> list[float]:
    """The records' times: all of them, or (with `machine`) those timed on that machine (None: on none named)."""
    return sorted(float(r.run_secs[0]) for r in database.open_database(db_path).get_all_tuning_records()
                  if machine is False or timed_on(r) == machine)


def test_every_schedule_gets_this_machines_time_beside_the_others(conv_workload, tmp_path: Path) -> None:
    """Records timed elsewhere keep their times; this machine's copies get its own, and a second re-measure
    re-times those copies instead of adding more."""
    workload, profile = conv_workload
    _commit(tmp_path, workload, _records(workload, profile, 2, FAKE_SECS))
    workloads = (tmp_path / database.WORKLOADS).read_bytes()
    report = remeasure.remeasure(tmp_path, build_target(profile), profile, progress=False)
    assert (report.records, report.failed, report.kernels) == (2, 0, 1)
    here = _times(tmp_path, host_machine())
    assert len(here) == 2 and all(0 < t < 0.01 for t in here)  # a 16x16x8 convolution: microseconds
    assert _times(tmp_path, None) == [FAKE_SECS, FAKE_SECS]  # the records of the machine they came from
    # the workload file, whose line numbers a tuning session with the database open appends by, is untouched
    assert (tmp_path / database.WORKLOADS).read_bytes() == workloads
    assert remeasure.remeasure(tmp_path, build_target(profile), profile, progress=False).records == 2
    again = _times(tmp_path, host_machine())
    assert len(again) == 2 and again != here and len(_times(tmp_path)) == 4


def test_given_kernels_only_their_records_are_timed(conv_workload, tmp_path: Path) -> None:
    workload, profile = conv_workload
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)).eval()
    (other,) = extract_tasks([import_onnx(export_onnx(model, tmp_path / "other.onnx", resolution=16))],
                             build_target(profile))
    _commit(tmp_path / "db", workload, _records(workload, profile, 1, FAKE_SECS))
    _commit(tmp_path / "db", other.dispatched[0], _records(other.dispatched[0], profile, 1, FAKE_SECS))
    report = remeasure.remeasure(tmp_path / "db", build_target(profile), profile, kernels=[other.dispatched[0]],
                                 progress=False)
    assert (report.records, report.kernels) == (1, 1)
    here = _times(tmp_path / "db", host_machine())
    assert len(here) == 1 and here[0] < 0.01  # the other kernel's record got no copy
    assert _times(tmp_path / "db", None) == [FAKE_SECS, FAKE_SECS]


def test_when_no_record_runs_it_stops_with_the_reason_and_changes_nothing(conv_workload, tmp_path: Path) -> None:
    from tvm.s_tir import meta_schedule as ms

    from harness.errors import HarnessError

    workload, profile = conv_workload
    trace, secs, target, args = _records(workload, profile, 1, FAKE_SECS)[0]
    _commit(tmp_path, workload, [(trace, secs, target, [ms.arg_info.TensorInfo("float32", [1, 1]) for _ in args])])
    before = (tmp_path / database.RECORDS).read_bytes()
    with pytest.raises(HarnessError, match="no record ran; the first error: run: "):
        remeasure.remeasure(tmp_path, build_target(profile), profile, progress=False)
    assert (tmp_path / database.RECORDS).read_bytes() == before


def test_a_record_that_does_not_run_keeps_its_time(conv_workload, tmp_path: Path) -> None:
    from tvm.s_tir import meta_schedule as ms

    workload, profile = conv_workload
    good, (trace, _, target, args) = _records(workload, profile, 2, FAKE_SECS)
    wrong = [ms.arg_info.TensorInfo("float32", [1, 1]) for _ in args]  # the kernel refuses these arguments
    _commit(tmp_path, workload, [good, (trace, [0.123], target, wrong)])
    report = remeasure.remeasure(tmp_path, build_target(profile), profile, progress=False)
    assert report.failed == 1 and "1 failed" in report.summary()
    assert _times(tmp_path, None) == [pytest.approx(0.123), FAKE_SECS]
    here = _times(tmp_path, host_machine())
    assert len(here) == 1 and here[0] < 0.01


def test_records_committed_meanwhile_are_kept(conv_workload, tmp_path: Path, monkeypatch) -> None:
    """The database is rewritten at the end: a record another session committed while the old ones were being
    timed survives, with its own time."""
    workload, profile = conv_workload
    first, second = _records(workload, profile, 2, FAKE_SECS)
    _commit(tmp_path, workload, [first])
    measure = remeasure.time_records

    def measure_then_commit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = measure(*args, **kwargs)
        _commit(tmp_path, workload, [(second[0], [0.25], *second[2:])])
        return result

    monkeypatch.setattr(remeasure, "time_records", measure_then_commit)
    remeasure.remeasure(tmp_path, build_target(profile), profile, progress=False)
    times = _times(tmp_path)
    assert len(times) == 3 and times[0] < 0.01 and times[1:] == [pytest.approx(0.25), FAKE_SECS]


# ~1 min: four CLI runs that each re-time in worker processes; CI runs it (.ci/run, slow set)
@pytest.mark.slow
def test_cli_remeasures_the_devices_database(conv_workload, tmp_path: Path) -> None:
    workload, profile = conv_workload
    device = tmp_path / "x86-1.yaml"
    device.write_text("name: x86-1\ntarget: {kind: llvm, mcpu: portable}\nthreads: 1\nlayout: NHWC\n")
    db = tmp_path / "results" / "tuning" / target_key(target_spec(profile))
    _commit(db, workload, _records(workload, profile, 1, FAKE_SECS))
    alone = run_cli("-q", "tune", "--remeasure", "--refine", "--device", str(device), "--results",
                    str(tmp_path / "results"))  # nothing to refine: a usage error, before anything is timed
    assert alone.returncode == 2 and "name them, or --shipped" in alone.stderr and _times(db)[0] == FAKE_SECS
    out = run_cli("-q", "tune", "--remeasure", "--device", str(device), "--results", str(tmp_path / "results"))
    assert out.returncode == 0, out.stderr
    assert "re-timed 1 records of 1 kernels" in out.stdout
    assert _times(db)[0] < 0.01
    _commit(db, workload, _records(workload, profile, 2, FAKE_SECS)[1:])
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    scoped = run_cli("-q", "tune", str(recipe), "--remeasure", "--trials", "0", "--device", str(device),
                     "--results", str(tmp_path / "results"))  # a recipe without that kernel: its record stays
    assert scoped.returncode == 0 and "no records to re-time" in scoped.stdout, scoped.stderr
    assert FAKE_SECS in _times(db)
    empty = run_cli("-q", "tune", "--remeasure", "--device", str(device), "--results", str(tmp_path / "empty"))
    assert empty.returncode == 0 and "no records to re-time" in empty.stdout, empty.stderr


def test_a_newer_shipped_database_replaces_the_times_of_the_schedules_it_shares(conv_workload, tmp_path: Path) -> None:
    """A schedule in both the workspace's and a newer shipped database (say, re-measured on other threads) is
    kept once, with the shipped time; the workspace's own other schedules stay."""
    workload, profile = conv_workload
    shared, own = _records(workload, profile, 2, 0.001)  # the workspace's time of `shared` is faster, yet older
    _commit(tmp_path / "shipped_db", workload, [(shared[0], [0.002], *shared[2:])])
    database.pack(tmp_path / "shipped_db", tmp_path / "shipped" / "key")
    _commit(tmp_path / "ws", workload, [shared, (own[0], [0.3], *own[2:])])
    (tmp_path / "ws" / database.SEEDED).write_text("older\n")
    database.seed(tmp_path / "ws", database.shipped_dir("key", tmp_path / "shipped"))
    assert _times(tmp_path / "ws") == [pytest.approx(0.002), pytest.approx(0.3)]


def _stamped(record, machine: str, secs: float):  # noqa: ANN001, ANN202
    """`record` (a `_records` tuple) timed on `machine` in `secs`."""
    import tvm

    trace, _, target, args = record
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(target.export()).items()}
    return trace, [secs], tvm.target.Target({**config, "tag": TAG + machine}), args


def test_a_build_takes_the_records_timed_on_its_machine(conv_workload, tmp_path: Path) -> None:
    """Times from two machines do not rank schedules: a kernel this machine timed uses its own fastest record,
    though another machine's looks faster; a machine that timed none takes the records of the machine that timed
    most of the database (here the unnamed one), though another's look faster still."""
    workload, profile = conv_workload
    first, second, third = _records(workload, profile, 3, 0.003)
    _commit(tmp_path, workload, [first, (second[0], [0.004], *second[2:]), _stamped(third, "zen9", 0.001)])

    def chosen(machine: str | None) -> str:
        db = database.records_for(tmp_path, [workload], machine)
        return str(db.query_tuning_record(workload, build_target(profile), "main").trace)

    assert chosen("zen9") == str(third[0])
    assert chosen("xeon9") == chosen(None) == str(first[0])


def test_a_build_counts_the_schedules_its_machine_timed(tmp_path: Path) -> None:
    """The compile report (so the results row's `tuned_here`) says how many tuned kernels take a schedule timed on
    the machine the build is for: none while only another machine's record exists, then this machine's copy."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    onnx = export_onnx(model, tmp_path / "m.onnx", resolution=16)
    profile = replace(load_device("x86"), threads=1)
    tasks = extract_tasks([prepare_module(onnx, layout=profile.layout)], build_target(profile))
    (conv,) = [t.dispatched[0] for t in tasks if "conv2d" in t.task_name]
    (record,) = _records(conv, profile, 1, 0.002)
    _commit(tmp_path / "db", conv, [record])
    report = compile_onnx(onnx, profile, tmp_path / "a" / "m.so", database=tmp_path / "db").report
    assert (report.tuned_kernels.tuned, report.tuned_here) == (1, "0/1")
    _commit(tmp_path / "db", conv, [_stamped(record, host_machine(), 0.003)])
    report = compile_onnx(onnx, profile, tmp_path / "b" / "m.so", database=tmp_path / "db").report
    assert (report.tuned_kernels.tuned, report.tuned_here) == (1, "1/1")
    assert compile_onnx(onnx, profile, tmp_path / "c" / "m.so").report.tuned_here is None


def test_compaction_keeps_each_machines_best(conv_workload, tmp_path: Path) -> None:
    workload, profile = conv_workload
    first, second, third = _records(workload, profile, 3, 0.001)
    slow = [_stamped(r, "zen9", secs) for r, secs in ((first, 0.5), (second, 0.7), (third, 0.9))]
    _commit(tmp_path, workload, [first, (second[0], [0.002], *second[2:]), (third[0], [0.003], *third[2:]), *slow])
    assert database.compact(tmp_path, keep=2) == 4
    assert _times(tmp_path, None) == [0.001, 0.002] and _times(tmp_path, "zen9") == [0.5, 0.7]


def test_records_a_tuning_session_appends_name_this_machine(conv_workload, tmp_path: Path) -> None:
    workload, profile = conv_workload
    old, new, stamped = _records(workload, profile, 3, 0.001)
    _commit(tmp_path, workload, [old])
    before = records.complete_lines(tmp_path)
    _commit(tmp_path, workload, [new, _stamped(stamped, "zen9", 0.002)])
    assert records.stamp_appended(tmp_path, before, "xeon9") == 1
    assert _times(tmp_path, None) == [0.001] and _times(tmp_path, "xeon9") == [0.001]
    assert _times(tmp_path, "zen9") == [0.002]
    lines = (tmp_path / database.RECORDS).read_text().splitlines()
    assert [records.machine_named(line) for line in lines] == [None, "xeon9", "zen9"]


def test_the_timing_machine_is_this_cpu_here_and_the_profile_on_a_board() -> None:
    assert timing_machine(load_device("x86")) == host_machine() and host_machine()
    assert timing_machine(load_device("rpi4")) == "rpi4"  # cross-compiled: timed on the board


def test_audit_times_the_schedule_a_build_takes_here_and_changes_nothing(conv_task, tmp_path: Path) -> None:
    """The audited record is the one a build takes (this machine's own, though another looks faster), timed here
    beside its recorded time; the database is left as it was."""
    task, profile = conv_task
    workload = task.dispatched[0]
    first, second = _records(workload, profile, 2, 0.001)
    _commit(tmp_path, workload, [first, _stamped(second, host_machine(), 0.004)])
    before = (tmp_path / database.RECORDS).read_bytes()
    result = audit.audit({"m": [task]}, tmp_path, build_target(profile), profile, progress=False)
    (row,) = result.table.to_dict("records")
    assert (row["model"], row["kernel"], row["calls"], row["timed on"]) == ("m", task.task_name, 1, host_machine())
    assert row["record ms"] == pytest.approx(4.0) and 0 < row["here ms"] < 1  # a 16x16x8 convolution: microseconds
    assert row["here/record"] == pytest.approx(row["here ms"] / 4.0) and row["vs median"] == pytest.approx(1.0)
    summary = result.summary()
    assert f"here/record on {host_machine()}, median: {row['here/record']:.2f}x for the 1 timed on " \
           f"{host_machine()}" in summary and "no kernel out of line" in summary and "m:" not in summary
    assert (tmp_path / database.RECORDS).read_bytes() == before


def test_audit_names_the_kernel_out_of_line_with_the_others(conv_task, tmp_path: Path) -> None:
    """Ratios are read against their median (another CPU is faster or slower in general): of three kernels whose
    records claim 1 s, 1 s and 10 ns, the last is out of line, first in the table, and its kernel is named; a
    kernel the database has no record of is counted as untuned; a kernel two models share is timed once, counted
    once in its machine's median, and listed under each model."""
    _, profile = conv_task
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 4, 1),
                                torch.nn.Conv2d(4, 4, 3)).eval()
    tasks = extract_tasks([import_onnx(export_onnx(model, tmp_path / "m.onnx", resolution=16))], build_target(profile))
    assert len(tasks) == 4
    for task, secs in zip(tasks[:3], (1.0, 1.0, 1e-8), strict=True):
        _commit(tmp_path / "db", task.dispatched[0], _records(task.dispatched[0], profile, 1, secs))
    result = audit.audit({"a": tasks, "b": tasks[:1]}, tmp_path / "db", build_target(profile), profile,
                         progress=False)
    assert list(result.out_of_line()["kernel"]) == [tasks[2].task_name] == [result.table["kernel"][0]]
    assert set(result.table["timed on"].dropna()) == {"(unnamed)"} and result.table["record ms"].isna().sum() == 1
    assert len(result.table) == 5 and result.medians["(unnamed)"][1] == 3
    shared = result.table[result.table["kernel"] == tasks[0].task_name]
    assert list(shared["model"].sort_values()) == ["a", "b"] and shared["here ms"].nunique() == 1
    summary = result.summary()
    assert f"1 kernel(s) out of line (>= 1.25x the median of their machine, costing >= 1% of their model's time): " \
           f"a:{tasks[2].task_name};" in summary
    assert "1 kernel(s) have no schedule in the database (untuned)" in summary
    assert "a: 4 of its 4 kernels run schedules chosen by another machine's times or none" in summary
    assert "`tune b --refine`" in summary


def test_cli_audit(tmp_path: Path) -> None:
    """`tune --audit` changes nothing, so it takes no tuning options; with a database that has none of a recipe's
    kernels it says they are untuned, and writes its table."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    device = tmp_path / "x86-1.yaml"
    device.write_text("name: x86-1\ntarget: {kind: llvm, mcpu: portable}\nthreads: 1\nlayout: NHWC\n")
    wrong = run_cli("-q", "tune", str(recipe), "--audit", "--refine", "--device", str(device))
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "tune --audit" in wrong.stderr
    out = run_cli("-q", "tune", str(recipe), "--audit", "--device", str(device), "--results", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    (table,) = (tmp_path / "r" / "audit").glob("audit-*.csv")
    untuned = len(pd.read_csv(table))
    assert untuned > 5 and f"{untuned} kernel(s) have no schedule in the database (untuned)" in out.stdout
