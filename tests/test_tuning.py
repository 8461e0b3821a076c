"""MetaSchedule tuning: a real (small) tuning session on a tiny model, its database reused by compiles."""

import contextlib
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import tvm
import tvm_ffi
from conftest import TINY_RECIPE, fresh_tune_trials, postprocessed_spaces, run_cli

from harness.compile import database, import_onnx, kernels, prepare_module, runners, search, tuning
from harness.compile.builder import WarmBuilder
from harness.compile.target import build_target, target_key, target_spec
from harness.device import load_device
from harness.errors import HarnessError
from harness.export import export_onnx
from harness.models import build_model
from harness.recipe import recipe_from_dict
from harness.specs import TuningCoverage


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory) -> tuple[torch.nn.Module, tvm.IRModule]:
    model = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval()
    onnx_model = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", resolution=32)
    return model, import_onnx(onnx_model)


def test_tasks_of_identical_workloads_are_merged(tiny_module) -> None:
    _, mod = tiny_module
    target = build_target(load_device("x86"))
    once = kernels.extract_tasks([mod], target)
    twice = kernels.extract_tasks([mod, mod], target)
    assert len(once) == len(twice) > 5
    assert sum(t.weight for t in twice) == 2 * sum(t.weight for t in once)


def test_database_is_keyed_by_portable_target(tmp_path: Path) -> None:
    x86, rpi4 = load_device("x86"), load_device("rpi4")
    assert database.database_dir(tmp_path, target_key(target_spec(x86))) != \
        database.database_dir(tmp_path, target_key(target_spec(rpi4)))
    assert database.database_fingerprint(tmp_path / "absent") is None


@pytest.fixture(scope="module")
def tuned_conv(tmp_path_factory) -> tuple[torch.nn.Module, tvm.IRModule, Path]:
    """A one-kernel model tuned (16 trials) into a database of the portable x86 target."""
    tmp = tmp_path_factory.mktemp("conv")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU()).eval()
    mod = import_onnx(export_onnx(model, tmp / "m.onnx", resolution=16))
    db = tmp / "tuning" / target_key(target_spec(load_device("x86")))
    report = tuning.tune([mod], build_target(load_device("x86")), db, trials=16, progress=False)
    assert report.coverage.tuned == report.coverage.total == 1
    return model, mod, db


@pytest.mark.slow  # needs `tuned_conv`, a real tuning session (~4 min on 2 cores)
def test_records_are_found_by_workload_whatever_the_cpu_name(tuned_conv) -> None:
    """What makes a database portable: a record tuned for the ISA level is found for this CPU's own model
    name too (MetaSchedule matches workloads, not targets); another thread count is another folder."""
    _, mod, db = tuned_conv
    native = build_target(load_device("x86-native"))
    assert str(native.attrs["mcpu"]) not in ("x86-64-v3", "x86-64-v4")
    assert kernels.coverage([mod], native, db) == TuningCoverage(tuned=1, total=1)
    four = target_key(target_spec(replace(load_device("x86"), threads=4)))
    assert database.database_fingerprint(database.database_dir(db.parent, four)) is None
    assert database.databases_for_other_threads(four, [db.parent]) == [db.name]


@pytest.mark.slow  # needs `tuned_conv`, a real tuning session (~4 min on 2 cores)
def test_shipped_database_is_packed_small_and_seeds_a_workspace(tuned_conv, tmp_path: Path) -> None:
    _, mod, db = tuned_conv
    shipped = tmp_path / "shipped" / db.name
    size = database.pack(db, shipped)
    raw = sum((db / name).stat().st_size for name in (database.RECORDS, database.WORKLOADS))
    assert 0 < size < raw / 10  # xz of MetaSchedule's base64 JSON
    fresh = tmp_path / "ws" / db.name
    database.seed(fresh, database.shipped_dir(db.name, shipped.parent))
    assert kernels.coverage([mod], build_target(load_device("x86")), fresh).tuned == 1
    before = (fresh / database.RECORDS).read_bytes()
    database.seed(fresh, database.shipped_dir(db.name, shipped.parent))  # unchanged shipped files: nothing to do
    assert (fresh / database.RECORDS).read_bytes() == before
    (fresh / database.SEEDED).write_text("older\n")  # a newer shipped database merges into the workspace one
    database.seed(fresh, database.shipped_dir(db.name, shipped.parent))
    assert kernels.coverage([mod], build_target(load_device("x86")), fresh).tuned == 1
    assert len((fresh / database.RECORDS).read_text().splitlines()) <= 2


