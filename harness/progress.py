"""Progress of long work: a tqdm bar on a terminal, else (a CI log, a redirected run) a log line a minute."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

log = logging.getLogger("harness.progress")

T = TypeVar("T")

EVERY_S = 60.0  # between two log lines where no bar is drawn


class Progress:
    """A progress bar over `total` steps. `enabled=False` shows nothing (`--quiet`, tests); where stderr is not a
    terminal, tqdm draws no bar and a line with the count and the latest status is logged every `every_s`."""

    def __init__(self, total: int | None, desc: str, unit: str, *, enabled: bool = True, leave: bool = True,
                 every_s: float = EVERY_S) -> None:
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=leave)
        self.logs = enabled and self.bar.disable  # asked for, but no terminal to draw a bar on
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done, self.status, self.logged = 0, "", time.monotonic()

    def update(self, steps: int = 1, status: str | None = None) -> None:
        """Count `steps` more done; `status`: a short text shown beside the count (kept until replaced)."""
        self.done += steps
        self.bar.update(steps)
        if status is not None:
            self.status = status
            self.bar.set_postfix_str(status)
        if self.logs and time.monotonic() - self.logged >= self.every_s:
            self.logged = time.monotonic()
            of = f" of {self.total}" if self.total else ""
            log.info("%s: %d%s %s%s", self.desc, self.done, of, self.unit, f", {self.status}" if self.status else "")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_over(items: Iterable[T], desc: str, unit: str, *, enabled: bool = True, leave: bool = True) -> Iterator[T]:
    """`items`, counting each as one step of a `Progress` (whose total is their number, where they have one)."""
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled=enabled, leave=leave) as bar:
        for item in items:
            yield item
            bar.update()
