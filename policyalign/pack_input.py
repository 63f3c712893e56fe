"""A pack's files as untrusted input: their names, size bounds, confined paths and bounded reads.

Every file of a pack directory is read into memory and may come from anyone, so each read here
is confined to the pack, bounded in size and checked as UTF-8 text before the loader sees it.
The `Collector` gathers the problems found on the way (here, in the eval items and in the loader)
so validation reports all of them at once. `pa pack push/pull` use the same file rule and bounds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import Problem, did_you_mean
from .hub import case_clashes, escaped_name, is_safe_relpath, unportable_part
from .templates import LONE_SURROGATE, text_problem

MANIFEST = "pack.yaml"
CHANGELOG = "CHANGELOG.md"

# Size bounds: packs are untrusted, and every file is read into memory.
MAX_MANIFEST_BYTES = 512 * 1024
MAX_POLICY_BYTES = 128 * 1024
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_EVAL_BYTES = 8 * 1024 * 1024
MAX_OTHER_BYTES = 2 * 1024 * 1024
MAX_PACK_BYTES = 32 * 1024 * 1024
MAX_PACK_FILES = 2000
MAX_EVAL_ITEMS = 20000
MAX_PROBLEMS = 1000  # problems kept for one pack: an 8 MB eval set of junk lines is millions of them


def manifest_place(pointer: str, lines: dict[str, int]) -> str:
    """A manifest problem's place: its JSON pointer, and the line it is on where the loader recorded one."""
    return pointer + (f" (line {lines[pointer]})" if pointer in lines else "")