def test_packing_a_database_without_records_of_the_kernels_writes_nothing(tmp_path: Path) -> None:
    """`tune --shipped --trials 0` on a database that holds none of them would ship an empty database."""
    db, shipped = tmp_path / "tuning" / "key", tmp_path / "shipped" / "key"
    database.open_database(db)
    with pytest.raises(HarnessError, match="has no records of the kernels to ship: nothing to ship"):
        database.pack(db, shipped)
    assert not shipped.exists()


def test_tune_spec_is_validated_and_not_part_of_the_key() -> None:
    base = recipe_from_dict(TINY_RECIPE, "tiny")
    tuned = recipe_from_dict(TINY_RECIPE | {"tune": {"trials": 100, "minutes": 5}}, "tiny")
    assert tuned.tune.trials == 100 and tuned.key() == base.key()
    with pytest.raises(HarnessError, match="tune"):
        recipe_from_dict(TINY_RECIPE | {"tune": {"trials": -1}}, "tiny")


@pytest.mark.slow  # ~5 min on 2 cores: a second real tuning session (the default suite keeps `tuned_conv`'s)
def test_cli_tune_then_run_uses_the_tuned_schedules(write_recipe, tmp_path: Path) -> None:
    """One real tuning session (16 trials): database written, reused by `run` (whose output is checked
    against PyTorch), and its kernels skipped by the next tuning session."""
    recipe, results = write_recipe(TINY_RECIPE), tmp_path / "results"
    out = run_cli("-q", "tune", str(recipe), "--trials", "16", "--results", str(results))
    assert out.returncode == 0, out.stderr
    assert 16 <= fresh_tune_trials(out.stdout) <= 24, out.stdout  # MetaSchedule may finish its last batch
    (db,) = (results / "tuning").glob("*/database_tuning_record.json")
    assert db.parent.name == target_key(target_spec(load_device("x86")))
    run = run_cli("-q", "run", str(recipe), "--results", str(results))
    assert run.returncode == 0, run.stderr
    row = pd.read_csv(results / "results.csv").iloc[0]
    tuned, total = map(int, row["tuned_kernels"].split("/"))
    assert 0 < tuned < total and row["max_abs_diff"] < 1e-3
    # The same kernels, extracted in this process, are found in the database and not tuned again.
    model, x86 = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval(), load_device("x86")
    mod = prepare_module(export_onnx(model, tmp_path / "m.onnx", resolution=32), layout=x86.layout)
    report = tuning.tune([mod], build_target(x86), db.parent, trials=0, progress=False)
    assert report.tasks == total and report.tasks_tuned_before == tuned and report.trials == 0


