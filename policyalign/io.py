"""Atomic file writes and JSONL reading: the one place runs touch the disk.

Every artifact is written to a temporary name in the same directory, flushed,
fsynced and renamed, and the directory fsynced after the rename, so a crash or a
power cut leaves either the old file or the new one, never half of one nor an
empty one under the new name. A directory put in place by rename (an adapter, a
pulled pack) has its files synced first (`sync_tree`), the same way.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, disk_error


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path`; rename it over `path` only on success.

    A full or read-only disk is a RunError naming `path` (see `errors.disk_error`).
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open writes only ('w' or 'wb')")
    target = Path(path)
    with naming_disk_errors(target), _replacing(target, mode) as handle:
        yield handle


@contextmanager
def naming_disk_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full, read-only or forbidden disk under the block into a RunError naming `path`."""
    try:
        yield
    except OSError as exc:
        error = disk_error(exc, str(path))
        if error is None:
            raise
        raise error from None


@contextmanager
def _replacing(target: Path, mode: str) -> Iterator[Any]:
    make_directories(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _keep_mode(target, tmp)
        os.replace(tmp, target)
        sync_directory(target.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# fsync errors of a filesystem that cannot sync (some network and FUSE mounts, a directory on some):
# the write stands as written, as an unlockable filesystem runs unlocked (`run._try_lock`).
_CANNOT_SYNC = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EBADF)


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync `directory`, so a rename or a new name in it survives a power cut: fsyncing a file makes
    its bytes durable but not the name it was renamed to, and ext4, XFS and others could come back with
    the rename and not the data (a renamed but empty run.json) or with neither. Where the OS cannot
    open a directory (Windows: no O_DIRECTORY) there is nothing to sync."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    _sync(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))


def make_directories(directory: str | os.PathLike[str]) -> None:
    """`mkdir -p`, durably: each directory it creates is synced into its parent (`sync_directory`), so a new
    `eval/after/` and the file written in it do not vanish after a power cut, the file's own sync notwithstanding."""
    target = Path(directory)
    missing = [place for place in (target, *target.parents) if not place.exists()]
    target.mkdir(parents=True, exist_ok=True)
    for place in reversed(missing):  # outermost first, as they were made
        sync_directory(place.parent)


def sync_tree(directory: str | os.PathLike[str]) -> None:
    """fsync every file below `directory` and every directory in it, before `directory` is renamed into
    place: the files a library wrote there (safetensors, save_pretrained, a download) were never synced,
    and a power cut after the rename could leave the adapter with empty weights under its final name."""
    root = Path(directory)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _sync(os.open(path, os.O_RDONLY))
    for path in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        sync_directory(path)
    sync_directory(root)


def _sync(fd: int) -> None:
    """fsync and close `fd`, over a filesystem that cannot sync (`_CANNOT_SYNC`) without a word."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def _keep_mode(target: Path, tmp: str) -> None:
    """The replacement gets the permissions of the file it replaces, else an ordinary file's (mkstemp
    makes 0600): `pa bump` rewrote a group-writable pack.yaml (0664) as 0644."""
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
    except FileNotFoundError:
        make_ordinary(tmp)


def make_ordinary(path: str | os.PathLike[str]) -> None:
    """Give a written artifact the permissions of an ordinary file (0666 less the umask).

    Temporary files and some writers (mkstemp, safetensors) create files as 0600, which would
    keep a run directory shared between users unreadable to all but its writer.
    """
    os.chmod(path, 0o666 & ~_umask())


def make_files_ordinary(directory: str | os.PathLike[str]) -> None:
    """`make_ordinary` for every file below `directory` (a saved adapter or checkpoint)."""
    for path in Path(directory).rglob("*"):
        if path.is_file():
            make_ordinary(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse, as `output_dir` would, a directory a file blocks (it or a parent), without making anything:
    a config file's `out:` is checked when the file is read (`option` then `out in FILE`), before a run
    directory may be made."""
    target = Path(path)
    for place in (target, *target.parents):
        if place.exists():
            if not place.is_dir():
                raise _not_a_directory(target, option)
            return


