"""Progress bars for long-running front-door work (rich, else tqdm, else nothing)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Bar", "progress_bar"]


class Bar:
    """A progress bar handle: ``advance(n)``, ``update(done, total)``, ``describe(text)``.

    Also usable as the ``progress(done, total)`` callback of an analysis.
    """

    def __init__(self, impl: Any = None, task: Any = None, kind: str = "none") -> None:
        self._impl, self._task, self._kind = impl, task, kind

    def advance(self, n: int = 1) -> None:
        if self._kind == "rich":
            self._impl.advance(self._task, n)
        elif self._kind == "tqdm":
            self._impl.update(n)

    def update(self, done: int, total: int | None = None) -> None:
        if self._kind == "rich":
            self._impl.update(self._task, completed=done, total=total)
        elif self._kind == "tqdm":
            if total is not None:
                self._impl.total = total
            self._impl.n = done
            self._impl.refresh()

    def describe(self, text: str) -> None:
        if self._kind == "rich":
            self._impl.update(self._task, description=text)
        elif self._kind == "tqdm":
            self._impl.set_description_str(text)

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)


@contextmanager
def progress_bar(
    total: int | None, description: str, *, enabled: bool | None = None
) -> Iterator[Bar]:
    """A transient progress bar on stderr.

    Parameters
    ----------
    total : int or None
    description : str
    enabled : bool, optional
        Default: only when stderr is a terminal. Falls back silently when neither rich nor
        tqdm is installed.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield Bar()
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        try:
            from tqdm import tqdm
        except ImportError:
            yield Bar()
            return
        with tqdm(total=total, desc=description, file=sys.stderr, leave=False) as t:
            yield Bar(t, kind="tqdm")
        return
    cols = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*cols, console=Console(stderr=True), transient=True) as p:
        task = p.add_task(description, total=total)
        yield Bar(p, task, kind="rich")
