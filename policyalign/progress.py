"""The one progress bar: rich, on stderr, so stdout stays clean for results and JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any


def say_resuming(done: int, total: int, what: str, source: object) -> None:
    """The one line on stderr that says a stage picks up work a stopped run saved (`pa eval`'s responses, a judge's
    verdicts, `pa filter`'s scores), so a resumed run is not taken for a fresh one: "resuming: N of M WHAT from FILE"."""
    import sys

    print(f"resuming: {done} of {total} {what} from {source}", file=sys.stderr)


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


def piped_console(closed: Callable[[], Any] | None = None, **options: Any) -> Any:
    """A rich Console (`options` are rich's) that leaves a write into a closed pipe to pa: rich's own answer, pointing
    stdout at /dev/null and raising `SystemExit(1)`, is a failure to a script (`pa list | head -1`). `closed` is
    called instead, the console quiet from then on (the CLI's `exit_closed_pipe`: 141); without it the
    BrokenPipeError goes on, for the CLI to end pa the same way. The one such class, for stdout's console
    (`cli.common.console`) and stderr's (`stderr_console`); rich loads here, only for what prints with it."""
    from rich.console import Console

    class PipedConsole(Console):
        def on_broken_pipe(self) -> None:
            if closed is None:
                raise  # the BrokenPipeError that rich's write is handling
            self.quiet = True
            closed()

    return PipedConsole(**options)


def stderr_console() -> Any:
    """The rich Console progress bars draw on: stderr. A write into a closed pipe (`pa apply 2>&1 | head`) raises
    its BrokenPipeError (`piped_console`), for the CLI to end pa as output into any closed pipe
    (`cli.exit_closed_pipe`: 141). Into a pipe rich draws a bar once, as it stops, in the thread that stops it: no
    refresh thread meets the pipe."""
    return piped_console(stderr=True)
