"""Progress display on stderr (rich): byte bars for downloads, count bars for loading weights.

Quiet when stderr is not a terminal (pipes, CI logs, the server), so logs stay clean. Every helper
returns an object with the same methods either way, so callers never branch on it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, Protocol


class Bar(Protocol):
    """What a caller may do with a bar."""

    def advance(self, n: int = 1) -> None: ...

    def update_total(self, total: int) -> None: ...


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass

    def update_total(self, total: int) -> None:
        pass


class _RichBar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def update_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)


def interactive(stream: Any = None) -> bool:
    """Whether progress should be drawn: stderr (or `stream`) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _console(forced: bool = False) -> Any:
    from rich.console import Console

    # When a caller forces drawing (enabled=True), draw even where stderr is not a terminal.
    return Console(stderr=True, force_terminal=True if forced else None)


@contextlib.contextmanager
def byte_bar(description: str, total: int | None = None, *, enabled: bool | None = None) -> Iterator[Bar]:
    """A download bar in bytes (size, speed, time left)."""
    if not (interactive() if enabled is None else enabled):
        yield _NullBar()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=_console(enabled is True), transient=True) as progress:
        yield _RichBar(progress, progress.add_task(description, total=total))


@contextlib.contextmanager
def count_bar(description: str = "loading weights", total: int | None = None, *,
              unit: str = "tensors", enabled: bool | None = None) -> Iterator[Bar]:
    """A bar counting items (tensors loaded, layers built)."""
    if not (interactive() if enabled is None else enabled):
        yield _NullBar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn())
    with Progress(*columns, console=_console(enabled is True), transient=True) as progress:
        yield _RichBar(progress, progress.add_task(description, total=total))


@contextlib.contextmanager
def status(message: str, *, enabled: bool | None = None) -> Iterator[None]:
    """A spinner with a message, for steps of unknown length (pip download, hub metadata calls)."""
    if not (interactive() if enabled is None else enabled):
        yield
        return
    with _console(enabled is True).status(message):
        yield
