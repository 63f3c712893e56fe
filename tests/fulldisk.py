"""A child process whose disk is "full": each file may grow to LIMIT bytes (`ulimit -f`), and writes
past it fail with EFBIG, as writes to a full disk fail with ENOSPC. Real writes, no mocks, and no
mount or root needed."""

from __future__ import annotations

import resource
import signal

LIMIT = 20_000


def limited_writes() -> None:
    """`preexec_fn` for subprocess: the file-size limit, and SIGXFSZ ignored so the write fails instead."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