@pytest.mark.slow  # ~1 min: an 18 s budget on a 4-kernel model (the first batch is always built)
def test_time_budget_stops_tuning_and_keeps_what_was_measured(tmp_path: Path) -> None:
    """--minutes ends a session that its trials would make long; the records so far are kept, compacted."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    mod = import_onnx(export_onnx(model, tmp_path / "m.onnx", resolution=32))
    report = tuning.tune([mod], build_target(load_device("x86")), tmp_path / "db", trials=100_000, minutes=0.3,
                         progress=False)
    assert report.stopped_by_deadline and 0 < report.trials < 100_000
    assert report.coverage.tuned > 0
    records = (tmp_path / "db" / database.RECORDS).read_text().splitlines()
    assert len(records) <= 2 * report.coverage.tuned  # compacted: the best two per kernel


@pytest.mark.slow  # ~1 min: real tuning of a 4-kernel model, one kernel at a time
def test_a_tvm_error_in_a_chunk_retunes_its_kernels_one_by_one(tmp_path: Path, monkeypatch, caplog) -> None:
    """A TVM error that ends a chunk's session (seen: RemoveWeightLayoutRewriteBlock on a packed int8 candidate)
    costs only the kernel that fails: the others are tuned again one by one. Here every session of more than
    one kernel, and the session of the first kernel, fail as TVM would."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    mod = import_onnx(export_onnx(model, tmp_path / "m.onnx", resolution=32))
    target = build_target(load_device("x86"))
    first = kernels.extract_tasks([mod], target)[0].task_name
    real = tuning.ms.tune.tune_tasks

    def failing(*, tasks, **kwargs):  # noqa: ANN001, ANN202
        if len(tasks) > 1 or tasks[0].task_name == first:
            raise tvm.error.InternalError("Check failed: (ind.as<PrimVar>()) is false:")
        return real(tasks=tasks, **kwargs)

    monkeypatch.setattr(tuning.ms.tune, "tune_tasks", failing)
    with caplog.at_level(logging.WARNING, logger=tuning.__name__):
        report = tuning.tune([mod], target, tmp_path / "db", trials=8 * 4, progress=False)
    assert report.coverage.total >= 2 and report.coverage.tuned == report.coverage.total - 1
    assert "one by one" in caplog.text and f"tuning kernel {first} ended on a TVM error" in caplog.text


class _Draws:
    """A search strategy's batches: the first `failing` draws fail as TVM does on some packed int8 candidates."""

    def __init__(self, failing: int) -> None:
        self.failing, self.draws = failing, 0

    def generate_measure_candidates(self) -> list:
        self.draws += 1
        if self.draws <= self.failing:
            raise tvm.error.InternalError("Check failed: (ind.as<PrimVar>()) is false:")
        return []  # an (empty) batch

    def clone(self) -> "_Draws":
        return self


@pytest.mark.parametrize("failing", [search.DRAWS - 1, search.DRAWS])
def test_a_batch_tvm_cannot_prepare_is_drawn_again_then_its_task_ends(failing: int, caplog) -> None:
    """A batch of candidates that fails to assemble is drawn anew; after `DRAWS` failures the task ends (no more
    candidates) instead of the whole tuning session."""
    draws = _Draws(failing)
    with caplog.at_level(logging.WARNING, logger=search.__name__):
        batch = search.RedrawingSearch(draws).generate_measure_candidates()
    if failing < search.DRAWS:
        assert batch is not None and len(batch) == 0 and draws.draws == failing + 1 and not caplog.text
    else:
        assert batch is None and draws.draws == search.DRAWS and "could not prepare" in caplog.text


def test_once_the_time_budget_is_spent_the_search_draws_nothing() -> None:
    """After the budget, a task gets no more candidates (so it ends) instead of searching for batches the builder
    would not build; clones (one per task) share the budget."""
    draws, spent = _Draws(0), [False]
    strategy = search.RedrawingSearch(draws, expired=lambda: spent[0])
    assert strategy.generate_measure_candidates() == [] and draws.draws == 1
    spent[0] = True
    assert strategy.generate_measure_candidates() is None and draws.draws == 1
    assert strategy.clone().generate_measure_candidates() is None and draws.draws == 1


