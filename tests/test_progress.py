"""Progress of long work where no bar can be drawn (pytest's captured stderr is not a terminal, like a CI log)."""

import logging

import pytest

from harness.progress import Progress, progress_over


def test_without_a_terminal_progress_is_logged_with_the_count_and_the_status(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="harness.progress"):
        with Progress(10, "tune", "trials", every_s=0.0) as bar:
            bar.update(3, "tasks 1/4")
            bar.update(2)
    assert [r.getMessage() for r in caplog.records] == ["tune: 3 of 10 trials, tasks 1/4",
                                                        "tune: 5 of 10 trials, tasks 1/4"]


def test_lines_are_spaced_in_time_and_quiet_means_none(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="harness.progress"):
        with Progress(None, "bench", "rounds") as bar:  # a line a minute: none within this test
            bar.update(5)
        with Progress(10, "bench", "rounds", enabled=False, every_s=0.0) as bar:
            bar.update(5)
    assert caplog.records == []


def test_progress_over_yields_every_item() -> None:
    assert list(progress_over(range(3), "eval", "batch")) == [0, 1, 2]
