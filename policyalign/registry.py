"""Find packs on disk and resolve `name`, `name@1.2.0`, `name@^1` or a path to one.

Search order: `--packs-path` / `PA_PACKS_PATH` directories, then `./packs`, then
the user's installed packs (`pa pack pull` puts them there). Discovery reads only
each manifest's name and version; full validation happens on load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import ResolveError
from .semver import Version, VersionRange, is_semver, parse_range

if TYPE_CHECKING:
    from .errors import PackError
    from .pack import Pack

INDEX_FILE = "INDEX.json"


def user_packs_dir() -> Path:
    """Where pulled packs are installed: $PA_HOME/packs (default ~/.local/share/policyalign/packs)."""
    home = os.environ.get("PA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share", "policyalign")
    return Path(home) / "packs"


def env_packs_paths() -> list[Path]:
    """The directories PA_PACKS_PATH names (separated by os.pathsep), each of which must be a directory.

    Discovery skips a path that is not one, so a stale or mistyped PA_PACKS_PATH (a CI job's, a
    notebook's) was ignored without a word while `pa show` took another copy of the pack, or none."""
    raw = os.environ.get("PA_PACKS_PATH", "")
    paths = [Path(p) for p in raw.split(os.pathsep) if p]
    _check_directories(paths, "PA_PACKS_PATH entry", f"set PA_PACKS_PATH to directories holding pack directories, "
                                                     f"separated by {os.pathsep!r}, or unset it")
    return paths


def check_packs_path(packs_path: list[Path]) -> None:
    """A ResolveError for a --packs-path that is not a directory. Discovery skips such a path, so a typo
    in it was silently ignored (`pa list` listed the other packs, `pa show` took another copy); `--dir`
    of `pa validate --all` and `pa index` is refused the same way."""
    _check_directories(packs_path, "--packs-path",
                       "pass --packs-path a directory holding pack directories (each with a pack.yaml)")


def _check_directories(paths: list[Path], label: str, hint: str) -> None:
    """A ResolveError naming the first of `paths` that is not a directory, as `this LABEL is a file, ...`."""
    for path in paths:
        if not Path(path).is_dir():
            what = "is a file, not a directory" if Path(path).exists() else "does not exist"
            raise ResolveError(f"this {label} {what}", file=str(path), hint=hint)


@dataclass(frozen=True)
class PackLocation:
    name: str
    version: str
    path: Path
    extends: tuple[str, ...] = ()  # as written: resolving them is the pack loader's job


# pack.yaml (its device and inode) -> (its stat identity, its header): discovery runs once per pack loaded (each
# parent is looked up by name), and parsing every manifest each time made `pa list` of 31 packs take 31 s.
_headers: dict[tuple[int, int], tuple[tuple[int, int, int], "PackLocation | None"]] = {}


def read_header(path: Path) -> PackLocation | None:
    """Name and version from a manifest, or None when it can't be read (validation reports why); parsed
    once per version of the file (its inode, size and modification time), however often it is asked.

    Two stats, no path resolution, for a plain pack.yaml: discovery reads every header on the search path
    for each parent it resolves, and resolving both paths of each (to find the file and confine it) took
    60% of `pa validate --all` over 200 packs. Only a symlinked pack.yaml can lead out of its pack."""
    manifest = path / "pack.yaml"
    try:
        info = manifest.stat()
        linked = manifest.is_symlink()
    except OSError:
        return None
    if linked and not manifest.resolve().is_relative_to(path.resolve()):  # out of the pack: loading it says so
        return None
    key, identity = (info.st_dev, info.st_ino), (info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _headers and _headers[key][0] == identity:
        return _located(_headers[key][1], path)
    header = _parse_header(manifest, info.st_size)
    _headers[key] = (identity, header)
    return _located(header, path)


def _located(header: PackLocation | None, path: Path) -> PackLocation | None:
    """`header` at `path`, as this search path spells it (one file may be reached through two paths)."""
    return None if header is None else PackLocation(header.name, header.version, path, header.extends)


def _parse_header(manifest: Path, size: int) -> PackLocation | None:
    from .pack_input import MAX_MANIFEST_BYTES
    from .templates import text_problem
    from .untrusted_data import ManifestLoader

    try:
        # The loader's own limits (size, no aliases, bounded nesting) keep one hostile manifest from
        # stalling or crashing discovery.
        if size > MAX_MANIFEST_BYTES:
            return None
        data = yaml.load(manifest.read_text(encoding="utf-8"), Loader=ManifestLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or text_problem(data["name"]):
        return None  # a name with a terminal escape would reach `pa list` and "known packs:" hints as is
    version, extends = data.get("version"), data.get("extends")
    if isinstance(version, str) and text_problem(version):
        version = ""
    specs = tuple(s for s in extends if isinstance(s, str)) if isinstance(extends, list) else ()
    return PackLocation(data["name"], version if isinstance(version, str) else "", manifest.parent, specs)


class Registry:
    """Packs found under a list of directories, plus a cache of loaded packs."""

    def __init__(self, paths: list[Path], *, extendable: bool = False) -> None:
        """`extendable`: the user can add to these paths (--packs-path, PA_PACKS_PATH, `pa pack pull`),
        so a "not found" hint says how; `pa index` and `pa validate --all` search their --dir only."""
        self.paths = [Path(p) for p in paths]
        self.extendable = extendable
        self._loaded: dict[tuple[Path, tuple[Path, ...]], "Pack"] = {}
        # Packs that failed to load, with why: a pack reached by many paths (a parent of many packs) is
        # loaded once, valid or not; retrying an invalid one on every path cost 2^N loads in a ladder of N levels.
        self._failed: dict[tuple[Path, tuple[Path, ...]], "PackError"] = {}

    @classmethod
    def default(cls, packs_path: list[Path] | None = None, extra: list[Path] | None = None) -> "Registry":
        """`packs_path` is the user's --packs-path: each must be a directory (see `check_packs_path`)."""
        check_packs_path(packs_path or [])
        paths = [*(packs_path or []), *env_packs_paths(), Path("packs"), user_packs_dir(), *(extra or [])]
        unique: list[Path] = []
        for path in paths:
            if path.resolve() not in [p.resolve() for p in unique]:
                unique.append(path)
        return cls(unique, extendable=True)

    def including(self, directory: Path) -> "Registry":
        """This registry, also searching `directory` last (a pack's siblings), sharing the load cache."""
        if any(directory.resolve() == p.resolve() for p in self.paths):
            return self
        other = Registry([*self.paths, directory], extendable=self.extendable)
        other._loaded = self._loaded
        other._failed = self._failed
        return other

    def discover(self) -> list[PackLocation]:
        """Every directory with a pack.yaml directly under a search path, first path winning ties; a
        manifest naming another pack than its directory is left to `unreadable` (it cannot load)."""
        found: dict[tuple[str, str], PackLocation] = {}
        for child in self.pack_dirs():
            loc = read_header(child)
            if loc is not None and loc.name == child.name:
                found.setdefault((loc.name, loc.version), loc)
        return sorted(found.values(), key=lambda l: (l.name, version_key(l.version)))

    def unreadable(self) -> list[Path]:
        """Pack directories whose manifest gives no name (too large, too deep, not YAML) or another
        directory's name: `pa list` shows them as invalid instead of leaving a contributor's pack out
        without a word. A copy of packs/general in packs/cyber, not yet renamed, can never load as
        `general` (the name must be the directory's), yet it was found as general@1.0.0 before the real
        one and made `pa show general` and every child of general invalid."""
        return [d for d in self.pack_dirs() if (loc := read_header(d)) is None or loc.name != d.name]

    def pack_dirs(self) -> list[Path]:
        """Every directory with a pack.yaml, readable or not (for `pa validate --all`), in search-path order.
        Hidden ones are not packs (no pack name starts with "."): the `.previous-NAME` a killed `pa pack pull`
        leaves beside NAME (`hub.swap_in`) was listed by `pa list` and `pa validate --all` as an invalid pack."""
        dirs: list[Path] = []
        for base in self.paths:
            if base.is_dir():
                dirs += [c for c in sorted(base.iterdir())
                         if not c.name.startswith(".") and c.is_dir() and (c / "pack.yaml").is_file()]
        return dirs

    def resolve_path(self, spec: str) -> Path:
        """Resolve a pack spec to its directory; an existing directory path is taken as is."""
        as_path = Path(spec)
        if as_path.is_dir() or os.sep in spec or spec.startswith("."):
            if as_path.is_file() and as_path.name == "pack.yaml":  # was "no pack.yaml in x/pack.yaml"
                raise ResolveError(f"{spec} is the manifest, not its pack directory", file=spec,
                                   hint=f"pass the pack's directory, {as_path.parent}")
            if not (as_path / "pack.yaml").is_file():
                raise ResolveError(f"no pack.yaml in {spec}", file=spec,
                                   hint="pass a pack directory, or a pack name known to `pa list`")
            return as_path
        return self.resolve_name(spec)

    def resolve_name(self, spec: str, *, parent: bool = False) -> Path:
        """Resolve `name` or `name@range`, never as a filesystem path: an `extends` entry in an untrusted
        manifest (`general@/x`, `general@../x`) must not reach a directory outside the search path.
        `parent`: the spec is an `extends` entry, which cannot be a path (the hint says so).

        A pack directory of that name whose manifest cannot be read, or a copy without a semantic version
        when no other copy matches, comes back as is, so that loading it reports why (a YAML error on line 3,
        `version: 1.0`) instead of "unknown pack" or "no version matches"."""
        name, _, wanted = spec.partition("@")
        candidates = [loc for loc in self.discover() if loc.name == name]
        if not candidates:
            # ... or whose manifest names it from another directory (moved): loading says to rename one
            unreadable = [path for path in self.unreadable()
                          if path.name == name or getattr(read_header(path), "name", None) == name]
            return unreadable[0] if unreadable else self._unknown(name, parent)
        unversioned = [c for c in candidates if not is_semver(c.version)]
        if unversioned and self.best_match(spec) is None:
            # `version: 1.0` (or none): "no version of 'x' matches ''" named neither the file nor the field, and a
            # child's `x@^1` was told "available versions: 1.0" (in ^1, to the eye) or "available versions: "
            return unversioned[0].path
        return self._pick(spec, name, wanted, candidates).path

    def _unknown(self, name: str, parent: bool) -> Path:
        from .errors import did_you_mean

        names = sorted({loc.name for loc in self.discover()})
        # A pack that itself extends `name` cannot load without it: `pa pack pull` of privacy-hr, its parent
        # privacy missing, was told "did you mean 'privacy-hr'?" instead of how to install the parent.
        close = [loc.name for loc in self.discover() if not any(s.partition("@")[0] == name for s in loc.extends)]
        raise ResolveError(f"unknown pack {name!r}",
                           hint=did_you_mean(name, sorted(set(close))) or self._not_found_hint(names, parent))

    def _not_found_hint(self, names: list[str], parent: bool) -> str:
        """Where the pack was looked for and how to put it there. "known packs: elections" alone, when
        `pa pack pull` found no parent `general`, or `pa render` no pack kept outside ./packs, said
        neither that only these directories are searched nor what to do about it."""
        searched = ", ".join(str(p) if p.is_absolute() else f"./{p}" for p in self.paths) or "no directory"
        known = f"known packs: {', '.join(names)}" if names else "no packs found"
        if not self.extendable:
            return f"{known} (searched only {searched}); put the pack in one of these directories"
        fix = "add the directory holding it with --packs-path or PA_PACKS_PATH, or install it with `pa pack pull ORG/NAME`"
        return f"{known} (searched {searched}); " + (fix if parent else f"pass the pack's directory, {fix}")

    def best_match(self, spec: str) -> PackLocation | None:
        """The local pack `name[@range]` resolves to (as `resolve_name` picks it), None when none matches;
        a bad range is still a ResolveError."""
        name, _, wanted = spec.partition("@")
        version_range(spec)
        candidates = [loc for loc in self.discover() if loc.name == name]
        try:
            return self._pick(spec, name, wanted, candidates)
        except ResolveError:
            return None

    @staticmethod
    def _pick(spec: str, name: str, wanted: str, candidates: list[PackLocation]) -> PackLocation:
        # Build metadata takes no part in precedence, so `name@1.0.0+b` matches 1.0.0+a too; the copy whose
        # version is the one asked for wins (it took whichever came first in the search path).
        exact = [c for c in candidates if is_semver(wanted) and c.version == wanted]
        if exact:
            return exact[0]
        rng = version_range(spec)
        matching = [c for c in candidates if is_semver(c.version) and Version.parse(c.version) in rng]
        if not matching and not wanted:  # a bare name: ranges skip prereleases, but one that is all there is still loads
            matching = [c for c in candidates if is_semver(c.version)]
        if not matching:
            have = ", ".join(c.version for c in candidates)
            raise ResolveError(f"no version of {name!r} matches {wanted!r}", hint=f"available versions: {have}")
        return max(matching, key=lambda c: Version.parse(c.version))

    def load(self, spec: str) -> "Pack":
        from .pack import load_pack

        return load_pack(self.resolve_path(spec), registry=self)

    def _key(self, root: Path) -> tuple[Path, tuple[Path, ...]]:
        """A loaded pack is the pack at `root` as these paths resolve its parents. Keyed by `root` alone, the
        cache (shared with `including`) answered for a pack loaded through another child's siblings: `pa
        validate packs/medical work/kid` and `pa validate work/kid packs/medical` composed medical with
        different general versions (work/ holding general 1.1.0), each digest depending on the order."""
        return root.resolve(), tuple(p.resolve() for p in self.paths)

    def cached(self, root: Path) -> "Pack | None":
        return self._loaded.get(self._key(root))

    def remember(self, root: Path, pack: "Pack") -> None:
        self._loaded[self._key(root)] = pack

    def failure(self, root: Path) -> "PackError | None":
        return self._failed.get(self._key(root))

    def remember_failure(self, root: Path, error: "PackError") -> None:
        self._failed[self._key(root)] = error


def version_range(spec: str) -> VersionRange:
    """The versions `name@range` accepts (any, for a bare name), or a ResolveError naming the spec."""
    try:
        return parse_range(spec.partition("@")[2] or "*")
    except ValueError as exc:
        raise ResolveError(f"bad version range in {spec!r}: {exc}",
                           hint="use e.g. name@1.2.0, name@^1, name@~1.2 or name@>=1.0,<2") from None


def version_key(version: str) -> tuple:
    """Versions in version order (1.2.0 before 1.10.0), anything not semver first."""
    return (0, Version.parse(version)) if is_semver(version) else (-1, version)
