"""The one progress bar: rich, on stderr, so stdout stays clean for results and JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any


@contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (nothing at all when disabled)."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=False) as bar:
        task = bar.add_task(label, total=total)
        try:
            yield lambda n: bar.advance(task, n)
        except KeyboardInterrupt:
            # Closing the terminal (SIGHUP) stops the run, and the bar's last frame, written to a terminal
            # that is gone, raised OSError (EIO) in place of the stop: the stage recorded "failed", exit 1.
            with suppress(OSError):
                bar.stop()
            raise


def stderr_console() -> Any:
    """The rich Console progress bars draw on: stderr. rich answers a write into a closed pipe (`pa apply 2>&1 |
    head`) by pointing stdout at /dev/null and raising `SystemExit(1)`, a failure to a script. Here the
    BrokenPipeError goes on, for the CLI to end pa as output into any closed pipe (`cli.exit_closed_pipe`: 141).
    Into a pipe rich draws a bar once, as it stops, in the thread that stops it: no refresh thread meets the pipe."""
    from rich.console import Console

    class PipedConsole(Console):
        def on_broken_pipe(self) -> None:
            raise  # the BrokenPipeError that rich's write is handling

    return PipedConsole(stderr=True)
