"""Progress of long work: a live bar with ETA on a terminal, quiet plain lines otherwise (CI, logs)."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

__all__ = ["ProgressReporter", "progress_reporter"]


class ProgressReporter(Protocol):
    def __call__(self, done: int, elapsed_s: float, total_s: float, label: str) -> None: ...


class _LineProgress:
    """One line at most every `every_s` seconds: readable in CI logs without flooding them."""

    def __init__(self, title: str, stream: TextIO, every_s: float = 15.0) -> None:
        self.title = title
        self.stream = stream
        self.every_s = every_s
        self._last = -every_s

    def __call__(self, done: int, elapsed_s: float, total_s: float, label: str) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        self.stream.write(f"{self.title}: {done} done, {elapsed_s / 60:.1f}/{total_s / 60:.1f} min, now {label}\n")
        self.stream.flush()


@contextmanager
def progress_reporter(title: str, stream: TextIO | None = None) -> Iterator[ProgressReporter]:
    """A reporter for budgeted work; a rich progress bar when the stream is a terminal."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield _LineProgress(title, stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]} done"),
                  TimeRemainingColumn(), TextColumn("{task.fields[label]}"),
                  console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(title, total=1.0, done=0, label="")

        def report(done: int, elapsed_s: float, total_s: float, label: str) -> None:
            bar.update(task, completed=min(1.0, elapsed_s / total_s) if total_s else 0.0, done=done,
                       label=label[-40:])

        yield report