def _not_a_directory(target: Path, option: str) -> InvalidInputError:
    """The error of a directory a file blocks, naming where it was given: `option` is a flag (`--out`) or a
    config file's key (`out in FILE`)."""
    return InvalidInputError(f"{option}: {target} is not a directory: a file has its name or a parent's",
                             file=str(target), hint=f"give {option} a directory (it is created when missing)")


def output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create the directory a command writes into, before its work: a file already holding the name
    (or a parent's) was a bare FileExistsError traceback, for `pa eval` after every response was generated.
    `option` is where the directory was given, for the error to name (`--to`, `out in FILE`)."""
    target = Path(path)
    try:
        with naming_disk_errors(target):
            make_directories(target)
    except (FileExistsError, NotADirectoryError):
        raise _not_a_directory(target, option) from None
    return target


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows."""
    count = 0
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a journal (a resumable stage's `*.partial.jsonl`), flushed and fsynced, so a
    crash loses at most the rows being written. A line torn by an earlier kill is ended first, so
    the new rows do not join it (`read_journal` skips it)."""
    target = Path(path)
    torn, new = False, not target.exists()
    if target.is_file() and target.stat().st_size:
        with target.open("rb") as existing:
            existing.seek(-1, os.SEEK_END)
            torn = existing.read(1) != b"\n"
    with naming_disk_errors(target), target.open("a", encoding="utf-8") as handle:
        if torn:
            handle.write("\n")
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if new:  # the journal's name, too: a power cut lost a new journal whole, rows synced or not
        with naming_disk_errors(target):
            sync_directory(target.parent)


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of an append-only journal (`append_jsonl`). A line cut short by a kill is
    skipped, not read as the end: later resumes append after it, and their rows must still count.
    (A kill may also split a UTF-8 character, hence errors="replace": that line is skipped, not the file.)"""
    target = Path(path)
    if not target.is_file():
        return []
    rows = []
    for line in target.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's value. Bytes that are not UTF-8 (a run.json or eval.json saved as UTF-16 or Latin-1) are
    an error naming the file: they were a UnicodeDecodeError traceback from `pa runs`."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"not UTF-8 text: byte {exc.object[exc.start]:#04x} at byte {exc.start + 1}", file=str(p),
            hint="save the file as UTF-8 (JSON files are UTF-8)",
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"invalid JSON: {exc.msg}", file=str(p), where=f"line {exc.lineno}",
            hint="fix the JSON syntax at that line",
        ) from None


# A JSON array of rows (pandas' to_json(orient="records"), a pretty-printed export) is not JSON Lines.
JSON_ARRAY_HINT = "this is a JSON array, not JSON Lines: write one object per line, e.g. jq -c '.[]' FILE > FILE.jsonl"


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line is an error naming file and line.
    So is a line that is not UTF-8 (a file saved as Latin-1 or UTF-16 was a UnicodeDecodeError
    traceback); a UTF-8 byte-order mark, as Windows editors write, is skipped."""
    p = Path(path)
    with p.open("rb") as handle:
        for lineno, data in enumerate(handle, start=1):
            line = _utf8_line(p, lineno, data)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                array = lineno == 1 and line.lstrip().startswith("[")  # a pretty-printed JSON array
                raise InvalidInputError(
                    f"malformed JSON line: {exc.msg}", file=str(p), where=f"line {lineno}",
                    hint=JSON_ARRAY_HINT if array else "each line must be one complete JSON object",
                ) from None
            if not isinstance(row, dict):
                array = isinstance(row, list) and bool(row) and all(isinstance(item, dict) for item in row)
                raise InvalidInputError(
                    "each JSONL line must be a JSON object", file=str(p), where=f"line {lineno}",
                    hint=JSON_ARRAY_HINT if array else 'wrap the value in an object, e.g. {"prompt": ...}',
                )
            yield lineno, row


def _utf8_line(path: Path, lineno: int, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"not UTF-8 text: byte {data[exc.start]:#04x} at byte {exc.start + 1} of the line", file=str(path),
            where=f"line {lineno}", hint="save the file as UTF-8 (JSON Lines files are UTF-8)",
        ) from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every object of a JSONL file (see `iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path)]


def sha256_file(path: str | os.PathLike[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:  # type: BinaryIO
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
