from pathlib import Path

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.measure import latency_stats
from harness.results import COLUMNS, Row, append_rows, format_rows, load_results


def test_append_keeps_old_rows_and_standard_columns(tmp_path: Path) -> None:
    table = tmp_path / "results.csv"
    append_rows([{"run_id": "a", "top1": 0.9, "latency_ms_median": 1.5}], table)
    append_rows([{"run_id": "b", "top1": 0.8, "extra_metric": 3}], table)
    frame = load_results(table)
    assert list(frame["run_id"]) == ["a", "b"]
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert "extra_metric" in frame.columns
    assert not list(tmp_path.glob("*.tmp"))


def test_unreadable_table_is_left_untouched(tmp_path: Path) -> None:
    table = tmp_path / "results.csv"
    table.write_bytes(b'a,b\n"unterminated\n1,2,3,4\n')
    before = table.read_bytes()
    with pytest.raises(HarnessError, match="not a readable results table"):
        append_rows([{"run_id": "x"}], table)
    assert table.read_bytes() == before


def test_a_table_the_harness_did_not_write_is_refused_and_left_untouched(tmp_path: Path) -> None:
    table = tmp_path / "results.csv"
    table.write_text("name,score\nalice,3\n")
    with pytest.raises(HarnessError, match="not a results table of the harness \\(no column run_id, recipe, device"):
        append_rows([Row(run_id="1", recipe="a", device="x86")], table)
    assert table.read_text() == "name,score\nalice,3\n"


def test_appending_writes_the_old_rows_back_as_they_were(tmp_path: Path) -> None:
    """Names that look like numbers or NA (recipes "007", "None", "1e5"; a git revision "12e4567") stay text, in
    the file and when read; counts are written as whole numbers beside rows that lack them."""
    table = tmp_path / "results.csv"
    append_rows([Row(run_id="1", recipe="007", git_rev="12e4567", device="x86", top1=0.5, eval_samples=3),
                 Row(run_id="2", recipe="None", device="x86")], table)
    before = table.read_text().splitlines()
    append_rows([Row(run_id="3", recipe="1e5", device="x86", layout="NHWC")], table)  # a new column too
    after = table.read_text().splitlines()
    assert [line.removesuffix(",") for line in after[1:3]] == before[1:3]
    assert ",3," in after[1] and ",3.0," not in after[1]
    frame = load_results(table)
    assert list(frame["recipe"]) == ["007", "None", "1e5"] and frame["git_rev"][0] == "12e4567"
    assert frame["top1"][0] == 0.5 and pd.isna(frame["top1"][1])


@pytest.mark.parametrize("column, cell, expected", [("top1", "abc", "a number"), ("remote", "yes", "True or False")])
def test_a_cell_that_is_not_its_columns_type_is_one_line_naming_the_row(tmp_path: Path, column: str, cell: str,
                                                                       expected: str) -> None:
    table = tmp_path / "results.csv"
    append_rows([Row(run_id="1", recipe="a", device="x86", top1=0.5, remote=False)] * 2, table)
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.loc[1, column] = cell
    frame.to_csv(table, index=False)
    before = table.read_bytes()
    with pytest.raises(HarnessError, match=rf"row 2 of the results table: {column} is '{cell}', not {expected}"):
        append_rows([Row(run_id="2", recipe="b", device="x86")], table)
    assert table.read_bytes() == before


def test_optional_columns_appear_once_and_a_table_that_repeats_them_is_folded(tmp_path: Path) -> None:
    """Appends before 2026-12-03 repeated `layout`/`fp16` in the header at each append (pandas read `layout.1`)."""
    table = tmp_path / "results.csv"
    for i in range(3):
        append_rows([Row(run_id=str(i), recipe="a", device="x86", layout="NHWC", fp16=True)], table)
    assert table.read_text().splitlines()[0].endswith("torch_version,layout,fp16")
    table.write_text("run_id,recipe,device,layout,fp16,layout,fp16\n1,a,x86,NHWC,True,,\n2,b,x86,,,NCHW,False\n")
    append_rows([Row(run_id="3", recipe="c", device="x86")], table)
    frame = load_results(table)
    assert list(frame["layout"][:2]) == ["NHWC", "NCHW"] and list(frame["fp16"][:2]) == [True, False]
    assert "layout.1" not in frame.columns


def test_cells_a_spreadsheet_writes_read_as_pandas_read_them(tmp_path: Path) -> None:
    table = tmp_path / "results.csv"
    table.write_text("run_id,recipe,device,remote,top1,threads\n1,None,x86,TRUE,nan,NA\n2,007,x86,false,0.5,4\n")
    frame = load_results(table)
    assert list(frame["remote"]) == [True, False] and frame["top1"].isna()[0] and frame["threads"][1] == 4
    assert list(frame["recipe"]) == ["None", "007"]


def test_empty_table_and_format() -> None:
    assert list(load_results(Path("/nonexistent/results.csv")).columns) == list(COLUMNS)
    text = format_rows([{"recipe": "r", "top1": 0.91234, "latency_ms_median": 12.3456}])
    assert "0.9123" in text and "12.35" in text


def test_latency_stats() -> None:
    stats = latency_stats([0.001, 0.002, 0.003, 0.004, 0.010])
    assert stats.median_ms == pytest.approx(3.0)
    assert stats.mean_ms == pytest.approx(4.0)
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.p90_ms == pytest.approx(pd.Series([1, 2, 3, 4, 10]).quantile(0.9))
    assert stats.std_ms == pytest.approx(pd.Series([1, 2, 3, 4, 10]).std())
    assert stats.repeats == 5
    with pytest.raises(ValueError):
        latency_stats([])


def test_missing_values_print_as_a_dash() -> None:
    """A remote row has no PyTorch/ORT peers: the table shows '-', not 'None'."""
    text = format_rows([{"recipe": "r", "top1": 0.5, "torch_latency_ms": None}], ["recipe", "top1", "torch_latency_ms"])
    assert "None" not in text and text.splitlines()[1].split() == ["r", "0.5", "-"]
