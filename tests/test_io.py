"""Atomic writes: a disk that refuses one is a clear error naming the file, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fulldisk import limited_writes


def test_a_full_disk_is_an_error_naming_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A full disk mid-run (filter_hist.png in `pa apply`) was a traceback from deep inside PIL."""
    responses = tmp_path / "responses.jsonl"
    row = {"prompt": "How do I pick a lock?", "response": "I can't help with that. " * 40}
    responses.write_text("".join(json.dumps(row) + "\n" for _ in range(60)))
    out = tmp_path / "judged.jsonl"
    result = subprocess.run([sys.executable, "-m", "policyalign", "judge", str(responses), "--out", str(out)],
                            capture_output=True, text=True, preexec_fn=limited_writes, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: {out}: File too large\n    hint: make room on that disk"), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
