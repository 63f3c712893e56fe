"""Atomic writes: a disk that refuses one is a clear error naming the file, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fulldisk import run_python
from policyalign.errors import InvalidInputError
from policyalign.io import append_jsonl, output_dir, read_json, read_jsonl, sync_directory, sync_tree, write_json


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


def test_a_jsonl_line_that_is_not_utf8_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    """A file saved as Latin-1 (`café` as 0xe9) was a UnicodeDecodeError traceback from `pa judge`."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"prompt": "tea", "response": "ok"}\n{"prompt": "caf\xe9", "response": "ok"}\n')
    with pytest.raises(InvalidInputError) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}:line 2: not UTF-8 text: byte 0xe9")
    assert "save the file as UTF-8" in str(info.value)


def test_a_utf8_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    """Windows editors start UTF-8 files with a byte-order mark; the first row was "malformed JSON"."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9", "response": "ok"}\r\n{"prompt": "b", "response": "ok"}\r\n')
    assert read_jsonl(path) == [{"prompt": "café", "response": "ok"}, {"prompt": "b", "response": "ok"}]


def test_a_json_file_that_is_not_utf8_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """A run.json saved as UTF-16 was a UnicodeDecodeError traceback from `pa runs`."""
    path = tmp_path / "run.json"
    path.write_text('{"inputs": {}, "stages": {}}', encoding="utf-16")
    with pytest.raises(InvalidInputError) as info:
        read_json(path)
    assert str(info.value).startswith(f"{path}: not UTF-8 text: byte 0xff at byte 1")


@pytest.mark.parametrize("text", ['[{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]\n',
                                  '[\n  {\n    "prompt": "a",\n    "response": "b"\n  }\n]\n'])
def test_a_json_array_of_rows_is_told_apart_from_json_lines(tmp_path: Path, text: str) -> None:
    """pandas' `to_json(orient="records")` writes one JSON array: the hint said to wrap the value in an
    object, which would not make the file readable."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        read_jsonl(path)
    assert "line 1" in str(info.value) and "this is a JSON array, not JSON Lines" in info.value.problem.hint


def test_a_file_rewritten_in_place_keeps_its_permissions(tmp_path: Path) -> None:
    """Atomic writes go through a 0600 temporary: `pa bump` turned a group-writable pack.yaml (0664) into 0644,
    and an owner-only file would have become world-readable."""
    import os
    import stat

    from policyalign.io import write_text

    for mode in (0o664, 0o600, 0o755):
        path = tmp_path / f"file-{mode:o}"
        path.write_text("old")
        os.chmod(path, mode)
        write_text(path, "new")
        assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == mode
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "fresh", "new")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o644, "a new file is an ordinary one"


def test_an_atomic_write_is_synced_before_its_rename_and_its_directory_after(tmp_path: Path, fsyncs) -> None:  # type: ignore[no-untyped-def]
    """The file was fsynced but not its directory after the rename: a power cut could come back with the old
    run.json, or with none where it was new. Replacing one, and making one, are both durable now."""
    for target in (tmp_path / "run.json", tmp_path / "new" / "eval.json"):
        synced = fsyncs(target)
        write_json(target, {"stages": {}})
        assert not synced.problems()
        synced = fsyncs(target)
        write_json(target, {"stages": {"synthesize": {}}})
        assert not synced.problems()


def test_directories_a_write_creates_are_synced_into_their_parents(tmp_path: Path, fsyncs) -> None:  # type: ignore[no-untyped-def]
    """A write into a new `eval/after/` made the folders with mkdir and synced the file and `after/`, never the
    entries naming `eval` and `after`: after a power cut the folder, file and all, could be gone. So too a
    run directory `output_dir` makes, and a new journal's name in its folder."""
    def synced_directories(write, *places: Path) -> set[Path]:  # type: ignore[no-untyped-def]
        synced = fsyncs(tmp_path / "unused")
        write()
        inodes = {call[0] for call in synced.calls}
        return {place for place in places if (place.stat().st_dev, place.stat().st_ino) not in inodes}

    run = tmp_path / "run"
    run.mkdir()
    assert not synced_directories(lambda: write_json(run / "eval" / "after" / "eval.json", {}), run, run / "eval")
    assert not synced_directories(lambda: output_dir(tmp_path / "runs" / "r1"), tmp_path, tmp_path / "runs")
    assert not synced_directories(lambda: append_jsonl(run / "rows.partial.jsonl", [{"a": 1}]), run)


def test_a_directory_put_in_place_is_synced_whole(tmp_path: Path, fsyncs) -> None:  # type: ignore[no-untyped-def]
    """`sync_tree` before a directory's rename, `sync_directory` of its parent after: each file and directory below it
    reaches the disk before the name does."""
    staged = tmp_path / ".adapter.tmp"
    (staged / "sub").mkdir(parents=True)
    (staged / "weights.bin").write_bytes(b"\1" * 64)
    (staged / "sub" / "notes.txt").write_text("x")
    synced = fsyncs(tmp_path / "adapter")
    sync_tree(staged)
    staged.rename(tmp_path / "adapter")
    sync_directory(tmp_path)
    assert not synced.problems()
