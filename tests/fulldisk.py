"""A child process whose disk is "full": each file may grow to LIMIT bytes (`ulimit -f`), and writes
past it fail with EFBIG, as writes to a full disk fail with ENOSPC. Real writes, no mocks, and no
mount or root needed."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

LIMIT = 20_000


def limited_writes() -> None:
    """`preexec_fn` for subprocess: the file-size limit, and SIGXFSZ ignored so the write fails instead."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def run_python(*args: str, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    """`python ARGS` in a child whose disk is full past LIMIT bytes a file, its output captured."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, preexec_fn=limited_writes,
                          timeout=timeout)


def run_error(setup: str, call: str, path: object) -> str:
    """Run `setup`, then `call` (with `Path(sys.argv[1])` being `path`) in a full-disk child: the RunError
    it raised, as printed."""
    code = (f"import sys\nfrom pathlib import Path\nfrom policyalign.errors import RunError\n{setup}\n"
            f"try:\n    {call}\nexcept RunError as exc:\n    print(exc)\n")
    result = run_python("-c", code, str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout
