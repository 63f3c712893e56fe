"""Publish policy packs on the Hub and install them from it.

`push_pack` / `pull_pack` publish a pack as a dataset repo tagged `v<version>` and install
one: a downloaded pack is untrusted, so it is fetched with size caps, confined to its
directory, hash-checked, validated by every loader check, and only then moved into place.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import card
from .errors import HubError, InvalidInputError, PackError, Problem
from .hub import (DEFAULT_BRANCH, MAX_CARD_BYTES, TAKEN_TAG_HINTS, PushResult, case_clashes, check_repo_id,
                  commit_and_tag, endpoint, escaped_name, hub_api, hub_call, is_safe_relpath, prepare_repo,
                  refuse_several_builds, remote_files, repo_url, push_tag, resolve_token, split_spec, swap_in,
                  unportable_part)
from .io import sha256_file
from .pack_input import file_cap
from .scaffold import draft_leftovers
from .semver import Version, is_semver, parse_range

if TYPE_CHECKING:
    from .pack import Pack
    from .registry import Registry

PACK_DIR = "pack"
PACK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PackPullResult:
    name: str
    version: str
    digest: str
    path: Path
    repo_id: str
    revision: str
    commit: str
    warnings: tuple[str, ...] = ()
    replaced: str = ""  # name@version of the other version the install directory held, now gone


# --------------------------------------------------------------------------- packs: push


def pack_files(root: Path) -> list[Path]:
    """The files a pack consists of, by the loader's rule (`pack_input.not_pack_content`)."""
    from .pack_input import not_pack_content

    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(not_pack_content(part) for part in rel.parts):
            continue
        if path.is_file():
            files.append(path)
    return files


def push_pack(path: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
              token: str | None = None, registry: "Registry | None" = None,
              on_warning: Callable[[str], None] = lambda text: None) -> PushResult:
    """Validate a pack, publish it as a dataset repo (files under pack/), tag it `v<version>`.

    Each warning (`validation.pack_warnings`: a file pack.yaml does not list, published all the same) goes to
    `on_warning` before anything is sent, while the user can still stop the push, and is in the result too."""
    from .pack import files_digest, load_pack
    from .validation import pack_warnings

    pack = load_pack(Path(path), registry=registry)
    if leftovers := draft_leftovers(pack):
        raise InvalidInputError(f"pack {pack.ref} is still a `pa new` draft: {len(leftovers)} piece(s) of stand-in "
                                f"text left, first {leftovers[0]}",
                                hint=f"replace them (`pa validate {pack.root}` lists every one), then push")
    check_repo_id(repo_id)
    warnings = tuple(str(problem) for problem in pack_warnings(pack))
    for warning in warnings:
        on_warning(warning)
    tag = push_tag(revision, f"v{pack.version}", f"pack {pack.ref}'s version")
    versioned = tag.startswith("v") and is_semver(tag[1:])  # what `pa pack pull ORG/NAME@RANGE` reads as a version
    if versioned and tag[1:] != pack.version:
        raise InvalidInputError(f"--revision {tag!r} names version {tag[1:]}, but the pack is {pack.ref}",
                                hint=f"`pa pack pull` takes a v<version> tag for that version: leave --revision out "
                                     f"(tag v{pack.version}) or bump the pack's version")
    files = pack_files(pack.root)
    if files_digest(pack.root, files) != pack.files_digest:
        raise HubError(f"pack {pack.ref} changed while it was being published", file=str(pack.root),
                       hint="run the command again")
    hashes = {p.relative_to(pack.root).as_posix(): sha256_file(p) for p in files}
    token = resolve_token(token, repo_id)
    api = hub_api(token)
    prepare_repo(api, repo_id, "dataset", tag, private=private, token=token)
    if versioned:  # `--revision v1.0.0+b` after v1.0.0+a is the second build the default tag is refused for
        _refuse_same_version(api, repo_id, pack.version, token)
    uploads: dict[str, Any] = {f"{PACK_DIR}/{rel}": str(pack.root / rel) for rel in hashes}
    uploads["README.md"] = card.render_pack_card(pack, repo_id, tag, hashes).encode("utf-8")
    stale = [p for p in remote_files(api, repo_id, "dataset", token)
             if (p.startswith(f"{PACK_DIR}/") or p == "README.md") and p not in uploads]
    message = f"policyalign pack {pack.ref} (digest {pack.digest[:12]})"
    commit = commit_and_tag(api, repo_id, "dataset", uploads, stale, message, tag, token)
    return PushResult(repo_url(repo_id, "dataset", tag), repo_id, tag, commit, tuple(sorted(uploads)), warnings)


