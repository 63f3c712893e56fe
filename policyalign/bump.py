"""Bumping a pack's version: the edit `pa index` and `pa validate --all` ask for after a pack changes.

By hand it is three steps, each easy to get wrong: the `version` in pack.yaml, a matching
`## X.Y.Z` entry in CHANGELOG.md (the validator requires one per version), and the packs
beside it whose `extends` range the new version leaves (after a major bump they keep
composing with nothing). pack.yaml is edited in place, so its comments, quoting and layout
stay the author's; the CHANGELOG is written first, so a bump cut short can simply be re-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from .errors import InvalidInputError
from .io import write_bytes
from .pack import changelog_entry
from .pack_input import CHANGELOG, MANIFEST, MAX_MANIFEST_BYTES, MAX_OTHER_BYTES, confined_path
from .semver import Version, is_semver
from .untrusted_data import ManifestLoader

PARTS = ("major", "minor", "patch")


@dataclass(frozen=True)
class BumpResult:
    root: Path
    old: str
    new: str
    changelog_added: bool
    stranded: tuple[str, ...]  # packs beside it whose `extends` range admits the old version but not the new


def next_version(current: Version, part: str) -> Version:
    """The next `part` version, as npm counts: a prerelease bumps to its own release when that is the
    same step (1.1.0-rc.2 minor -> 1.1.0), since the release is what the prerelease was heading for."""
    major, minor, patch = current.release
    pre = bool(current.pre)
    if part == "major":
        return Version(major if pre and minor == patch == 0 else major + 1, 0, 0)
    if part == "minor":
        return Version(major, minor if pre and patch == 0 else minor + 1, 0)
    if part == "patch":
        return Version(major, minor, patch if pre else patch + 1)
    raise InvalidInputError(f"unknown version part {part!r}", hint="use major, minor or patch (or --to VERSION)")


def bump_pack(root: Path, part: str | None = None, *, to: str | None = None,
              notes: Sequence[str] = ()) -> BumpResult:
    """Set the pack at `root` to the next `part` version (or `to`), with a CHANGELOG entry of `notes`."""
    root = Path(root)
    if root.name in ("", ".."):  # `pa bump .` in the pack: its siblings (and INDEX.json) are the real parent's
        root = root.resolve()
    manifest = root / MANIFEST
    text = _read(manifest, MAX_MANIFEST_BYTES, _where_the_pack_is(root))
    name, node = _version_node(manifest, text)
    old = Version.parse(node.value)
    new = _target(old, part, to)
    changelog = root / CHANGELOG
    log = _read(changelog, MAX_OTHER_BYTES, "") if changelog.exists() else ""
    log = log if log.strip() else "# Changelog\n"  # an empty file got its entry under two blank lines, untitled
    added = _changelog_needs_entry(changelog, log, str(new), notes)
    if added:
        write_bytes(changelog, _with_entry(log, str(new), notes).encode("utf-8"))
    quote = node.style if node.style in ("'", '"') else ""
    written = text[node.start_mark.index:node.end_mark.index]
    # A block scalar (`version: >-` and the version on the next line) ends after its line break:
    # keep it, or the next key joins the version's line (`version: 1.0.1foo: ...`).
    tail = written[len(written.rstrip()):]
    write_bytes(manifest, (text[:node.start_mark.index] + f"{quote}{new}{quote}{tail}" + text[node.end_mark.index:])
                .encode("utf-8"))
    return BumpResult(root, str(old), str(new), added, tuple(_stranded(root, name, old, new)))


def _where_the_pack_is(root: Path) -> str:
    """`pa bump medical minor` names a pack the way every other command does; this one edits files,
    so it takes the directory, and says which one was probably meant."""
    guess = Path("packs") / root.name
    if root != guess and (guess / MANIFEST).is_file():
        return f"pa bump takes the pack's directory: `pa bump {guess} ...`"
    return "pa bump takes the pack's directory (the one with pack.yaml)"


def _read(path: Path, limit: int, hint: str) -> str:
    if not path.is_file():
        raise InvalidInputError("not found (or not a file)", file=str(path), hint=hint or f"create {path.name}")
    outside = confined_path(path.parent, path.name)
    if isinstance(outside, str):  # bump wrote what it read back as a plain file: an outside file, copied into the pack
        raise InvalidInputError(outside, file=str(path), hint="replace the symlink with a copy of the file inside the pack")
    if path.stat().st_size > limit:
        raise InvalidInputError(f"file is over the {limit}-byte limit", file=str(path),
                                hint="`pa validate` on the pack says what to shorten")
    try:  # bytes, not read_text: its newline translation rewrote a Windows (CRLF) file with LF line ends throughout
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"not UTF-8 text (byte {exc.start})", file=str(path),
                                hint="save the file as UTF-8") from None


def _version_node(manifest: Path, text: str) -> tuple[str, yaml.ScalarNode]:
    """The pack's name and the YAML node of its `version`, whose marks say exactly which characters to replace."""
    loader = ManifestLoader(text)  # one parse gives both the node and its value (what yaml.load does)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except (yaml.YAMLError, RecursionError) as exc:
        raise InvalidInputError(f"cannot read the manifest: {exc}", file=str(manifest),
                                hint="fix the YAML (`pa validate` on the pack shows every problem)") from None
    finally:
        loader.dispose()
    node = None
    if isinstance(root, yaml.MappingNode):
        node = next((value for key, value in root.value if getattr(key, "value", None) == "version"), None)
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(node, yaml.ScalarNode) or not isinstance(version, str) or not is_semver(version):
        raise InvalidInputError(f"`version` is {version!r}, not a semantic version", file=str(manifest),
                                where="/version", hint="set `version: 1.0.0` (MAJOR.MINOR.PATCH) and bump from there")
    return str(data.get("name", "")), node