def test_meta_schedule_configures_its_loggers_beside_a_foreign_handler(tmp_path: Path) -> None:
    """A session after something in the process gave MetaSchedule's logger an unnamed handler (seen in CI,
    after the emulator tests) configures its loggers instead of failing inside `logging.config`."""
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    logger = logging.getLogger(tuning.META_SCHEDULE_LOGGER)
    foreign = logging.NullHandler()
    logger.addHandler(foreign)
    try:
        with pytest.raises(AttributeError):  # what TVM does with it
            get_loggers_from_work_dir(str(tmp_path / "a"), ["task"])
        assert foreign in tuning.release_foreign_log_handlers()  # (a tuning session before may have left more)
        (task_logger,) = get_loggers_from_work_dir(str(tmp_path / "b"), ["task"])
        assert foreign not in logger.handlers and task_logger.handlers
    finally:
        logger.removeHandler(foreign)


def test_cpu_kernels_mark_their_weights_layout_free(tiny_module) -> None:
    """On CPU targets the weights a kernel reads are free for a tuned schedule to repack."""
    _, mod = tiny_module
    fused = kernels.fuse(mod, build_target(load_device("x86")))
    marked = [gv.name_hint for gv, func in fused.functions.items()
              if isinstance(func, tvm.tirx.PrimFunc) and "layout_free_buffers" in (func.attrs or {})]
    assert sum("conv2d" in name for name in marked) >= 5, marked


@pytest.mark.slow  # needs `tuned_conv`, a real tuning session (~4 min on 2 cores)
def test_tuned_convolution_reads_prepacked_weights(tuned_conv) -> None:
    """A tuned schedule rewrites its weight layout; the build repacks the constant weights to match, and the
    output still matches PyTorch."""
    model, mod, db = tuned_conv
    target = build_target(load_device("x86"))
    assert "layout_rewrite" in (db / database.RECORDS).read_text()
    executable = kernels.compile_with_database(mod, target, db)
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    x = torch.rand(1, 3, 16, 16)
    out = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-4, atol=1e-4)


def test_progress_shows_the_time_left_of_the_whole_budget_not_of_a_chunk() -> None:
    """Each chunk of tasks gets a share of the budget as its deadline; the time shown is the budget's."""
    import time

    from harness.progress import Progress

    with Progress(None, "tune", "trials", enabled=False) as bar:
        session = tuning._Session(bar, 3, time.monotonic() + 600)
        session.deadline = time.monotonic() + 60
        assert session.status().endswith(("10.0 min left", "9.9 min left"))


def _tvm_threads() -> int:
    import tvm

    return tvm.get_global_func("runtime.NumThreads")()


# TVM caps its pool at the logical CPUs; 2 is the case that tells (TVM defaults to 1 on a 2-vCPU host)
@pytest.mark.parametrize("threads", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_local_runner_measures_candidates_on_the_profiles_threads(threads: int) -> None:
    """The worker process that times candidates runs TVM's thread pool with the profile's thread count (TVM's
    own default is half the logical CPUs: 1 on a 2-vCPU host)."""
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker cannot import this test module
    runner = runners.runner_for(replace(load_device("x86"), threads=threads))
    assert runner.pool.submit(_tvm_threads).result() == threads
    # called without a profile (library use), tuning times on the target's `num-cores`
    target = build_target(replace(load_device("x86"), threads=threads))
    assert runners.local_runner(runners.target_threads(target)).pool.submit(_tvm_threads).result() == threads


def _imported(module: str) -> bool:
    import sys

    return module in sys.modules


@contextlib.contextmanager
def _elementwise_candidate(profile):  # noqa: ANN001, ANN202 (TVM types)
    """A built candidate (artifact path) of a 64×64 elementwise kernel for `profile`, and its prim func; the
    artifact is removed afterwards."""
    from tvm import te
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    a = te.placeholder((64, 64), name="a")
    func = te.create_prim_func([a, te.compute((64, 64), lambda i, j: a[i, j] * 2.0, name="b")])
    builder = WarmBuilder(max_workers=1)
    try:
        (built,) = builder.build([BuilderInput(tvm.IRModule({"main": func}), build_target(profile))])
    finally:
        builder.close()
    assert built.error_msg is None, built.error_msg
    try:
        yield built.artifact_path, func
    finally:
        shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)


