"""`harness bench`: its interleaved rounds, its rows, and int8 rows compared with the fp32 row of the same runtime and
schedules."""

import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RECIPE, run_cli

from harness.bench import Runners, _Series, bench, time_interleaved, with_fp32_ratios
from harness.device import load_device
from harness.recipe import recipe_from_dict
from harness.results import Row
from harness.specs import MeasureSpec
from harness.workspace import Workspace


def _row(dtype: str, runtime: str, ms: float, width: float = 1.0) -> Row:
    return Row(recipe="r", model="mobilenet_v1", width_mult=width, resolution=224, dtype=dtype, runtime=runtime,
               latency_ms_median=ms)


def test_int8_rows_get_their_ratio_to_the_matching_fp32_row() -> None:
    rows = [_row("fp32", "tvm untuned", 400.0), _row("fp32", "onnxruntime", 4.0),
            _row("int8", "tvm untuned", 100.0), _row("int8", "tvm untuned (float QDQ)", 500.0),
            _row("int8", "onnxruntime", 3.0), _row("int8", "tvm tuned", 10.0),  # no fp32 tuned row benched
            _row("int8", "tvm untuned", 50.0, width=0.5),  # another model: no fp32 row
            _row("fp32", "onnxruntime", 2.0)]  # a pruned fp32 model of the same network, benched after: not the twin
    twins = ["v1", "v1", "v1", "v1", "v1", "v1", "v1 α0.5", "v1 pruned"]
    assert [r.vs_fp32 for r in with_fp32_ratios(rows, twins)] == [
        None, None, pytest.approx(0.25), pytest.approx(1.25), pytest.approx(0.75), None, None, None]


def test_bench_rows_carry_the_run_conditions_and_the_table_column_names() -> None:
    """A bench row is a results row: the same `width_mult` column, and git revision, versions, time and the CPU
    that ran it stamped."""
    from harness.noise import cpu_model
    from harness.results import Conditions

    row = _row("fp32", "onnxruntime", 4.0).stamped(Conditions.now("bench-x"))
    cells = row.as_dict()
    assert cells["width_mult"] == 1.0 and "width" not in cells and cells["runtime"] == "onnxruntime"
    assert cells["run_id"] == "bench-x" and cells["git_rev"] and cells["tvm_version"] and cells["timestamp"]
    assert cells["host"] == cpu_model() and cells["host"].endswith(" CPUs")


def test_shipped_recipes_find_their_float_twin() -> None:
    """Every shipped recipe has a twin key (a pruned one too: its step holds a mapping, which once made
    `bench v1_pruned50` fail after timing everything); an int8 recipe's twin is its fp32 recipe's."""
    from harness.bench import _float_twin
    from harness.recipe import available_recipes, load_recipe

    twins = {name: _float_twin(load_recipe(name)) for name in available_recipes()}
    assert len(set(twins.values())) > 1  # usable as dict keys
    assert twins["v1_int8"] == twins["v1_fp32"] and twins["v2_int8"] == twins["v2_fp32"]
    assert twins["v1_pruned50"] != twins["v1_fp32"]


def test_series_are_timed_in_interleaved_rounds() -> None:
    """Each round takes one sample of every series in turn (after all were warmed up), so a host that slows down
    midway slows every series alike; a series with fewer repeats stops early."""
    calls: list[str] = []
    recipe = recipe_from_dict(TINY_RECIPE, "tiny")
    made = Runners(recipe=recipe, dtype="fp32", threads=1, calls={n: (lambda n=n: calls.append(n)) for n in "ab"},
                   reports={}, tuned=None, onnx=Path("unused.onnx"))
    spec = MeasureSpec(repeats=3, number=2, warmup=1)
    series = [_Series(made, "a", spec), _Series(made, "b", replace(spec, repeats=2))]
    stats, load = time_interleaved(series, progress=False)
    assert [s.repeats for s in stats] == [3, 2] and load.seconds > 0
    # warm-up a, b; then per round: a's settling calls (at least one) and its 2 timed calls, then b's likewise
    assert re.fullmatch("ab" + "(a+aab+bb)" * 2 + "a+aa", "".join(calls)), "".join(calls)


def test_bench_gives_every_runtime_a_row_with_its_ratio_to_onnx_runtime(tmp_path) -> None:
    """`bench` end to end on a tiny recipe and its int8 form: a row per runtime, ONNX Runtime's ratio 1, the CSV
    written, the compiler's report on TVM's rows, and the int8 model's layer kinds beside the fp32 one's and ONNX
    Runtime's."""
    recipes = [recipe_from_dict(TINY_RECIPE | {"name": "tiny"}, "tiny"),
               recipe_from_dict(TINY_RECIPE | {"name": "tiny_int8", "steps": [{"quantize": {}}]}, "tiny_int8")]
    result = bench(recipes, load_device("x86"), repeats=3, workspace=Workspace(tmp_path), progress=False)
    rows = {r.runtime: r for r in result.rows if r.recipe == "tiny"}
    assert {"tvm untuned", "tvm tuned", "onnxruntime", "pytorch"} <= set(rows)
    assert rows["onnxruntime"].vs_ort == 1 and all(r.repeats == 3 and r.latency_ms_median > 0 for r in rows.values())
    assert result.path.is_file() and len(result.path.read_text().splitlines()) == len(result.rows) + 1
    int8 = {r.runtime: r for r in result.rows if r.recipe == "tiny_int8"}  # what the compiler did, per TVM row
    assert int8["tvm tuned"].integer_ops == "10/10" and int8["tvm tuned"].layout == "NHWC"
    assert int8["tvm tuned"].dot_product_ops is not None and int8["tvm tuned (float QDQ)"].integer_ops is None
    assert rows["tvm tuned"].tuned_kernels is not None and int8["onnxruntime"].tuned_kernels is None
    kinds = result.layer_kinds["tiny vs tiny_int8"].set_index("kind")
    assert list(kinds.columns) == ["fp32", "int8", "ratio", "ORT int8", "int8/ORT int8"]
    assert (kinds.loc["total", ["fp32", "int8", "ORT int8"]] > 0).all()
    assert kinds.loc["1x1 convolution", "ORT int8"] > 0


# ~20 s, a CLI run; CI runs it (.ci/run, slow set)
@pytest.mark.slow
def test_bench_can_leave_out_untuned_tvm(write_recipe, tmp_path: Path) -> None:
    """`bench --no-untuned` builds and times every runtime but untuned TVM (seconds an inference on VGG-16)."""
    out = run_cli("bench", str(write_recipe(TINY_RECIPE)), "--no-untuned", "--rounds", "2",
                  "--results", str(tmp_path / "results"))
    assert out.returncode == 0, out.stderr
    (csv,) = (tmp_path / "results" / "bench").glob("*.csv")
    assert set(pd.read_csv(csv)["runtime"]) == {"tvm tuned", "onnxruntime", "pytorch"}
    assert "tvm untuned" not in out.stdout
