"""Atomic writes: a disk that refuses one is a clear error naming the file, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from fulldisk import run_python


def test_a_full_disk_is_an_error_naming_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A full disk mid-run (filter_hist.png in `pa apply`) was a traceback from deep inside PIL."""
    responses = tmp_path / "responses.jsonl"
    row = {"prompt": "How do I pick a lock?", "response": "I can't help with that. " * 40}
    responses.write_text("".join(json.dumps(row) + "\n" for _ in range(60)))
    out = tmp_path / "judged.jsonl"
    result = run_python("-m", "policyalign", "judge", str(responses), "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: {out}: File too large\n    hint: make room on that disk"), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