def _target(old: Version, part: str | None, to: str | None) -> Version:
    if (part is None) == (to is None):
        raise InvalidInputError("give either a part to bump (major, minor or patch) or --to VERSION",
                                hint="e.g. `pa bump packs/NAME minor --note 'what changed'`")
    if to is None:
        return next_version(old, str(part))
    if not is_semver(to):
        raise InvalidInputError(f"--to {to!r} is not a semantic version", hint="e.g. --to 1.2.0 or --to 2.0.0-rc.1")
    new = Version.parse(to)
    if new <= old:
        same = " (build metadata, after `+`, takes no part in the order: it does not make a new version)" \
            if new == old and new.build != old.build else ""
        raise InvalidInputError(f"--to {new} is not above the current version {old}",
                                hint=f"a new version must sort above every released one{same}")
    return new


def _changelog_needs_entry(path: Path, text: str, version: str, notes: Sequence[str]) -> bool:
    """Whether to add an entry: not when one is there, unless it lacks the notes asked for."""
    entry = changelog_entry(text, version)
    if entry is None:
        if not any(n.strip() for n in notes):
            raise InvalidInputError(f"CHANGELOG.md has no entry for {version}", file=str(path),
                                    hint="say what changed with --note TEXT (repeatable), or write the "
                                         f"`## {version}` entry first")
        return True
    if all(n.strip() in entry for n in notes):
        return False  # written already (by hand, or by a bump cut short before pack.yaml)
    raise InvalidInputError(f"CHANGELOG.md already has an entry for {version} without these notes", file=str(path),
                            hint="add them to that entry by hand, or run again without --note")


def _with_entry(text: str, version: str, notes: Sequence[str]) -> str:
    """`text` with a `## version` entry above the newest one (after the title), notes as bullets, its lines
    ended as the file's are (CRLF in a file written on Windows)."""
    newline = "\r\n" if "\r\n" in text else "\n"
    bullets = "".join("- " + n.strip().replace("\n", "\n  ") + "\n" for n in notes if n.strip())
    entry = f"## {version}\n\n{bullets}\n".replace("\n", newline)
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.startswith("##")), None)
    if first is None:
        return text.rstrip("\r\n") + newline * 2 + entry
    return "".join(lines[:first]) + entry + "".join(lines[first:])


def _stranded(root: Path, name: str, old: Version, new: Version) -> list[str]:
    """Packs in `root`'s directory whose `extends` picked `old` of this pack and would not pick `new`."""
    from .registry import Registry, version_range
    from .scaffold import default_range

    found = []
    for location in Registry([root.parent]).discover():
        if location.path.resolve() == root.resolve():
            continue
        for spec in location.extends:
            if spec.partition("@")[0] != name:
                continue
            try:
                accepted = version_range(spec)
            except InvalidInputError:
                continue  # validation reports a bad range
            if old in accepted and new not in accepted:
                found.append(f"{location.path} extends {spec}, which does not include {new}: change it to "
                             f"{name}@{default_range(str(new))} if it keeps up, and bump {location.name} too")
    return found