def test_a_candidates_time_is_the_fastest_of_its_timings_taken_in_a_light_worker() -> None:
    """The runner reports one time per candidate (MetaSchedule ranks by the mean of what it gets: one slow timing
    of several would count), from a worker that imports TVM but not the harness's compile side (nor, with it, ONNX)."""
    import sys

    import cloudpickle
    from tvm.s_tir import meta_schedule as ms

    from harness import candidate_timing

    profile = replace(load_device("x86"), threads=1)
    runner = runners.runner_for(profile)
    assert runner.evaluator_config.repeat == candidate_timing.REPEAT > 1
    with _elementwise_candidate(profile) as (path, func):
        (future,) = runner.run([ms.runner.RunnerInput(path, "cpu", ms.arg_info.ArgInfo.from_prim_func(func))])
        result = future.result()
    assert result.error_msg is None, result.error_msg
    assert len(result.run_secs) == 1 and 0 < float(result.run_secs[0]) < 0.1
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert [runner.pool.submit(_imported, m).result() for m in ("tvm", "harness.compile", "onnx")] == \
        [True, False, False]


def test_candidates_on_a_board_are_timed_on_the_profiles_threads(monkeypatch) -> None:
    """The RPC runner's evaluator sizes the board's thread pool (a board may have more cores than the profile
    uses); here the board is a TVM RPC server on this host, whose TVM takes 2 threads by default."""
    import numpy as np
    from tvm import rpc

    from harness import candidate_timing

    monkeypatch.setenv("TVM_NUM_THREADS", "2")  # the server's default (TVM's own: half the CPUs on x86)
    server = rpc.Server(host="127.0.0.1", port=9390, port_end=9490)
    try:
        session = rpc.connect("127.0.0.1", server.port)
        with _elementwise_candidate(load_device("x86")) as (path, _):
            session.upload(path)
        rt_mod, device = session.load_module(Path(path).name), session.cpu()
        args = [tvm.runtime.tensor(np.ones((64, 64), "float32"), device) for _ in range(2)]
        for threads in (1, 2):
            (secs,) = candidate_timing.fastest_of_repeats_rpc(session, rt_mod, device, candidate_timing.CONFIG,
                                                               [args], threads=threads)
            assert 0 < secs < 0.1
            assert session.get_function("runtime.NumThreads")() == threads
    finally:
        server.terminate()


@pytest.mark.slow  # ~1 min: two models exported and their kernels extracted three times
def test_a_refine_retunes_the_named_recipes_kernels_not_their_references(tmp_path: Path, monkeypatch) -> None:
    """`tune RECIPE --refine` spends its budget on RECIPE's kernels; its reference's are tuned only where they
    have no schedule (here all have one: the first design space of each, committed by the test untimed)."""
    from tvm.s_tir import meta_schedule as ms

    from harness.tune import structural_exports, tune_recipes, tuning_database, tuning_modules, with_references
    from harness.workspace import Workspace

    recipe = recipe_from_dict({**TINY_RECIPE, "steps": [{"width": 0.5}]}, "t", "tiny_half")
    ws, profile = Workspace(root=tmp_path), load_device("x86")
    target = build_target(profile)
    exports = structural_exports(with_references([recipe]), ws, progress=False)
    reference_mod, recipe_mod = tuning_modules(exports, profile)  # the reference comes first
    db = database.open_database(tuning_database(profile, ws))
    for task in kernels.extract_tasks([reference_mod, recipe_mod], target):
        space = next(postprocessed_spaces(task.dispatched[0], target))
        db.commit_tuning_record(ms.database.TuningRecord(space.trace, db.commit_workload(task.dispatched[0]),
                                                         [1e-3], target))
    chosen: list = []
    monkeypatch.setattr(tuning, "_tune_chunk", lambda tasks, *args: chosen.extend(tasks))
    report = tune_recipes([recipe], profile, ws, trials=100, progress=False, refine=True)
    named = {kernels.workload_hash(t) for t in kernels.extract_tasks([recipe_mod], target)}
    reference = {kernels.workload_hash(t) for t in kernels.extract_tasks([reference_mod], target)}
    assert reference - named, "the test needs kernels only the reference has"
    assert {kernels.workload_hash(t) for t in chosen} == named
    assert report.tasks_tuned_before == report.tasks == len(named | reference)
    chosen.clear()
    tune_recipes([recipe], profile, ws, trials=100, progress=False)  # without --refine: nothing to do
    assert not chosen


def _pooled(path: Path, *layers: torch.nn.Module) -> tvm.IRModule:
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    return import_onnx(export_onnx(model, path, resolution=16))


@pytest.fixture(scope="module")
def same_kernel_other_names(tmp_path_factory) -> tuple[tvm.IRModule, tvm.IRModule, dict]:
    """Two models whose global-average-pool kernels are structurally equal but name their blocks differently
    (after one layer or after three), and the first model's kernels by workload hash."""
    tmp = tmp_path_factory.mktemp("names")
    first = _pooled(tmp / "a.onnx", torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    second = _pooled(tmp / "b.onnx", torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1),
                     torch.nn.ReLU())
    target = build_target(load_device("x86"))
    stored = {kernels.workload_hash(t): t for t in kernels.extract_tasks([first], target)}
    renamed = [t for t in kernels.extract_tasks([second], target) if kernels.workload_hash(t) in stored and
               t.dispatched[0].script() != stored[kernels.workload_hash(t)].dispatched[0].script()]
    assert renamed, "the test needs a kernel both models share under other block names"
    return first, second, stored


def _commit_first_spaces(db_path: Path, tasks, target) -> None:  # noqa: ANN001
    from tvm.s_tir import meta_schedule as ms

    db = database.open_database(db_path)
    for task in tasks:
        space = next(postprocessed_spaces(task.dispatched[0], target))
        db.commit_tuning_record(ms.database.TuningRecord(space.trace, db.commit_workload(task.dispatched[0]),
                                                         [1e-3], target))