def _refuse_same_version(api: Any, repo_id: str, version: str, token: str) -> None:
    """A HubError when the repository has `version` under another tag text: 1.0.0+b after v1.0.0+a.
    Build metadata takes no part in SemVer precedence, so the two are one version published twice with
    two contents, and `pa pack pull ORG/NAME@^1` picked one of them by the order the Hub listed its tags."""
    with hub_call("reading the repository's tags", token=token, repo=repo_id):
        tags = [t.name for t in api.list_repo_refs(repo_id, repo_type="dataset").tags]
    same = [t for t in tags if t.startswith("v") and is_semver(t[1:]) and Version.parse(t[1:]) == Version.parse(version)]
    if same:
        raise HubError(f"version {version} is already published as tag {same[0]!r}: build metadata (after `+`) "
                       "does not make a new version", file=repo_id, hint=TAKEN_TAG_HINTS["dataset"].format(tag=same[0]))


# --------------------------------------------------------------------------- packs: pull


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _download_capped(url: str, dest: Path, cap: int, token: str | None) -> int:
    """Stream one file to `dest`, aborting as soon as it exceeds `cap` bytes (whatever the server claims)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers(token=token)
    with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as response:
        hf_raise_for_status(response)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _TooLarge(int(declared))
        total = 0
        with open(dest, "xb") as out:  # "x": never follow or overwrite something already there
            for chunk in response.iter_bytes(1 << 16):
                total += len(chunk)
                if total > cap:
                    raise _TooLarge(total)
                out.write(chunk)
    return total


def _fetch_capped(repo_id: str, filename: str, commit: str, cap: int, token: str | None, dest: Path) -> int:
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, filename, repo_type="dataset", revision=commit, endpoint=endpoint())
    with hub_call(f"downloading {filename}", token=token, repo=repo_id):
        return _download_capped(url, dest, cap, token)


def _resolve_pack_revision(api: Any, repo_id: str, wanted: str | None, token: str | None) -> tuple[str, str]:
    """`1.2.0` -> tag v1.2.0 (or a tag/branch named as given, or a commit, or the one build v1.2.0+b of
    it), a range (`^1`, `~1.2`, `>=1.0,<2`) -> the highest version tagged `v<version>` in it; returns
    (revision, commit)."""
    with hub_call("reading the repository's tags", token=token, repo=repo_id):
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    tags = {t.name: t.target_commit for t in refs.tags}
    branches = {b.name: b.target_commit for b in refs.branches}
    options = ([f"v{wanted}"] if wanted and is_semver(wanted) else []) + [wanted or DEFAULT_BRANCH]
    for option in options:
        if option in tags:
            return option, tags[option]
        if option in branches:
            return option, branches[option]
    if wanted and COMMIT_RE.match(wanted):
        return wanted, wanted
    # `1.0.0` with only v1.0.0+b5 tagged: that build is 1.0.0 (as the registry and `pa pull --pack` take it)
    in_range = _highest_tag_in_range(repo_id, tags, wanted) if wanted else None
    if in_range:
        return in_range, tags[in_range]
    from .registry import version_key

    versions = ", ".join(escaped_name(v) for v in sorted((t[1:] if t.startswith("v") else t for t in tags), key=version_key)) or "none"
    what = f"matches {wanted!r}" if in_range is not None and not is_semver(wanted) else f"{wanted!r} is published"
    syntax = f"; after '@' give {RANGE_SYNTAX}" if in_range is None else ""  # `@notaver`: neither a ref nor a range
    raise HubError(f"no version {what}", file=repo_id, hint=f"published versions: {versions}{syntax}")


RANGE_SYNTAX = "a version or range (1.2.0, ^1, ~1.2, '>=1.0,<2'), a tag, a branch or a commit"


def _check_range_syntax(spec: str, wanted: str | None) -> None:
    """An InvalidInputError, before the Hub is contacted, for a revision written as a range (an operator
    first, a comma or a space: no tag or branch is named so) that does not parse: `@^x` listed the
    repository's tags, or failed offline, then said only that no version '^x' was published."""
    if not wanted or not (wanted[0] in "^~<>=" or "," in wanted or " " in wanted):
        return
    try:
        parse_range(wanted)
    except ValueError as exc:
        raise InvalidInputError(f"bad version range in {spec!r}: {exc}",
                                hint=f"write ORG/NAME@REVISION, REVISION being {RANGE_SYNTAX}") from None


def _highest_tag_in_range(repo_id: str, tags: Mapping[str, str], wanted: str) -> str | None:
    """The `v<version>` tag of the highest published version in the range `wanted` (as a pack's
    `name@range` picks everywhere else); "" when none is in it, None when `wanted` is not a range.
    Two builds of that version (v1.0.0+a, v1.0.0+b, tagged before `pa pack push` refused the second)
    are a HubError naming both: one kept over the other by the order the Hub listed the tags."""
    try:
        versions = parse_range(wanted)
    except ValueError:
        return None
    matching = [tag for tag in tags if tag.startswith("v") and is_semver(tag[1:]) and Version.parse(tag[1:]) in versions]
    if not matching:
        return ""
    highest = max(Version.parse(tag[1:]) for tag in matching)
    builds = sorted(tag for tag in matching if Version.parse(tag[1:]) == highest)
    refuse_several_builds([escaped_name(tag) for tag in builds],
                          f"the highest version in {wanted!r}, {Version(*highest.release, highest.pre)}, is published as",
                          file=repo_id, hint=f"name the one to install, e.g. `pa pack pull {repo_id}@{escaped_name(builds[0][1:])}`")
    return builds[0]


def _read_pack_card(repo_id: str, commit: str, workdir: Path, token: str | None) -> dict[str, Any]:
    """The `policyalign` block of a pack repo's card (downloaded with a size cap)."""
    dest = workdir / "README.md"
    try:
        _fetch_capped(repo_id, "README.md", commit, MAX_CARD_BYTES, token, dest)
    except _TooLarge:
        raise HubError(f"README.md is over {MAX_CARD_BYTES} bytes", file=repo_id, hint="this is not a policyalign pack repo") from None
    metadata, _ = card.parse_card(dest.read_text(encoding="utf-8", errors="replace"))
    recorded = metadata.get("policyalign")
    pack = recorded.get("pack") if isinstance(recorded, dict) else None
    if not isinstance(pack, dict) or not isinstance(recorded.get("files"), dict):
        raise HubError("not a policyalign pack repo (its card has no `policyalign` metadata)", file=repo_id,
                       hint="publish packs with `pa pack push`")
    if not all(isinstance(rel, str) and isinstance(sha, str) for rel, sha in recorded["files"].items()):
        # `1: abc` (YAML reads the name as a number) crashed the listing check, which prints each name as text.
        raise HubError("the card's `files` must map file names to their sha256 digests, all text", file=repo_id,
                       hint="publish packs with `pa pack push`")
    # fullmatch: `$` also matches before a final newline, so a card naming `NAME\n` passed, and the pull failed
    # blaming pack.yaml's name for not matching the directory `NAME\n` the card's name made
    if not isinstance(pack.get("name"), str) or not PACK_NAME_RE.fullmatch(pack["name"]):
        raise HubError(f"the card names an invalid pack {pack.get('name')!r}", file=repo_id)
    # Both are printed (a mismatch error, a digest warning): a hostile card's escape sequences must not be.
    if not isinstance(pack.get("version"), str) or not is_semver(pack["version"]):
        raise HubError(f"the card names an invalid version {pack.get('version')!r}", file=repo_id)
    if not isinstance(pack.get("digest"), str) or not DIGEST_RE.fullmatch(pack["digest"]):
        raise HubError(f"the card names an invalid digest {pack.get('digest')!r}", file=repo_id)
    return recorded


def _listing_problems(repo_id: str, entries: list[tuple[str, int]], expected: Mapping[str, Any]) -> list[Problem]:
    """Everything wrong with a pack's file listing, before a byte is downloaded."""
    from .pack_input import MAX_PACK_BYTES, MAX_PACK_FILES, not_pack_content
    from .templates import text_problem

    problems = []
    for rel, size in entries:
        where = f"{repo_id}:{PACK_DIR}/{escaped_name(rel)}"
        if not is_safe_relpath(rel) or text_problem(rel):
            problems.append(Problem(where, "", "unsafe path (absolute, '..', empty parts or control characters)",
                                    "a pack's files must stay inside the pack directory"))
        elif any(not_pack_content(part) for part in rel.split("/")):
            # `pa pack push` never uploads one and the loader skips it: installed, it would sit in the
            # pack outside its digest (and pass for a parent's difference in the digest warning).
            problems.append(Problem(where, "", "not pack content (a hidden file or directory, a cache or an editor backup)",
                                    "`pa pack push` does not publish such files; the repository was made by other means"))
        elif reason := unportable_part(rel):
            problems.append(Problem(where, "", f"{reason}: a pack holding it cannot be installed on every system",
                                    "rename the file in the repository (`pa pack push` refuses such names)"))
        elif size > file_cap(rel):
            problems.append(Problem(where, "", f"file is {size} bytes, over the {file_cap(rel)}-byte limit",
                                    "packs are bounded in size; this one cannot be installed"))
        elif rel not in expected:
            problems.append(Problem(where, "", "file is not listed in the pack's card", "the repository was modified after `pa pack push`"))
    listed = {rel for rel, _ in entries}
    # the second download of a name listed twice found the first's file: "[Errno 17] File exists" in the staging directory
    problems += [Problem(f"{repo_id}:{PACK_DIR}/{escaped_name(rel)}", "", "listed twice", "the listing is not a repository's; "
                         "not installable") for rel, times in sorted(Counter(rel for rel, _ in entries).items()) if times > 1]
    problems += [Problem(f"{repo_id}:{PACK_DIR}/{escaped_name(rel)}", "", f"inside the listed file {PACK_DIR}/{escaped_name(file)}: "
                         "a path cannot be both a file and a directory", "the listing is not a repository's; not installable")
                 for rel, file in _under_a_listed_file(listed)]
    problems += [Problem(f"{repo_id}:{PACK_DIR}/{escaped_name(group[-1])}", "", "differs only in case from "
                         + ", ".join(f"{PACK_DIR}/{escaped_name(rel)}" for rel in group[:-1]) + ": one file on macOS and "
                         "Windows, so a pack holding both cannot be installed on every system",
                         "rename one of them in the repository") for group in case_clashes(listed)]
    problems += [Problem(f"{repo_id}:{PACK_DIR}/{escaped_name(rel)}", "", "listed in the card but missing from the repository",
                         "the repository is incomplete") for rel in expected if rel not in listed]
    total = sum(size for _, size in entries)
    if len(entries) > MAX_PACK_FILES:
        problems.append(Problem(repo_id, "", f"{len(entries)} files, over the limit of {MAX_PACK_FILES}", "not installable"))
    if total > MAX_PACK_BYTES:
        problems.append(Problem(repo_id, "", f"{total} bytes in all, over the limit of {MAX_PACK_BYTES}", "not installable"))
    return problems


def _under_a_listed_file(listed: set[str]) -> list[tuple[str, str]]:
    """(path, listed file it lies under) for each listed path inside another listed path: no repository
    holds both `notes` and `notes/x`, but a listing is untrusted, and the download wrote the file `notes`
    and then failed making it a directory, with a traceback."""
    found = []
    for rel in sorted(listed):
        parts = rel.split("/")
        if file := next((p for p in ("/".join(parts[:n]) for n in range(1, len(parts))) if p in listed), None):
            found.append((rel, file))
    return found


def _list_pack_files(api: Any, repo_id: str, commit: str, token: str | None) -> list[tuple[str, int]]:
    from huggingface_hub.hf_api import RepoFile

    with hub_call("listing the pack's files", token=token, repo=repo_id):
        tree = list(api.list_repo_tree(repo_id, path_in_repo=PACK_DIR, recursive=True, revision=commit, repo_type="dataset"))
    prefix = f"{PACK_DIR}/"
    return [(entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.path, int(entry.size or 0))
            for entry in tree if isinstance(entry, RepoFile)]


def _download_pack(repo_id: str, commit: str, entries: list[tuple[str, int]], hashes: Mapping[str, Any],
                   stage: Path, token: str | None) -> None:
    """Fetch every listed file into `stage` with per-file and total caps, checking each sha256."""
    from .pack_input import MAX_PACK_BYTES

    budget = MAX_PACK_BYTES
    for rel, _ in entries:
        dest = stage.joinpath(*rel.split("/"))
        if not dest.resolve().is_relative_to(stage.resolve()):
            raise PackError([Problem(f"{repo_id}:{PACK_DIR}/{rel}", "", "path leads outside the pack", "not installable")])
        dest.parent.mkdir(parents=True, exist_ok=True)
        cap = min(file_cap(rel), budget)
        try:
            budget -= _fetch_capped(repo_id, f"{PACK_DIR}/{rel}", commit, cap, token, dest)
        except _TooLarge as exc:
            raise PackError([Problem(f"{repo_id}:{PACK_DIR}/{rel}", "", f"download exceeded {cap} bytes ({exc.size}+)",
                                     "the server sent more than the pack's size limits allow")]) from None
        if sha256_file(dest) != hashes.get(rel):
            raise HubError(f"{PACK_DIR}/{rel} does not match its sha256 in the card", file=repo_id,
                           hint="the repository was modified after `pa pack push`; do not install it")


def pull_pack(spec: str, *, to: str | Path | None = None, token: str | None = None,
              registry: "Registry | None" = None) -> PackPullResult:
    """`pa pack pull ORG/NAME[@VERSION]`: download, verify and validate a pack, then install it.

    Installs into `to/NAME` (default: `user_packs_dir()/NAME`) by renaming a fully checked
    staging directory, so an invalid or tampered pack leaves nothing behind. Its parents resolve
    through `registry` (default: the standard search path) and among the packs already in the
    install directory: once installed, those are its siblings, which the loader always searches.
    """
    from .registry import user_packs_dir
    from .run import run_lock

    started = time.time()
    repo_id, wanted = split_spec(spec)
    _check_range_syntax(spec, wanted)
    api = hub_api(token)
    revision, commit = _resolve_pack_revision(api, repo_id, wanted, token)
    parent = Path(to) if to is not None else user_packs_dir()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    except OSError as exc:  # `--to` naming a file, or a directory that cannot be made or written: not a traceback
        raise InvalidInputError(f"cannot install packs here: {exc.strerror or exc}", file=str(parent),
                                hint="give --to a directory you can write to (it is created if missing)") from None
    with run_lock(staging):  # this pull's, while it runs: no other pull removes it (`_remove_stale_staging`)
        _remove_stale_staging(parent, staging, started)
        pack, target, warnings, replaced = _install(api, repo_id, commit, staging, parent, token, registry)
    return PackPullResult(pack.name, pack.version, pack.digest, target, repo_id, revision, str(commit), tuple(warnings),
                          replaced)


# The prefix of a pull's staging directory in the install directory, where a killed pull leaves it.
STAGING_PREFIX = ".pa-pull-"
# What a second `pa pack pull` installing the same pack into one directory is told (run.run_lock's `busy`).
PACK_PULL_BUSY = ("pack's install directory", "wait for the other `pa pack pull` of this pack into it to finish, "
                                              "or install into another packs directory with --to")


def _remove_stale_staging(parent: Path, own: Path, started: float) -> None:
    """Delete the staging directories killed pulls left in `parent`: each pull's is randomly named, and a
    killed one (no `finally` runs) left it there for good. Only one no live pull holds (each holds a lock in
    its own, `run.run_active`) and that is older than this pull (`started`): one made by a pull started since
    may not hold its lock yet."""
    from .run import run_active

    for stale in parent.glob(f"{STAGING_PREFIX}*"):
        if stale == own or stale.is_symlink() or not stale.is_dir():
            continue
        try:
            older = stale.stat().st_mtime < started
        except OSError:  # removed meanwhile
            continue
        if older and not run_active(stale):
            shutil.rmtree(stale, ignore_errors=True)


def _install(api: Any, repo_id: str, commit: str, staging: Path, parent: Path, token: str | None,
             registry: "Registry | None") -> tuple["Pack", Path, list[str], str]:
    """(pack, where installed, warnings, the other version replaced) of the pack at `commit`, downloaded into
    `staging`, checked, and moved into `parent`. The move holds a lock beside the pack's directory, as `pa pull`
    does: two pulls of one pack into one directory each moved the installed one aside as `.previous-NAME` and
    one put back or deleted what the other had moved (`hub.swap_in`)."""
    from .pack import files_digest, load_pack
    from .registry import Registry
    from .run import run_lock

    try:
        recorded = _read_pack_card(repo_id, commit, staging, token)
        name, hashes = recorded["pack"]["name"], recorded["files"]
        entries = _list_pack_files(api, repo_id, commit, token)
        problems = _listing_problems(repo_id, entries, hashes)
        if problems:
            raise PackError(problems)
        stage = staging / name
        stage.mkdir()
        _download_pack(repo_id, commit, entries, hashes, stage, token)
        files = [stage.joinpath(*rel.split("/")) for rel, _ in entries]
        if files_digest(stage, files) != recorded["pack"].get("files_digest"):
            raise HubError("the pack's files digest does not match its card", file=repo_id,
                           hint="the repository was modified after `pa pack push`; do not install it")
        search = (registry or Registry.default()).including(parent)
        try:
            pack = load_pack(stage, registry=search, siblings=parent)
        except PackError as exc:
            raise PackError([_as_published(problem, stage, repo_id) for problem in exc.problems]) from None
        warnings = _pack_identity_problems(pack, recorded["pack"], repo_id)
        target = parent / name
        warnings += _shadowed(pack, repo_id, search, target)
        with run_lock(parent, PACK_PULL_BUSY, name=f".{name}.pa-pull.lock", remove=True):
            _check_replaceable(target, name)
            replaced = _other_version(target, pack.version)
            swap_in(stage, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pack, target, warnings, replaced


def _as_published(problem: Problem, stage: Path, repo_id: str) -> Problem:
    """A problem in a file of the pulled pack, named as the repository holds it (`org/name:pack/pack.yaml`,
    as the listing checks name files): its staging directory is deleted before the error is printed."""
    prefix = f"{stage}/"
    if problem.file != str(stage) and not problem.file.startswith(prefix):
        return problem  # a local parent's, named where it is
    rel = problem.file[len(prefix):]
    return Problem(f"{repo_id}:{PACK_DIR}/{rel}" if rel else repo_id, problem.where, problem.message, problem.hint)


def _shadowed(pack: "Pack", repo_id: str, registry: "Registry", target: Path) -> list[str]:
    """Lower versions of the pulled pack's name elsewhere on the search path: the highest version wins
    wherever the name (or a range admitting both) is used, so any repository publishing a pack named
    `general` at 1.99.0 takes over from the shipped general@1.0.0, for the packs extending it too."""
    pulled = Version.parse(pack.version)
    lower = sorted({f"{found.name}@{found.version} in {found.path.parent}" for found in registry.discover()
                    if found.name == pack.name and found.path.resolve() != target.resolve()
                    and is_semver(found.version) and Version.parse(found.version) < pulled})
    warnings = [f"{pack.ref} from {repo_id} now takes precedence over {', '.join(lower)}, wherever `{pack.name}` "
                f"(or a version range admitting {pack.version}) names it, packs that extend it included"] if lower else []
    return warnings + _hidden_by_same_version(pack, repo_id, registry, target)


def _hidden_by_same_version(pack: "Pack", repo_id: str, registry: "Registry", target: Path) -> list[str]:
    """Another copy of the pulled version, with other files, earlier on the search path (./packs holds
    general@1.0.0, a fork's general@1.0.0 is pulled): discovery keeps the first copy of a version, so the
    installed one was never used, by `general`, `general@1.0.0` or a child's range, and nothing said so."""
    from .pack import files_digest

    others = [found.path for found in registry.discover() if (found.name, found.version) == (pack.name, pack.version)
              and found.path.resolve() != target.resolve()]
    differing = [str(path) for path in others if files_digest(path, pack_files(path)) != pack.files_digest]
    return [f"{pack.ref} from {repo_id} is installed in {target}, but {differing[0]} holds another {pack.ref} earlier "
            f"on the search path, which `{pack.name}` and `{pack.ref}` still resolve to; the pulled copy is used only "
            f"by its path"] if differing else []


def _check_replaceable(target: Path, name: str) -> None:
    """Refuse to install over `target` unless it holds a pack named `name`: the install replaces the
    directory and deletes what it held, and `--to DIR` may name a folder whose DIR/NAME is someone's work."""
    from .registry import read_header

    if not target.exists() and not target.is_symlink():
        return
    found = read_header(target) if target.is_dir() else None
    if found is None or found.name != name:
        raise HubError(f"already exists and is not an installed pack {name!r}; installing would delete it",
                       file=str(target), hint="move it away, or install into another packs directory with --to")


def _other_version(installed: Path, version: str) -> str:
    """name@version of the pack installed at `installed` when it is another version than `version` ("" if
    none): the directory holds one version per name, so pulling 1.0.0 removes an installed 1.1.0."""
    from .registry import read_header

    found = read_header(installed)
    return f"{found.name}@{found.version}" if found is not None and found.version != version else ""


def _pack_identity_problems(pack: "Pack", recorded: Mapping[str, Any], repo_id: str) -> list[str]:
    """Name/version must match the card (error); a different composed digest is only a warning."""
    if pack.name != recorded.get("name") or pack.version != recorded.get("version"):
        raise HubError(f"the card says {recorded.get('name')}@{recorded.get('version')}, "
                       f"the files say {pack.ref}", file=repo_id, hint="the repository was modified after `pa pack push`")
    if pack.digest != recorded.get("digest"):
        return [f"{pack.ref} composes to digest {pack.digest[:12]}… here but {str(recorded.get('digest'))[:12]}… "
                f"where it was published: its parents ({', '.join(pack.extends)}) differ locally"]
    return []
