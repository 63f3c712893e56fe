"""The progress bar (policyalign/progress.py) on a terminal that goes away."""

from __future__ import annotations

import os
import pty
import sys
from contextlib import suppress

import pytest

from policyalign.progress import progress_bar


def test_a_stop_after_the_terminal_closed_stays_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the terminal of a `pa apply` in its filter stage (SIGHUP, which stops `pa` as Ctrl-C does)
    ended it with exit 1 and the stage "failed": the progress bar's last frame, written to the terminal
    that was gone, raised OSError (EIO) in place of the stop."""
    main, tty = pty.openpty()
    stderr = os.fdopen(tty, "w")
    monkeypatch.setattr(sys, "stderr", stderr)
    try:
        with pytest.raises(KeyboardInterrupt):
            with progress_bar(True, 3, "scoring") as advance:
                advance(1)
                os.close(main)  # the terminal goes away
                raise KeyboardInterrupt
    finally:
        with suppress(OSError):  # its buffer may hold what could not be written
            stderr.close()