def test_a_kernel_another_model_stored_is_tuned_on_the_stored_copy(same_kernel_other_names, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A trace recorded on other block names does not replay on the stored kernel, and such records made a
    whole database unreadable (a refine of the int8 baselines): tuning takes the database's copy."""
    first, second, stored = same_kernel_other_names
    target = build_target(load_device("x86"))
    _commit_first_spaces(tmp_path / "db", stored.values(), target)
    chosen: list = []
    monkeypatch.setattr(tuning, "_tune_chunk", lambda tasks, *args: chosen.extend(tasks))
    tuning.tune([second], target, tmp_path / "db", trials=100, refine=[second], progress=False)
    shared = [t for t in chosen if kernels.workload_hash(t) in stored]
    assert shared and all(t.dispatched[0].script() == stored[kernels.workload_hash(t)].dispatched[0].script()
                          for t in shared)


@pytest.mark.slow  # ~2 min: real tuning of two 3-kernel models
def test_refining_a_kernel_another_model_stored_leaves_a_readable_database(same_kernel_other_names,
                                                                          tmp_path: Path) -> None:
    first, second, stored = same_kernel_other_names
    target = build_target(load_device("x86"))
    tuning.tune([first], target, tmp_path / "db", trials=24, progress=False)
    tuning.tune([second], target, tmp_path / "db", trials=48, refine=[second], progress=False)
    records = database.open_database(tmp_path / "db").get_all_tuning_records()  # every record replays
    assert {tvm_ffi.structural_hash(r.workload.mod) for r in records} >= set(stored)
    kernels.compile_with_database(second, target, tmp_path / "db")


@pytest.mark.parametrize("next_use", ["seed", "compact"])  # a run's first use; a tuning session's, under the lock
def test_a_rewrite_killed_between_its_two_files_is_finished_when_the_database_is_next_used(
        same_kernel_other_names, tmp_path: Path, monkeypatch, next_use: str) -> None:
    """A workload file without its records file names other kernels by the records' line numbers."""
    first, second, stored = same_kernel_other_names
    target = build_target(load_device("x86"))
    db_path = tmp_path / "db"
    _commit_first_spaces(db_path, stored.values(), target)
    records = database.open_database(db_path).get_all_tuning_records()
    expected = sorted(tvm_ffi.structural_hash(r.workload.mod) for r in records)
    partial = db_path.with_name("db.partial")
    moves = []

    def killed_after_the_first_move(path: Path) -> None:  # the first call finishes nothing; the second is killed
        if moves.append(path) or len(moves) == 2:
            (partial / database.WORKLOADS).replace(path / database.WORKLOADS)

    monkeypatch.setattr(database, "finish_rewrite", killed_after_the_first_move)
    database.rewrite(db_path, records[::-1])  # the kernels in another order: other line numbers
    monkeypatch.undo()
    assert (partial / database.RECORDS).is_file()
    database.seed(db_path, None) if next_use == "seed" else database.compact(db_path)
    reopened = database.open_database(db_path).get_all_tuning_records()
    assert sorted(tvm_ffi.structural_hash(r.workload.mod) for r in reopened) == expected and not partial.exists()


def test_records_that_do_not_replay_are_skipped_then_dropped(same_kernel_other_names, tmp_path: Path,
                                                             caplog) -> None:
    """A database with such records (written before `as_stored`) still compiles, and opens again once they are
    dropped; the other records stay."""
    from tvm.s_tir import meta_schedule as ms

    first, second, stored = same_kernel_other_names
    target = build_target(load_device("x86"))
    _commit_first_spaces(tmp_path / "db", stored.values(), target)
    db = database.open_database(tmp_path / "db")
    pool = next(t for t in kernels.extract_tasks([second], target) if t.task_name.startswith("mean"))
    assert kernels.workload_hash(pool) in stored  # the pool's reduction block is `lv<n>_red`, <n> another number
    space = next(postprocessed_spaces(pool.dispatched[0], target))  # traced on the second model's names
    db.commit_tuning_record(ms.database.TuningRecord(space.trace, db.commit_workload(pool.dispatched[0]),
                                                     [1e-4], target))
    with open(tmp_path / "db" / database.RECORDS, "a") as records:  # damaged lines (they made compiling fail)
        records.write("garbage\n[x, 1]\n[0, garbage\n\n")
    with caplog.at_level(logging.WARNING):
        assert kernels.tasks_coverage(kernels.extract_tasks([first], target), target, tmp_path / "db").complete
        assert "does not replay" in caplog.text
        reopened = database.open_database(tmp_path / "db")
        assert "dropped 5 record(s), damaged or whose schedule does not replay" in caplog.text
    assert len(reopened.get_all_tuning_records()) == len(stored)


def test_tune_batch_tunes_the_kernels_of_each_batch_size(write_recipe, tmp_path: Path, monkeypatch, capsys) -> None:
    """`tune RECIPE --batch 1,2`: a batch size is part of the kernels' shapes (CUDA's database covers 1 and 32)."""
    from harness.cli import main

    chosen: list = []
    monkeypatch.setattr(tuning, "_tune_chunk", lambda tasks, *args: chosen.extend(tasks))
    recipe = write_recipe(TINY_RECIPE)
    assert main(["-q", "tune", str(recipe), "--batch", "1,2", "--trials", "10", "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("tuned tiny for x86: ")

    def batch(task) -> int:  # noqa: ANN001
        from tvm.s_tir import meta_schedule as ms

        return int(ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])[0].shape[0])

    by_batch = {b: sum(batch(t) == b for t in chosen) for b in (1, 2)}
    assert by_batch[1] > 0 and by_batch[1] == by_batch[2], by_batch
