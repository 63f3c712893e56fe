"""What the tests of several evaluation modules share: the shipped `general` pack, and a `pa`
command killed (kill -9) part way through writing its journal, for the resume tests of
`pa eval` and `pa judge`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from policyalign.io import read_journal
from policyalign.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


def general_pack():  # type: ignore[no-untyped-def]
    return Registry([ROOT / "packs"]).load(str(ROOT / "packs" / "general"))


def pa_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def killed_once_journaled(command: list[str], journal: Path, lines: int, env: dict[str, str] | None = None) -> int:
    """Run a `pa` command and kill -9 it once its journal holds more than `lines` lines; the rows
    the journal kept past its header (a line the kill tore is not one)."""
    import signal
    import time

    proc = subprocess.Popen(command, env=env or pa_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if journal.is_file() and len(journal.read_text().splitlines()) > lines:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"{' '.join(command[3:5])} finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return len(read_journal(journal)) - 1
