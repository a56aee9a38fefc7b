"""Progress on stderr: a rich bar on a terminal, occasional plain lines in logs and pipes.

Every layer may show progress (decoding a cache, embedding a split, training), so this
module depends on nothing else of fewshot; reporting and W&B live in `report` and
`tracking`, above it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def make_progress(quiet: bool = False) -> Progress:
    """A rich progress bar on stderr; disabled when quiet or when stderr is not a TTY."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=False,
    )


def track(items: Iterable[T], total: int | None, description: str,
          quiet: bool = False) -> Iterator[T]:
    """Iterate with a progress bar on a terminal, occasional plain lines otherwise."""
    with make_progress(quiet) as progress:
        task = progress.add_task(description, total=total, status="")
        plain = PlainProgress(description, total or 0, quiet=quiet or not progress.disable)
        for done, item in enumerate(items, 1):
            yield item
            progress.advance(task)
            plain.update(done)


class PlainProgress:
    """Progress as occasional plain lines, for logs and pipes (no TTY) unless quiet."""

    def __init__(self, description: str, total: int, quiet: bool, every_s: float = 10.0):
        self.description, self.total, self.quiet, self.every_s = description, total, quiet, every_s
        self.start = self.last = time.monotonic()

    def update(self, done: int, status: str = "") -> None:
        now = time.monotonic()
        finished = bool(self.total) and done >= self.total
        if self.quiet or (now - self.last < self.every_s and not finished):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 and self.total else math.inf
        eta_text = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        print(f"{self.description}: {done}/{self.total or '?'} {status} eta {eta_text}",
              file=sys.stderr, flush=True)
