"""packs/INDEX.json: the published list of packs, and the checks that keep it honest.

The index records each pack's version, its own files' digest and its composed
digest. `pa validate --all` compares the tree with it: changed files, or a changed
parent, under an unchanged version mean a forgotten version bump (which `pa index`
refuses to record, as it refuses a version that went down); any other difference
means the index is stale and `pa index` must be re-run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Problem
from .io import write_json
from .semver import Version, is_semver
from .templates import text_problem

if TYPE_CHECKING:
    from .pack import Pack

INDEX_VERSION = 1


def index_entry(pack: "Pack") -> dict[str, Any]:
    return {
        "name": pack.name, "version": pack.version, "title": pack.title, "path": pack.root.name,
        "extends": list(pack.extends), "categories": len(pack.categories),
        "files_digest": pack.files_digest, "digest": pack.digest,
    }


def build_index(packs: list["Pack"]) -> dict[str, Any]:
    entries = sorted((index_entry(p) for p in packs), key=lambda e: (e["name"], e["version"]))
    return {"index_version": INDEX_VERSION, "packs": entries}


def write_index(path: Path, packs: list["Pack"]) -> dict[str, Any]:
    index = build_index(packs)
    write_json(path, index)
    return index


def read_index(path: Path) -> dict[str, Any] | None:
    """The parsed index, None when absent; an unreadable one comes back with `corrupt` set to why."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        return {"index_version": INDEX_VERSION, "packs": [], "corrupt": f"packs index is not UTF-8 text ({exc.reason} at byte {exc.start})"}
    except json.JSONDecodeError as exc:
        return {"index_version": INDEX_VERSION, "packs": [], "corrupt": f"packs index is not valid JSON ({exc.msg} at line {exc.lineno})"}
    except RecursionError:
        return {"index_version": INDEX_VERSION, "packs": [], "corrupt": "packs index is not valid JSON (nested too deeply)"}
    return data if isinstance(data, dict) else {"packs": [], "corrupt": "packs index is not a JSON object"}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _shape_problems(rel: str, index: dict[str, Any]) -> list[Problem]:
    """Where the index is not a list of entries with string name and version (all at once)."""
    fix = "run `pa index` to rewrite it"
    packs = index.get("packs")
    if not isinstance(packs, list):
        found = "missing" if "packs" not in index else f"{_json_kind(packs)}, not a list"
        return [Problem(rel, "/packs", f"packs index is corrupt: `packs` is {found}", fix)]
    problems: list[Problem] = []
    for i, entry in enumerate(packs):
        if not isinstance(entry, dict):
            problems.append(Problem(rel, f"/packs/{i}", f"packs index is corrupt: entry is {_json_kind(entry)}, "
                                                        "not an object", fix))
            continue
        for key in ("name", "version"):
            if not isinstance(entry.get(key), str):
                found = "missing" if key not in entry else f"{_json_kind(entry[key])}, not a string"
                problems.append(Problem(rel, f"/packs/{i}/{key}", f"packs index is corrupt: `{key}` is {found}", fix))
            elif problem := text_problem(entry[key]):
                # every other problem names an entry by name@version: an ESC ]0;... BEL in an edited index's
                # name went raw to the terminal of whoever ran `pa validate --all`
                problems.append(Problem(rel, f"/packs/{i}/{key}", f"packs index is corrupt: `{key}` {problem[1]}", fix))
    return problems


def index_problems(path: Path, packs: list["Pack"]) -> list[Problem]:
    """Differences between the packs on disk and INDEX.json, each with its fix."""
    rel = str(path)
    index = read_index(path)
    if index is None:
        return [Problem(rel, "", "packs index is missing", "run `pa index` and commit packs/INDEX.json")]
    if index.get("corrupt"):
        return [Problem(rel, "", str(index["corrupt"]), "run `pa index` to rewrite it")]
    shape = _shape_problems(rel, index)
    if shape:
        return shape
    recorded = {(e["name"], e["version"]): e for e in index["packs"]}
    by_name = {e.get("name"): e for e in recorded.values()}
    problems: list[Problem] = []
    for pack in packs:
        problems += _pack_vs_index(rel, index, pack, by_name.get(pack.name))
    on_disk = {(p.name, p.version) for p in packs}
    # 1.0.0+a changed and renamed 1.0.0+b: the unbumped-content problem names it; "run `pa index` to drop
    # 1.0.0+a" would send the user to a command that refuses
    renamed = {(p.name, e["version"]) for p in packs if (e := recorded_entry(index, p)) is not None
               and e.get("files_digest") != p.files_digest}
    for key in recorded:
        if key not in on_disk | renamed:
            problems.append(Problem(rel, f"/packs ({key[0]}@{key[1]})", "index lists a pack that is not on disk",
                                    "run `pa index` to drop it"))
    return problems or _drift_problems(rel, index, build_index(packs))


def _drift_problems(rel: str, index: dict[str, Any], expected: dict[str, Any]) -> list[Problem]:
    """Whatever else differs from what `pa index` would write: a hand-edited title, extends or category
    count, an entry listed twice, an unknown field, another index_version or order. The index is what
    is published, so every field must be the one the packs give."""
    fix = "run `pa index` and commit packs/INDEX.json (never edit it by hand)"
    problems: list[Problem] = []
    if index.get("index_version") != expected["index_version"]:
        problems.append(Problem(rel, "/index_version", f"index_version is {index.get('index_version')!r}, "
                                                        f"`pa index` writes {expected['index_version']}", fix))
    problems += [Problem(rel, f"/{key}", f"unknown field {key!r}", fix) for key in index if key not in expected]
    wanted = {(e["name"], e["version"]): e for e in expected["packs"]}
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(index["packs"]):
        key = (entry["name"], entry["version"])
        where = f"/packs/{i} ({key[0]}@{key[1]})"
        if key in seen:
            problems.append(Problem(rel, where, "pack listed twice", fix))
            continue
        seen.add(key)
        problems += [Problem(rel, f"{where}/{field}", _field_drift(entry, wanted[key], field), fix)
                     for field in sorted(set(entry) | set(wanted[key])) if entry.get(field) != wanted[key].get(field)]
    if not problems and index != expected:
        problems.append(Problem(rel, "/packs", "entries are not in the order `pa index` writes", fix))
    return problems


def _field_drift(entry: dict[str, Any], wanted: dict[str, Any], field: str) -> str:
    if field not in wanted:
        return f"unknown field {field!r}"
    if field not in entry:
        return f"field is missing; the pack gives {wanted[field]!r}"
    return f"records {entry[field]!r}, the pack gives {wanted[field]!r}"


def unrecordable(path: Path, packs: list["Pack"]) -> list[Problem]:
    """What `pa index` refuses to record: a version below the one INDEX.json has, and files changed under a
    version it already records (rewriting that entry would make `pa validate --all` pass on the very
    change it exists to catch, and publish two contents as one version)."""
    index = read_index(path)
    if index is None or index.get("corrupt") or _shape_problems(str(path), index):
        return []
    entries = [(p, recorded_entry(index, p)) for p in packs]
    changed = [_unbumped(p, e) for p, e in entries if e is not None and e.get("files_digest") not in (None, p.files_digest)]
    moved = [_unbumped_parents(index, p) for p, e in entries if e is not None and e.get("files_digest") == p.files_digest
             and e.get("digest") not in (None, p.digest)]
    return _downgrades(index, packs) + changed + moved


def recorded_entry(index: dict[str, Any], pack: "Pack") -> dict[str, Any] | None:
    """The index entry of `pack`'s version: the same version string, or one equal in SemVer precedence.
    Build metadata takes no part in it, so 1.0.0+b is the version 1.0.0+a is: looked up by the string,
    a pack changed under 1.0.0+a and renamed 1.0.0+b passed as a new version, in `pa index` and
    `pa validate --all` alike."""
    same_name = [e for e in index["packs"] if e["name"] == pack.name]
    exact = next((e for e in same_name if e["version"] == pack.version), None)
    if exact is not None or not is_semver(pack.version):
        return exact
    version = Version.parse(pack.version)
    return next((e for e in same_name if is_semver(e["version"]) and Version.parse(e["version"]) == version), None)


def _version_place(pack: "Pack") -> str:
    """`/version (line N)`, as the loader places a pack.yaml problem: the index's problems said `/version` alone."""
    from .pack_input import manifest_place

    return manifest_place("/version", pack.manifest_lines)


