"""A rich progress bar implementing the library's ``progress`` callable.

The library calls ``progress(description, total)`` around every artifact write
and read, and feeds the byte counts to the ``advance`` function the returned
context manager yields. :class:`ProgressBar` decides whether anything is drawn:
only when it is enabled (the CLI enables it when stderr is a terminal) and only
for artifacts above a size threshold. For writes whose size is not known in
advance (``total is None``), the bar appears once the threshold has been passed.

``rich`` is imported only when a bar is actually drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

#: Artifacts smaller than this never get a bar (8 MiB).
DEFAULT_THRESHOLD = 8 * 1024 * 1024

Advance = Callable[[int], None]


def _ignore(nbytes: int) -> None:
    """The ``advance`` used when nothing is drawn."""


class _LazyBar:
    """One transfer; starts drawing once it is known to exceed the threshold."""

    def __init__(self, description: str, total: int | None, threshold: int, console: Console | None) -> None:
        self.description = description
        self.total = total
        self.threshold = threshold
        self.console = console
        self.done = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self._progress is None and (self.total is not None or self.done >= self.threshold):
            self._start()
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.done)

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = self.console if self.console is not None else Console(file=sys.stderr)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=self.total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class ProgressBar:
    """The ``progress`` callable given to ``ModelPersistence(progress=...)``.

    :param enabled: draw anything at all; ``None`` means "when stderr is a terminal".
    :param threshold: artifacts smaller than this many bytes get no bar.
    :param console: a ``rich.console.Console`` to draw on (defaults to stderr).
    """

    def __init__(
        self,
        enabled: bool | None = None,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        console: Any = None,
    ) -> None:
        self.enabled = stderr_is_terminal() if enabled is None else enabled
        self.threshold = threshold
        self.console = console

    @contextmanager
    def __call__(self, description: str, total: int | None) -> Iterator[Advance]:
        """Yield ``advance(nbytes)`` for one artifact transfer of ``total`` bytes."""
        if not self.enabled or (total is not None and total < self.threshold):
            yield _ignore
            return
        bar = _LazyBar(description, total, self.threshold, self.console)
        try:
            yield bar.advance
        finally:
            bar.close()


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False