def undecodable_place(exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8, as a line a contributor can open: `byte 517` alone sent them counting bytes
    (a Latin-1 `é` pasted into policy.md), and pack.yaml's problem gave no place at all."""
    data = exc.object if isinstance(exc.object, bytes) else bytes(exc.object)
    lines_before = data.count(b"\n", 0, exc.start)
    return f"line {lines_before + 1}"


def file_cap(rel: str) -> int:
    """The most bytes one pack file may have, by its kind (the relative POSIX path): what `pa pack pull`
    downloads at most, and what `collect_files` holds every file to, referenced or not."""
    if rel == MANIFEST:
        return MAX_MANIFEST_BYTES
    return MAX_EVAL_BYTES if rel.endswith(".jsonl") else MAX_OTHER_BYTES


class Collector:
    """Accumulates problems for one pack so validation reports all of them at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str, str]] = set()  # (file, where, message) of every problem kept
        self.overflowed = False  # more than MAX_PROBLEMS: the rest are dropped (readers may stop early)
        # Relative POSIX paths of the files the digest covers (set by `collect_files`).
        self.digested: set[str] | None = None
        self.read = 0  # bytes `read_bounded` has read: at most MAX_PACK_BYTES in all
        # The line of each JSON pointer in pack.yaml (set by `pack.load_manifest`), so that every manifest
        # problem placed by its pointer names its line too: half the checks gave `/version` or `/policy`
        # alone, and a contributor had to count their way through the YAML to it.
        self.manifest_lines: dict[str, int] = {}

    def shown(self, path: Path | str) -> str:
        """`path` as a problem prints it: as the pack's directory was given (`packs/foo/pack.yaml`, from where
        the user typed it), so the user can open it. Shown relative to the pack's parent directory, it was
        `foo/pack.yaml`, a file `pa validate packs/foo` or `pa validate --all` run from the repository root
        has not got, and one that did not say which of two `foo`s on the search path was meant. Escaped
        when it holds control characters: a pack's directory named `x\x1b]0;...` went as is to the terminal
        of whoever ran `pa validate --all`."""
        name = str(path)
        return ascii(name)[1:-1] if text_problem(name) else name

    def add(self, file: Path | str, where: str, message: str, hint: str = "", *, note: bool = False) -> None:
        """Keep a problem (or a note, `Problem.note`), once (an oversized eval set is found by `collect_files` and
        by its reader).

        Looked up in a set, and no more than MAX_PROBLEMS kept: scanning the list made a 20,000-line
        eval set of junk take two minutes to report, and an 8 MB one (4 million lines) practically forever."""
        if self.overflowed:
            return
        name = self.shown(self.root / file)  # an absolute `file` stays as it is
        if str(file) == MANIFEST and where.startswith("/"):
            where = manifest_place(where, self.manifest_lines)
        key = (name, where, message)
        if key in self._seen:
            return
        if len(self._seen) >= MAX_PROBLEMS:
            self.overflowed = True
            self.problems.append(Problem(file=self.shown(self.root), where="", message=f"more than {MAX_PROBLEMS} "
                                         "problems: the rest are not listed", hint="fix these and validate again"))
            return
        self._seen.add(key)
        self.problems.append(Problem(file=name, where=where, message=message, hint=hint, note=note))


def confined_path(root: Path, rel: str) -> Path | str:
    """Resolve `rel` inside `root`; return an explanation string if it escapes or is unsafe."""
    if not isinstance(rel, str) or not rel:
        return "path must be a non-empty string"
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return "absolute paths are not allowed"
    if ".." in Path(rel).parts:
        return "'..' is not allowed: paths must stay inside the pack"
    problem = text_problem(rel)
    if problem:  # a NUL or a lone surrogate made Path.resolve raise: a traceback from `pa validate`
        return f"path {problem[1]}"
    target = root / rel
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError):
        return "path cannot be resolved (symlink loop?)"
    if not resolved.is_relative_to(root.resolve()):
        return "path leads outside the pack (through a symlink)"
    return target


def missing_file_hint(col: Collector, rel: str) -> str:
    """The fix for a referenced file that is not there: the pack's file whose path is close to `rel`, if any.
    "create the file or fix the path" alone left `policy: Policy.md` (the file is policy.md) or
    `templates/plain.j2` (it is plain.jinja) to be spotted by eye; the close name says which it is."""
    close = did_you_mean(rel, sorted(col.digested or ()))
    return f"{close} Fix the path, or create the file" if close else "create the file or fix the path"


def read_bounded(col: Collector, rel: str, limit: int, where: str, too_big: str = "split or shorten the file") -> str | None:
    """Read a referenced pack file as UTF-8, reporting escape, absence, size and encoding problems; `too_big` is
    the fix for a file over `limit` (a policy cannot be split: it is one system message)."""
    target = confined_path(col.root, rel)
    if isinstance(target, str):
        col.add(MANIFEST, where, f"{rel!r}: {target}", "use a relative path to a file inside the pack directory")
        return None
    if not target.is_file():
        if target.is_dir():  # "does not exist" sent the user looking for a path that is right there
            col.add(MANIFEST, where, f"referenced file {rel!r} is a directory, and a file is needed here",
                    "give the path of the file itself (e.g. one inside that directory), not of a directory")
        elif target.exists():  # a FIFO or device: `collect_files` names it too
            col.add(MANIFEST, where, f"referenced file {rel!r} is not a regular file", "make it a plain file in the pack")
        else:
            col.add(MANIFEST, where, f"referenced file {rel!r} does not exist", missing_file_hint(col, rel))
        return None
    if col.digested is not None and target.relative_to(col.root).as_posix() not in col.digested:
        # The digest pins the pack's content; a file it skips could change without changing the digest.
        col.add(MANIFEST, where, f"referenced file {rel!r} is not covered by the pack digest "
                "(hidden files and directories, __pycache__, editor backups ending in '~' or wrapped in '#', and "
                "files under a symlinked directory are skipped)",
                "give the file an ordinary name in an ordinary directory of the pack (no leading '.', no directory symlink)")
        return None
    size = target.stat().st_size
    if size > limit:
        col.add(rel, "", f"file is {size} bytes, over the {limit}-byte limit", too_big)
        return None
    if col.read + size > MAX_PACK_BYTES:
        # Sixteen eval sets under 8 MiB each are 128 MiB: all were read and parsed (70 s) after the pack was
        # already reported over its 32 MiB in all.
        col.add(rel, "", f"not read: the pack's files take more than {MAX_PACK_BYTES} bytes in all",
                "shrink the eval sets (the pack's total size is reported too)")
        return None
    col.read += size
    try:
        # utf-8-sig: a byte-order mark (Windows editors add one) would otherwise open the teacher's
        # system message and every synthesis prompt, and make line 1 of an eval set malformed JSON.
        text = target.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        col.add(rel, undecodable_place(exc), "file is not valid UTF-8", "save the file as UTF-8")
        return None
    problem = text_problem(text)
    if problem:
        col.add(rel, f"line {text.count(chr(10), 0, problem[0]) + 1}", f"file {problem[1]}", problem[2])
        return None
    return text


def not_pack_content(name: str) -> bool:
    """Hidden entries, caches and editor backups (`pack.yaml~`, Emacs `#policy.md#`): left in a
    working copy, they changed the digest, so a local `pa validate --all` called INDEX.json stale
    while CI's clean clone agreed with it."""
    return name.startswith(".") or name == "__pycache__" or name.endswith("~") or (
        len(name) > 1 and name.startswith("#") and name.endswith("#"))