def _unbumped(pack: "Pack", entry: dict[str, Any] | None = None) -> Problem:
    recorded = (entry or {}).get("version", pack.version)
    still = (f"is still {pack.version}" if recorded == pack.version else
             f"{pack.version} is the version the index has as {recorded} (build metadata, after `+`, does not make a new version)")
    return Problem(str(pack.root / "pack.yaml"), _version_place(pack),
                   f"content of {pack.name} changed but its version {still}",
                   f"`pa bump {pack.root} patch|minor|major --note 'what changed'` (the version in pack.yaml and "
                   "its CHANGELOG.md entry), then `pa index`")


def _unbumped_parents(index: dict[str, Any], pack: "Pack") -> Problem:
    """The composed content of `pack` changed under its version because a pack it extends did. "run `pa
    index`" rewrote the entry: one name@version recorded with two digests, and a run or adapter of the child
    no longer telling which parent it was made from. Names each ancestor that is not what the index has."""
    moved = _moved_ancestors(index, pack)
    why = f"a pack it extends changed: {'; '.join(moved)}" if moved else "a pack it extends changed"
    note = ", ".join(a.split(" ")[0] for a in moved) or "its parents"
    return Problem(str(pack.root / "pack.yaml"), _version_place(pack),
                   f"composed content of {pack.name} changed but its version is still {pack.version}: {why}",
                   f"`pa bump {pack.root} patch --note 'rebuilt on {note}'` (a child's version names its parents' "
                   "content too), then `pa index`")


def _moved_ancestors(index: dict[str, Any], pack: "Pack") -> list[str]:
    """`general@1.1.0 (the index has general@1.0.0)` for each ancestor whose digest the index does not have."""
    moved = []
    for ancestor in pack.ancestry()[:-1]:
        entry = recorded_entry(index, ancestor)
        if entry is not None and entry.get("digest") == ancestor.digest:
            continue
        had = sorted({e["version"] for e in index["packs"] if e["name"] == ancestor.name})
        then = (f"its content differs from the index's {ancestor.ref}" if entry is not None else
                f"the index has {', '.join(f'{ancestor.name}@{v}' for v in had)}" if had else "not in the index")
        moved.append(f"{ancestor.ref} ({then})")
    return moved


def _downgrades(index: dict[str, Any], packs: list["Pack"]) -> list[Problem]:
    """Packs whose version is below the one the (readable) index has."""
    newest: dict[str, str] = {}
    for entry in index["packs"]:
        if is_semver(entry["version"]) and not _went_down(newest.get(entry["name"], entry["version"]), entry["version"]):
            newest[entry["name"]] = entry["version"]
    return [_downgrade(p, newest[p.name]) for p in packs if p.name in newest and _went_down(newest[p.name], p.version)]


def _downgrade(pack: "Pack", recorded: str) -> Problem:
    return Problem(str(pack.root / "pack.yaml"), _version_place(pack),
                   f"version went down: the index has {pack.name}@{recorded}, the pack is now {pack.version}",
                   f"versions only go up: use a version above {recorded} (and its CHANGELOG.md entry), then run `pa index`")


def _went_down(recorded: str, now: str) -> bool:
    """Whether `now` sorts below the indexed version (packs pinned with `^` would stop matching, or
    match an older line); a recorded version that is not semver cannot be compared."""
    return is_semver(recorded) and is_semver(now) and Version.parse(now) < Version.parse(recorded)


def _pack_vs_index(rel: str, index: dict[str, Any], pack: "Pack", same_name: dict[str, Any] | None) -> list[Problem]:
    where, entry = f"/packs ({pack.ref})", recorded_entry(index, pack)
    if entry is None:
        if same_name and _went_down(same_name["version"], pack.version):
            return [_downgrade(pack, same_name["version"])]
        message = (f"index has {pack.name}@{same_name.get('version')}, the pack is now {pack.version}"
                   if same_name else f"{pack.ref} is not in the index")
        return [Problem(rel, where, message, "run `pa index` and commit packs/INDEX.json")]
    if entry.get("files_digest") != pack.files_digest:
        return [_unbumped(pack, entry)]
    if entry.get("digest") not in (None, pack.digest):  # a missing one is a hand edit `_drift_problems` names
        return [_unbumped_parents(index, pack)]
    return []
