"""The one progress bar: rich, on stderr, so stdout stays clean for results and JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress


@contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (nothing at all when disabled)."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        try:
            yield lambda n: bar.advance(task, n)
        except KeyboardInterrupt:
            # Closing the terminal (SIGHUP) stops the run, and the bar's last frame, written to a terminal
            # that is gone, raised OSError (EIO) in place of the stop: the stage recorded "failed", exit 1.
            with suppress(OSError):
                bar.stop()
            raise