def collect_files(col: Collector) -> list[Path]:
    """Every regular file of the pack (hidden entries skipped), checking links and bounds."""
    files: list[Path] = []
    total = 0
    root = col.root.resolve()
    try:
        paths = sorted(col.root.rglob("*"))
    except OSError as exc:  # nested directories past the system's path length: a traceback from pathlib
        col.add(".", "", f"the pack's files cannot be listed: {exc.strerror or exc}",
                "flatten the pack's directories and shorten their names")
        return []  # `digested` stays None: the referenced files are still read and checked
    for path in paths:
        rel = path.relative_to(col.root)
        if any(not_pack_content(part) for part in rel.parts):
            continue
        if LONE_SURROGATE.search(str(rel)):  # os.fsdecode's surrogateescape: the name's bytes are not UTF-8
            col.add(os.fsencode(rel).decode("utf-8", "backslashreplace"), "", "file name is not valid UTF-8",
                    "rename the file (pack file names are UTF-8, as in git)")
            continue
        if text_problem(str(rel)):  # an escape sequence in a name went to the terminal of whoever validated it
            col.add(ascii(str(rel))[1:-1], "", "file name holds a control character (a terminal escape?)",
                    "rename the file")
            continue
        if not is_safe_relpath(rel.as_posix()):  # `a\b.txt`, `c:notes.txt`: pushed, then refused by every pull
            col.add(str(rel), "", "file name has a backslash or starts with a drive letter (`c:`), which "
                    "`pa pack pull` refuses as unsafe on Windows", "rename the file")
            continue
        if reason := unportable_part(rel.as_posix()):  # `con.md`, `notes.`: pushed, then refused by every pull
            col.add(escaped_name(str(rel)), "", f"{reason}, so `pa pack pull` refuses a pack holding it (it cannot be installed "
                    "on every system)", "rename the file")
            continue
        if path.is_symlink():
            try:
                target = path.resolve()
            except (OSError, RuntimeError):
                col.add(str(rel), "", "symlink cannot be resolved", "remove the symlink")
                continue
            if not target.is_relative_to(root):
                # the link's target is the pack's text too: a target holding ESC ]0;... BEL retitled the terminal
                # A linked directory (`templates -> ../shared`) was told to become "a copy of the file".
                what = "directory" if target.is_dir() else "file"
                col.add(str(rel), "", f"symlink points outside the pack ({col.shown(target)})",
                        f"replace the symlink with a copy of the {what} inside the pack")
                continue
        if path.is_dir():
            continue
        if not path.is_file():
            col.add(str(rel), "", "not a regular file", "packs may contain only regular files and directories")
            continue
        size = path.stat().st_size
        if size > file_cap(rel.as_posix()):  # unreferenced files too: `pa pack pull` refuses the pack for any
            col.add(str(rel), "", f"file is {size} bytes, over the {file_cap(rel.as_posix())}-byte limit",
                    "split or shorten the file, or remove it from the pack" + ("" if rel.suffix == ".jsonl" or rel.name == MANIFEST
                    else f" (an eval set: name it .jsonl, which may have up to {MAX_EVAL_BYTES} bytes)"))
        total += size
        files.append(path)
    if len(files) > MAX_PACK_FILES:
        col.add(".", "", f"pack has {len(files)} files, over the limit of {MAX_PACK_FILES}", "remove unused files")
    if total > MAX_PACK_BYTES:
        col.add(".", "", f"pack is {total} bytes, over the limit of {MAX_PACK_BYTES}", "shrink the eval sets")
    col.digested = {path.relative_to(col.root).as_posix() for path in files}
    for group in case_clashes(col.digested):  # `A.md` and `a.md`: one file on macOS and Windows, refused by every pull
        col.add(group[-1], "", "differs only in case from " + ", ".join(group[:-1]) + ", so `pa pack pull` refuses "
                "the pack (both cannot be installed on every system)", "rename one of them")
    return files
