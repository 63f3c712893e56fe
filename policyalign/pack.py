"""Load, validate, compose and digest policy packs.

A pack directory is untrusted input. `load_pack` collects every problem it can
find (schema, paths, sizes, templates, eval items, composition) and raises one
`PackError` listing them all, each with file, place and a hint, so a contributor
fixes everything in one round. A valid pack becomes an immutable `Pack` whose
`digest` pins its exact content and that of its parents.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from .errors import PackError, Problem
from .semver import is_semver
from .templates import LONE_SURROGATE, TemplateFailure, WorkBudget, compile_template, render_template, text_problem

if TYPE_CHECKING:
    from .registry import Registry

MANIFEST = "pack.yaml"
CHANGELOG = "CHANGELOG.md"
ACTION_STRENGTH = {"comply": 0, "guide": 1, "refuse": 2}

# Size bounds: packs are untrusted, and every file is read into memory.
MAX_MANIFEST_BYTES = 512 * 1024
MAX_POLICY_BYTES = 128 * 1024
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_EVAL_BYTES = 8 * 1024 * 1024
MAX_OTHER_BYTES = 2 * 1024 * 1024
MAX_PACK_BYTES = 32 * 1024 * 1024
MAX_PACK_FILES = 2000
MAX_EVAL_ITEMS = 20000
# Deeper YAML/JSON would overflow the stack in the parsers, the schema check or later stages.
MAX_NESTING = 100
DIGEST_PREFIX = b"policyalign-pack-digest-v1\n"


@dataclass(frozen=True)
class Seed:
    """A seed violating request: plain text or a conversation with tools."""

    id: str
    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The seed as the generator sees it: the user text, or the conversation as JSON."""
        if len(self.messages) == 1 and not self.tools and self.messages[0].get("role") == "user":
            return str(self.messages[0].get("content", ""))
        return json.dumps({"messages": thaw(self.messages), **({"tools": thaw(self.tools)} if self.tools else {})},
                          ensure_ascii=False)


@dataclass(frozen=True)
class Category:
    id: str
    title: str
    description: str
    action: str
    locked: bool
    seeds: tuple[Seed, ...]
    origin: str  # name of the pack that defined the category
    locked_by: str = ""  # name of the pack that locked it ("" when unlocked)


@dataclass(frozen=True)
class TemplateSpec:
    id: str
    file: str
    description: str
    format: str
    source: str


@dataclass(frozen=True)
class EvalItem:
    id: str
    category: str
    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...]
    expect: str
    forbidden_tools: tuple[str, ...]
    note: str = ""

    def as_record(self) -> dict[str, Any]:
        """A plain dict (conversation plus labels) for JSONL artifacts."""
        record: dict[str, Any] = {"id": self.id, "category": self.category,
                                  "messages": thaw(self.messages), "expect": self.expect}
        if self.tools:
            record["tools"] = thaw(self.tools)
        if self.forbidden_tools:
            record["forbidden_tools"] = list(self.forbidden_tools)
        return record


@dataclass(frozen=True)
class EvalSet:
    name: str
    kind: str
    file: str  # relative to the pack (an inherited set: the file under its ancestor's root)
    items: tuple[EvalItem, ...]
    origin: str = ""  # the ancestor pack an inherited set comes from ("" for the pack's own sets)
    # (why, how many) of the ancestor's items left out: their expectation no longer holds in this pack
    dropped: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Pack:
    """A validated, composed pack. Immutable: stages receive it as plain data."""

    name: str
    version: str
    title: str
    summary: str
    license: str
    root: Path
    own_policy: str
    policy: str
    extends: tuple[str, ...]
    parents: tuple["Pack", ...]
    categories: tuple[Category, ...]
    templates: tuple[TemplateSpec, ...]
    synthesis: Mapping[str, Any]
    eval_sets: tuple[EvalSet, ...]
    training: Mapping[str, Any]
    files_digest: str
    digest: str
    manifest: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def category(self, category_id: str) -> Category:
        for cat in self.categories:
            if cat.id == category_id:
                return cat
        raise KeyError(category_id)

    def eval_set(self, name: str) -> EvalSet:
        for eval_set in self.eval_sets:
            if eval_set.name == name:
                return eval_set
        raise KeyError(name)

    def evaluated_sets(self) -> tuple[EvalSet, ...]:
        """The sets that measure this pack: its own, then each ancestor's own sets (ancestry order),
        named `<ancestor>/<set>`. A child trains on its parents' categories too, so their sets are
        its evidence for them; items whose expectation the child changed are dropped (`inherit_set`)."""
        inherited = [inherit_set(eval_set, ancestor, self)
                     for ancestor in self.ancestry()[:-1] for eval_set in ancestor.eval_sets]
        return (*self.eval_sets, *inherited)

    def eval_prompts(self) -> list[str]:
        """Every user-visible text of every evaluated item, inherited sets included (for decontamination)."""
        return [str(m.get("content", "")) for s in self.evaluated_sets() for i in s.items
                for m in i.messages if m.get("role") in ("user", "tool")]

    def ancestry(self) -> list["Pack"]:
        """Parents first (depth-first, each once), then this pack."""
        seen: dict[str, Pack] = {}
        for parent in self.parents:
            for pack in parent.ancestry():
                seen.setdefault(pack.name, pack)
        seen.setdefault(self.name, self)
        return list(seen.values())


def inherit_set(eval_set: EvalSet, ancestor: Pack, pack: Pack) -> EvalSet:
    """`ancestor`'s set as `pack` evaluates it: named `<ancestor>/<set>` (set names cannot hold a
    '/', so it never collides with the pack's own), without the items that no longer fit `pack`."""
    kept: list[EvalItem] = []
    dropped: dict[str, int] = {}
    for item in eval_set.items:
        why = _misfit(item, ancestor, pack)
        if why:
            dropped[why] = dropped.get(why, 0) + 1
        else:
            kept.append(item)
    return EvalSet(f"{ancestor.name}/{eval_set.name}", eval_set.kind, str(ancestor.root / eval_set.file),
                   tuple(kept), ancestor.name, tuple(dropped.items()))


def _misfit(item: EvalItem, ancestor: Pack, pack: Pack) -> str:
    """Why an ancestor's eval item does not hold under `pack` ("" when it does). A benign item stays
    benign whatever the action; a harmful item's `expect` was written for the ancestor's action, so
    where `pack` changed that action (a non-locked `refuse` weakened to `comply`, `guide` made
    `refuse`), only items already expecting the new action still fit. A removed category has no
    action left to measure."""
    from .schema import BENIGN_EXPECT

    try:
        now = pack.category(item.category).action
    except KeyError:
        return f"category {item.category!r} removed"
    was = ancestor.category(item.category).action
    if item.expect in BENIGN_EXPECT or now == was or item.expect == now:
        return ""
    return f"category {item.category!r} changed from {was!r} to {now!r}"


def did_you_mean(word: str, options: list[str] | tuple[str, ...], known: str = "") -> str:
    """The close match, else (with `known`, e.g. "known categories") every option: a hint that is
    empty when the typo is far off leaves the user guessing what the names are."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{known}: {', '.join(options) or 'none'}" if known else ""


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Turn frozen pack data back into plain dicts and lists (for JSON and chat templates)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def _list(data: Any, key: str) -> list[Any]:
    """`data[key]` if it is a list, else [] (the schema check reports the wrong type)."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def _dict(data: Any, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- problems


class _Collector:
    """Accumulates problems for one pack so validation reports all of them at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        # Relative POSIX paths of the files the digest covers (set by `_pack_files`).
        self.digested: set[str] | None = None

    def rel(self, path: Path | str) -> str:
        path = Path(path)
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def add(self, file: Path | str, where: str, message: str, hint: str = "") -> None:
        name = self.rel(self.root / file) if not Path(file).is_absolute() else self.rel(file)
        self.problems.append(Problem(file=name, where=where, message=message, hint=hint))


# --------------------------------------------------------------------------- files and paths


def _mapping_duplicates(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """(first, repeat) key nodes of one mapping that repeat a scalar key (merge keys `<<` aside)."""
    seen: dict[tuple[str, str], yaml.Node] = {}
    repeats: list[tuple[yaml.Node, yaml.Node]] = []
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        first = seen.setdefault((key.tag, key.value), key)
        if first is not key:
            repeats.append((first, key))
    return repeats


def duplicate_keys(node: yaml.Node | None) -> list[tuple[yaml.Node, yaml.Node]]:
    """Every repeated key in a composed YAML document (no recursion), in document order."""
    repeats: list[tuple[yaml.Node, yaml.Node]] = []
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            repeats += _mapping_duplicates(current)
            stack.extend(child for pair in current.value for child in pair)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return sorted(repeats, key=lambda pair: (pair[1].start_mark.line, pair[1].start_mark.column))


class ManifestLoader(yaml.SafeLoader):
    """Safe YAML for untrusted files (pack manifests, `pa apply --config`): no repeated keys (YAML
    keeps the last one silently: `action: refuse` then `action: comply` reads as comply), no
    anchors/aliases (they allow exponential 'billion laughs' blow-ups), flow collections ([...], {...}) nested at most
    MAX_NESTING deep (PyYAML's scanner slows down superlinearly with flow depth and its composer
    recurses once per level), and `1e-4` read as the number people mean. PyYAML follows YAML 1.1,
    where a float needs a dot and a signed exponent (`1.0e-4`), so an unquoted learning rate was a
    string, refused as "not of type 'number'". A quoted "1e-4" stays a string."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed here: write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        repeats = _mapping_duplicates(node) if isinstance(node, yaml.MappingNode) else []
        if repeats:
            first, repeat = repeats[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {repeat.value!r} (first on line {first.start_mark.line + 1}): YAML "
                "would keep only the last value", repeat.start_mark)
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):  # type: ignore[no-untyped-def]
        """A value its constructor cannot build (`2001-13-45`, an integer past Python's digit limit,
        `!!bool maybe`) raised ValueError/KeyError/..., which escaped every `except yaml.YAMLError`:
        one such manifest on the search path broke `pa list` and every pack lookup."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value as {kind!r}: {exc}; quote it to make it a string",
                node.start_mark) from None

    def fetch_flow_collection_start(self, TokenClass):  # type: ignore[no-untyped-def]
        if self.flow_level >= MAX_NESTING:
            raise yaml.scanner.ScannerError(None, None, f"[ or {{ nested more than {MAX_NESTING} levels deep",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


ManifestLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                     re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                     list("-+0123456789."))



def _line_index(node: yaml.Node | None, pointer: str = "") -> dict[str, int]:
    """Map JSON pointers to 1-based YAML line numbers, so schema errors can name a line."""
    lines: dict[str, int] = {}
    if node is None:
        return lines
    lines[pointer] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{pointer}/{key.value}"
            lines[child] = key.start_mark.line + 1
            lines.update({k: v for k, v in _line_index(value, child).items() if k != child})
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            lines.update(_line_index(value, f"{pointer}/{index}"))
    return lines


def _too_deep_node(node: yaml.Node | None) -> yaml.Node | None:
    """The first YAML collection nested more than MAX_NESTING levels deep, if any (no recursion)."""
    stack = [(node, 1)] if node is not None else []
    while stack:
        current, depth = stack.pop()
        if isinstance(current, yaml.MappingNode):
            children = [child for pair in current.value for child in pair]
        elif isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        else:
            continue
        if depth > MAX_NESTING:
            return current
        stack.extend((child, depth + 1) for child in reversed(children))
    return None


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether parsed JSON nests lists/dicts more than `limit` levels deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = list(current.values())
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


_PLAIN = (str, bool, int, float, type(None))


def text_problems(value: Any) -> list[tuple[str, str, str]]:
    """(JSON pointer, message, hint) for every place in parsed YAML/JSON that is not plain JSON text data.

    Escapes put characters there that pack text must not hold (`text_problem`): `"\\ud800"` or
    `"\\e[8m"` parse fine, and then the string breaks every UTF-8 write (prompts, JSONL, a
    tokenizer) or drives the terminal of whoever runs `pa show`. YAML also reads an unquoted
    `2024-01-01` as a date, `!!set`/`!!binary` as a set or bytes and `1: x` with a number key, which
    free-form parts (a seed's tools) accept and JSON then cannot write: a traceback in `pa render`."""
    found: list[tuple[str, str, str]] = []
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        current, pointer = stack.pop()
        if isinstance(current, dict):
            for key, child in current.items():
                problem = text_problem(key) if isinstance(key, str) else None
                child_pointer = f"{pointer}/{ascii(key)[1:-1] if problem else key}"
                if problem:
                    found.append((child_pointer, f"key {problem[1]}", problem[2]))
                elif not isinstance(key, str) and pointer:  # top-level keys: the schema names unknown fields
                    found.append((child_pointer, f"key {key!r} is read as {type(key).__name__}, not text",
                                  f'quote it: "{key}"'))
                stack.append((child, child_pointer))
        elif isinstance(current, list):
            stack.extend((child, f"{pointer}/{i}") for i, child in enumerate(current))
        elif isinstance(current, str) and (problem := text_problem(current)):
            found.append((pointer or "/", f"text {problem[1]}", problem[2]))
        elif not isinstance(current, _PLAIN):
            found.append((pointer or "/", f"{current!r:.60} is read as {type(current).__name__}, not plain data",
                          f'quote it to make it text ("{current}"), or use a list or mapping'))
    return sorted(found)


def confined_path(root: Path, rel: str) -> Path | str:
    """Resolve `rel` inside `root`; return an explanation string if it escapes or is unsafe."""
    if not isinstance(rel, str) or not rel:
        return "path must be a non-empty string"
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return "absolute paths are not allowed"
    if ".." in Path(rel).parts:
        return "'..' is not allowed: paths must stay inside the pack"
    target = root / rel
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError):
        return "path cannot be resolved (symlink loop?)"
    if not resolved.is_relative_to(root.resolve()):
        return "path leads outside the pack (through a symlink)"
    return target


def _read_bounded(col: _Collector, rel: str, limit: int, where: str) -> str | None:
    """Read a referenced pack file as UTF-8, reporting escape, absence, size and encoding problems."""
    target = confined_path(col.root, rel)
    if isinstance(target, str):
        col.add(MANIFEST, where, f"{rel!r}: {target}", "use a relative path to a file inside the pack directory")
        return None
    if not target.is_file():
        col.add(MANIFEST, where, f"referenced file {rel!r} does not exist", "create the file or fix the path")
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
        col.add(rel, "", f"file is {size} bytes, over the {limit}-byte limit", "split or shorten the file")
        return None
    try:
        # utf-8-sig: a byte-order mark (Windows editors add one) would otherwise open the teacher's
        # system message and every synthesis prompt, and make line 1 of an eval set malformed JSON.
        text = target.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        col.add(rel, f"byte {exc.start}", "file is not valid UTF-8", "save the file as UTF-8")
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


def _pack_files(col: _Collector) -> list[Path]:
    """Every regular file of the pack (hidden entries skipped), checking links and bounds."""
    files: list[Path] = []
    total = 0
    root = col.root.resolve()
    for path in sorted(col.root.rglob("*")):
        rel = path.relative_to(col.root)
        if any(not_pack_content(part) for part in rel.parts):
            continue
        if LONE_SURROGATE.search(str(rel)):  # os.fsdecode's surrogateescape: the name's bytes are not UTF-8
            col.add(os.fsencode(rel).decode("utf-8", "backslashreplace"), "", "file name is not valid UTF-8",
                    "rename the file (pack file names are UTF-8, as in git)")
            continue
        if path.is_symlink():
            try:
                target = path.resolve()
            except (OSError, RuntimeError):
                col.add(str(rel), "", "symlink cannot be resolved", "remove the symlink")
                continue
            if not target.is_relative_to(root):
                col.add(str(rel), "", f"symlink points outside the pack ({target})",
                        "replace the symlink with a copy of the file inside the pack")
                continue
        if path.is_dir():
            continue
        if not path.is_file():
            col.add(str(rel), "", "not a regular file", "packs may contain only regular files and directories")
            continue
        total += path.stat().st_size
        files.append(path)
    if len(files) > MAX_PACK_FILES:
        col.add(".", "", f"pack has {len(files)} files, over the limit of {MAX_PACK_FILES}", "remove unused files")
    if total > MAX_PACK_BYTES:
        col.add(".", "", f"pack is {total} bytes, over the limit of {MAX_PACK_BYTES}", "shrink the eval sets")
    col.digested = {path.relative_to(col.root).as_posix() for path in files}
    return files


def files_digest(root: Path, files: list[Path]) -> str:
    """sha256 over sorted relative paths and content with normalised line endings."""
    digest = hashlib.sha256(DIGEST_PREFIX)
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        data = path.read_bytes()
        try:
            data = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
        except UnicodeDecodeError:
            pass
        rel = path.relative_to(root).as_posix().encode("utf-8")
        digest.update(len(rel).to_bytes(8, "big") + rel + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def parent_records(pack: Pack) -> list[dict[str, str]]:
    """Every pack `pack` extends, directly or not (ancestry order, parents first), as provenance
    records it: name, version and digest. Empty for a pack without parents. The child's digest
    composes these already; the records say, readably, which version of each was inside."""
    return [{"name": p.name, "version": p.version, "digest": p.digest} for p in pack.ancestry()[:-1]]


def compose_digest(own: str, parents: tuple[Pack, ...]) -> str:
    digest = hashlib.sha256(DIGEST_PREFIX + own.encode())
    for parent in parents:
        digest.update(f"\n{parent.ref}:{parent.digest}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- manifest


def _load_manifest(col: _Collector) -> tuple[dict[str, Any] | None, dict[str, int]]:
    path = col.root / MANIFEST
    if not path.is_file():
        col.add(MANIFEST, "", "pack.yaml is missing", "every pack needs a pack.yaml manifest (see `pa new`)")
        return None, {}
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        col.add(MANIFEST, "", f"file is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit for the manifest",
                "move eval items to eval/*.jsonl and shorten long descriptions")
        return None, {}
    try:
        text = path.read_text(encoding="utf-8")
        loader = ManifestLoader(text)
        try:
            node = loader.get_single_node()
            deep = _too_deep_node(node)
            if deep is not None:
                col.add(MANIFEST, f"line {deep.start_mark.line + 1}", f"YAML nested more than {MAX_NESTING} levels deep",
                        "flatten this value: no manifest field needs deep nesting")
                return None, {}
            repeats = duplicate_keys(node)
            for first, repeat in repeats:
                col.add(MANIFEST, f"line {repeat.start_mark.line + 1}",
                        f"duplicate key {repeat.value!r} (first on line {first.start_mark.line + 1}); YAML would "
                        "silently keep only the last value", "delete one of the two, or merge them into one")
            if repeats:
                return None, {}
            data = loader.construct_document(node) if node is not None else None
        except RecursionError:
            col.add(MANIFEST, f"line {loader.line + 1}", f"YAML nested more than {MAX_NESTING} levels deep",
                    "flatten this value: no manifest field needs deep nesting")
            return None, {}
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        col.add(MANIFEST, "", "manifest is not valid UTF-8", "save pack.yaml as UTF-8")
        return None, {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        col.add(MANIFEST, where, f"invalid YAML: {getattr(exc, 'problem', None) or exc}", "fix the YAML syntax")
        return None, {}
    if not isinstance(data, dict):
        col.add(MANIFEST, "", "manifest must be a YAML mapping", "start with `name: ...`, `version: ...`")
        return None, {}
    return data, _line_index(node)


def _schema_problems(col: _Collector, data: dict[str, Any], lines: dict[str, int]) -> set[str]:
    """Report schema violations; return the top-level sections that have any."""
    from .schema import manifest_validator

    broken: set[str] = set()
    for error in sorted(manifest_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        path = [str(p) for p in error.absolute_path]
        pointer = "/" + "/".join(path)
        where = pointer + (f" (line {lines[pointer]})" if pointer in lines else "")
        col.add(MANIFEST, where, _schema_message(error), _schema_hint(error))
        broken.add(path[0] if path else "")
    return broken


def _schema_message(error: Any) -> str:
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown field(s)")
    if error.validator == "required":
        return f"missing required field {error.message.split(' ')[0]}"
    return error.message


def _schema_hint(error: Any) -> str:
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
        suggestions = [did_you_mean(str(k), allowed) for k in extra]  # YAML keys may be numbers or null
        hint = "; ".join(s for s in suggestions if s)
        return hint or f"allowed fields: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"use one of: {', '.join(map(str, error.validator_value))}"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    return description or ""


# --------------------------------------------------------------------------- categories and composition


def _seed(category_id: str, index: int, raw: Any) -> Seed:
    if isinstance(raw, str):
        return Seed(f"{category_id}/seed-{index}", (_freeze({"role": "user", "content": raw}),))
    return Seed(f"{category_id}/seed-{index}", _freeze(raw.get("messages", [])), _freeze(raw.get("tools", [])))


def _own_categories(col: _Collector, data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    cats = [c for c in _list(data, "categories") if isinstance(c, dict) and isinstance(c.get("id"), str)]
    seen: set[str] = set()
    for index, cat in enumerate(cats):
        if cat["id"] in seen:
            col.add(MANIFEST, f"/categories/{index}/id", f"duplicate category id {cat['id']!r}",
                    "give each category a unique id")
        seen.add(cat["id"])
    return cats


def _new_category(col: _Collector, index: int, raw: dict[str, Any], origin: str) -> Category | None:
    missing = [k for k in ("title", "description", "action") if k not in raw]
    if missing:
        col.add(MANIFEST, f"/categories/{index}", f"new category {raw['id']!r} is missing {', '.join(missing)}",
                "a category not inherited from a parent needs title, description and action")
        return None
    if raw.get("remove"):
        col.add(MANIFEST, f"/categories/{index}/remove", f"category {raw['id']!r} is not inherited, nothing to remove",
                "`remove: true` only drops a parent's category")
        return None
    seeds = tuple(_seed(raw["id"], i, s) for i, s in enumerate(_list(raw, "seeds")))
    locked = bool(raw.get("locked", False))
    return Category(raw["id"], raw["title"], raw["description"], raw["action"], locked, seeds, origin,
                    origin if locked else "")


def _override(col: _Collector, index: int, parent: Category, raw: dict[str, Any], origin: str) -> Category | None:
    """Apply a child's category entry to an inherited one, enforcing the lock rules."""
    where = f"/categories/{index}"
    if parent.locked:
        if raw.get("remove"):
            col.add(MANIFEST, where + "/remove", f"category {parent.id!r} is locked by {parent.locked_by or parent.origin!r} and cannot be removed",
                    "locked categories are the non-overridable global layer; delete this entry")
            return parent
        if "action" in raw and ACTION_STRENGTH.get(raw["action"], 0) < ACTION_STRENGTH[parent.action]:
            col.add(MANIFEST, where + "/action",
                    f"category {parent.id!r} is locked by {parent.locked_by or parent.origin!r} at {parent.action!r}; {raw['action']!r} weakens it",
                    f"use {parent.action!r} or a stricter action (refuse > guide > comply)")
            return parent
        if raw.get("locked") is False:
            col.add(MANIFEST, where + "/locked", f"category {parent.id!r} is locked by {parent.locked_by or parent.origin!r} and cannot be unlocked",
                    "remove `locked: false`")
            return parent
        # The description is what the generator writes violations from and the judges grade with:
        # rewriting it ("not a violation: ...") would weaken the category while its action stays put.
        reworded = [key for key in ("title", "description") if key in raw and raw[key] != getattr(parent, key)]
        if reworded:
            col.add(MANIFEST, f"{where}/{reworded[0]}",
                    f"category {parent.id!r} is locked by {parent.locked_by or parent.origin!r}; its {' and '.join(reworded)} "
                    "cannot be changed", "delete the field here; add seeds to the category, or a category of your own "
                    "for what your domain adds")
            return parent
    if raw.get("remove"):
        return None
    extra = tuple(_seed(parent.id, len(parent.seeds) + i, s) for i, s in enumerate(_list(raw, "seeds")))
    locked_by = (parent.locked_by or parent.origin) if parent.locked else (origin if raw.get("locked") else "")
    return Category(parent.id, raw.get("title", parent.title), raw.get("description", parent.description),
                    raw.get("action", parent.action), parent.locked or bool(raw.get("locked", False)),
                    parent.seeds + extra, parent.origin, locked_by)


def _seed_key(seed: Seed) -> str:
    return json.dumps([thaw(seed.messages), thaw(seed.tools)], sort_keys=True, ensure_ascii=False)


def _merge_inherited(copies: list[Category]) -> Category:
    """One category inherited from several parents (a diamond): nothing any parent set is lost.

    The strictest action wins (its copy gives title, description and origin; the first parent's
    on a tie), it is locked if any parent locks it, and the seeds are combined in parent order,
    duplicates dropped.
    """
    if len(copies) == 1:
        return copies[0]
    base = max(copies, key=lambda c: ACTION_STRENGTH[c.action])  # max() keeps the first of equals
    lockers = [c for c in copies if c.locked]
    seeds: dict[str, Seed] = {}
    for cat in copies:
        for seed in cat.seeds:
            seeds.setdefault(_seed_key(seed), seed)
    renumbered = tuple(Seed(f"{base.id}/seed-{i}", s.messages, s.tools) for i, s in enumerate(seeds.values()))
    return Category(base.id, base.title, base.description, base.action, bool(lockers), renumbered, base.origin,
                    (lockers[0].locked_by or lockers[0].origin) if lockers else "")


def _compose_categories(col: _Collector, parents: tuple[Pack, ...], own: list[dict[str, Any]], name: str) -> tuple[Category, ...]:
    copies: dict[str, list[Category]] = {}
    for parent in parents:
        for cat in parent.categories:
            copies.setdefault(cat.id, []).append(cat)
    merged = {cat_id: _merge_inherited(cats) for cat_id, cats in copies.items()}
    for index, raw in enumerate(own):
        if raw["id"] in merged:
            result = _override(col, index, merged[raw["id"]], raw, name)
            if result is None:
                del merged[raw["id"]]
            else:
                merged[raw["id"]] = result
        else:
            new = _new_category(col, index, raw, name)
            if new is not None:
                merged[new.id] = new
    return tuple(merged.values())


def _resolve_parents(col: _Collector, data: dict[str, Any], registry: "Registry | None",
                     stack: tuple[str, ...]) -> tuple[Pack, ...]:
    specs = [s for s in _list(data, "extends") if isinstance(s, str)]
    if not specs:
        return ()
    if registry is None:
        from .registry import Registry

        registry = Registry.default()
    registry = registry.including(col.root.parent)  # sibling packs can always be parents
    parents: list[Pack] = []
    for index, spec in enumerate(specs):
        parent = _load_parent(col, registry, spec, f"/extends/{index}", stack)
        if parent is not None:
            parents.append(parent)
    _check_one_version_each(col, parents)
    return tuple(parents)


def _check_one_version_each(col: _Collector, parents: list[Pack]) -> None:
    """Two versions of one pack in the ancestry (`extends: [general@^2, medical@^1]` with medical on
    general@^1) cannot compose: the policy keeps one of them under its name and drops the other's
    text, while the categories of both are merged."""
    seen: dict[str, tuple[str, str]] = {}
    for parent in parents:
        for pack in parent.ancestry():
            via = parent.ref if pack is parent else f"{pack.ref} through {parent.ref}"
            first = seen.setdefault(pack.name, (pack.version, via))
            if first[0] != pack.version:
                col.add(MANIFEST, "/extends", f"the parents need two versions of {pack.name!r}: {first[1]} and {via}",
                        f"change the version ranges in `extends` so that every parent uses the same {pack.name} version")


def _load_parent(col: _Collector, registry: "Registry", spec: str, where: str, stack: tuple[str, ...]) -> Pack | None:
    from .errors import ResolveError

    name = spec.split("@", 1)[0]
    if name in stack:
        cycle = " -> ".join([*stack, name])
        col.add(MANIFEST, where, f"extends cycle: {cycle}", "a pack cannot (indirectly) extend itself")
        return None
    try:
        path = registry.resolve_name(spec, parent=True)
    except ResolveError as exc:
        col.add(MANIFEST, where, f"parent {spec!r} not found: {exc.problem.message}", exc.problem.hint)
        return None
    try:
        return load_pack(path, registry=registry, _stack=stack)
    except PackError as exc:
        cycle = [p for p in exc.problems if "extends cycle" in p.message]
        if cycle:
            col.problems.extend(cycle)
        else:
            col.add(MANIFEST, where, f"parent {spec!r} is invalid ({len(exc.problems)} problems)",
                    f"run `pa validate {path}` and fix the parent first")
        return None


def _compose_policy(parents: tuple[Pack, ...], title: str, ref: str, own: str) -> str:
    sections: list[str] = []
    seen: set[str] = set()
    for parent in parents:
        for pack in parent.ancestry():
            if pack.name not in seen:
                seen.add(pack.name)
                sections.append(f"# {pack.title} ({pack.ref})\n\n{pack.own_policy.strip()}")
    sections.append(f"# {title} ({ref})\n\n{own.strip()}")
    return "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------- templates and eval sets


def template_variables(pack_name: str, title: str, summary: str, category: Category, n: int) -> dict[str, Any]:
    """The only variables a synthesis template sees (plain data, no objects)."""
    return {
        "pack": {"name": pack_name, "title": title, "summary": summary},
        "category": {"id": category.id, "title": category.title, "description": category.description,
                     "action": category.action},
        "n": n,
        "seeds": [seed.text for seed in category.seeds],
    }


def _templates(col: _Collector, data: dict[str, Any], categories: tuple[Category, ...]) -> tuple[TemplateSpec, ...]:
    specs: list[TemplateSpec] = []
    synthesis = _dict(data, "synthesis")
    entries = [t for t in _list(synthesis, "templates") if isinstance(t, dict)]
    seen: set[str] = set()
    n = synthesis.get("count_per_category", 20)
    work = WorkBudget()  # one budget for every render below: bounds the time validation can take
    for index, entry in enumerate(entries):
        if entry.get("id") in seen:
            col.add(MANIFEST, f"/synthesis/templates/{index}/id", f"duplicate template id {entry.get('id')!r}",
                    "give each template a unique id")
        seen.add(entry.get("id"))
        source = _read_bounded(col, entry.get("file", ""), MAX_TEMPLATE_BYTES, f"/synthesis/templates/{index}/file")
        if source is None:
            continue
        if _check_template(col, entry["file"], source, data, categories, n if isinstance(n, int) else 20, work):
            specs.append(TemplateSpec(entry.get("id", ""), entry["file"], entry.get("description", ""),
                                      entry.get("format", "list"), source))
    return tuple(specs)


def _check_template(col: _Collector, file: str, source: str, data: dict[str, Any],
                    categories: tuple[Category, ...], n: int, work: WorkBudget) -> bool:
    try:
        template = compile_template(source)
    except TemplateFailure as exc:
        col.add(file, f"line {exc.line}" if exc.line else "", exc.message, exc.hint)
        return False
    for cat in categories:
        variables = template_variables(str(data.get("name")), str(data.get("title")), str(data.get("summary")), cat, n)
        try:
            render_template(template, variables, work)
        except TemplateFailure as exc:
            where = (f"line {exc.line}, " if exc.line else "") + f"category {cat.id!r}"
            col.add(file, where, exc.message, exc.hint)
            return False
    return True


def _eval_sets(col: _Collector, data: dict[str, Any], categories: tuple[Category, ...]) -> tuple[EvalSet, ...]:
    known = [c.id for c in categories]
    seen_ids: dict[str, str] = {}
    sets: list[EvalSet] = []
    names: set[str] = set()
    for index, entry in enumerate(e for e in _list(data, "eval") if isinstance(e, dict)):
        if entry.get("name") in names:
            col.add(MANIFEST, f"/eval/{index}/name", f"duplicate eval set name {entry.get('name')!r}", "rename one")
        names.add(entry.get("name"))
        text = _read_bounded(col, entry.get("file", ""), MAX_EVAL_BYTES, f"/eval/{index}/file")
        if text is None:
            continue
        if not text.strip():  # an unsaved or truncated file: the set would measure nothing, silently
            col.add(entry["file"], "", f"eval set {entry.get('name')!r} is empty",
                    "add one eval item per line (schemas/eval-item.schema.json), or drop the set from `eval`")
            continue
        items = _eval_items(col, entry["file"], text, known, seen_ids, str(entry.get("kind")))
        sets.append(EvalSet(str(entry.get("name")), str(entry.get("kind")), entry["file"], tuple(items)))
    return tuple(sets)


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text. Only \\n, \\r\\n and \\r end a line: str.splitlines() also splits on
    U+2028, U+0085 and other characters that JSON strings may hold raw (ensure_ascii=False writes them)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads hook: a repeated key is an error (`"expect": "refuse", "expect": "comply"` is a typo, not data)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _eval_items(col: _Collector, file: str, text: str, known: list[str], seen_ids: dict[str, str],
                kind: str) -> list[EvalItem]:
    from .schema import eval_item_validator

    validator = eval_item_validator()
    items: list[EvalItem] = []
    for lineno, line in enumerate(jsonl_lines(text), start=1):
        if not line.strip():
            continue
        if len(items) >= MAX_EVAL_ITEMS:
            col.add(file, f"line {lineno}", f"more than {MAX_EVAL_ITEMS} items", "split the eval set")
            break
        try:
            raw = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            col.add(file, f"line {lineno}", f"duplicate key {exc.key!r} in one JSON object; JSON would silently "
                    "keep only the last value", "delete one of the two")
            continue
        except json.JSONDecodeError as exc:
            col.add(file, f"line {lineno}", f"malformed JSON: {exc.msg} (column {exc.colno})",
                    "each line must be one complete JSON object")
            continue
        except RecursionError:
            deep = True
        except ValueError:  # not a JSONDecodeError: an integer literal past Python's digit limit
            col.add(file, f"line {lineno}", f"malformed JSON: an integer with more than {sys.get_int_max_str_digits()} "
                    "digits", "eval items need no huge numbers: remove it or write it as a string")
            continue
        else:
            deep = too_deep(raw)
        if deep:
            col.add(file, f"line {lineno}", f"JSON nested more than {MAX_NESTING} levels deep",
                    "flatten the item: eval items need no deep nesting")
            continue
        item = _eval_item(col, file, lineno, raw, validator, known, seen_ids)
        if item is not None and _expect_fits_kind(col, file, f"line {lineno}", item, kind):
            items.append(item)
    return items


def _eval_item(col: _Collector, file: str, lineno: int, raw: Any, validator: Any, known: list[str],
               seen_ids: dict[str, str]) -> EvalItem | None:
    errors = list(validator.iter_errors(raw))
    bad_text = text_problems(raw)
    for pointer, message, hint in bad_text:
        col.add(file, f"line {lineno} {pointer}", message, hint)
    for error in errors:
        pointer = "/" + "/".join(str(p) for p in error.absolute_path)
        message = ("needs exactly one of 'prompt' or 'messages'" if error.validator == "oneOf"
                   else _schema_message(error))
        col.add(file, f"line {lineno} {pointer}", message, _schema_hint(error))
    if errors or bad_text:
        return None
    where = f"line {lineno}"
    if raw["id"] in seen_ids:
        col.add(file, where + " /id", f"duplicate eval item id {raw['id']!r} (first in {seen_ids[raw['id']]})",
                "eval item ids must be unique across the pack")
    seen_ids.setdefault(raw["id"], f"{file} line {lineno}")
    if raw["category"] not in known:
        col.add(file, where + " /category", f"unknown category {raw['category']!r}",
                did_you_mean(raw["category"], known, "known categories"))
        return None
    if not _forbidden_tools_offered(col, file, where, raw):
        return None
    messages = raw.get("messages") or [{"role": "user", "content": raw["prompt"]}]
    return EvalItem(raw["id"], raw["category"], _freeze(messages), _freeze(raw.get("tools", [])), raw["expect"],
                    tuple(raw.get("forbidden_tools", [])), raw.get("note", ""))


def _expect_fits_kind(col: _Collector, file: str, where: str, item: EvalItem, kind: str) -> bool:
    """Metrics count an item by its `expect`, not by its set: a `comply` item in a safety set left the
    set's violation rate and silently joined the over-refusal rate (a harmful prompt the model rightly
    refused counted as over-refusal), while the card still listed it among the safety set's items."""
    from .schema import KIND_EXPECTS

    allowed = KIND_EXPECTS.get(kind)
    if allowed is None or item.expect in allowed:
        return True
    other = "an over-refusal" if kind == "safety" else "a safety"
    col.add(file, f"{where} /expect", f"expect {item.expect!r} in a set of kind {kind!r} (its items expect "
            f"{' or '.join(repr(e) for e in allowed)})", f"fix the label, or move the item to {other} set")
    return False


def _tool_name(tool: Any) -> str | None:
    """The name of a tool definition, OpenAI style ({"function": {"name": ...}}) or flat ({"name": ...})."""
    spec = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name else None


def _forbidden_tools_offered(col: _Collector, file: str, where: str, raw: dict[str, Any]) -> bool:
    """Every forbidden tool must be one the item offers: a typo ('send_emial') or a missing `tools`
    made the forbidden-call check vacuous, silently (the model cannot call a tool it is not given)."""
    offered = sorted({name for tool in raw.get("tools", []) if (name := _tool_name(tool))})
    missing = [(i, name) for i, name in enumerate(raw.get("forbidden_tools", [])) if name not in offered]
    for i, name in missing:
        col.add(file, f"{where} /forbidden_tools/{i}", f"forbidden tool {name!r} is not one of this item's tools",
                did_you_mean(name, offered) or f"its tools: {', '.join(offered) or 'none (add them under `tools`)'}")
    return not missing


def _check_changelog(col: _Collector, version: str) -> None:
    path = col.root / CHANGELOG
    if not path.is_file():
        col.add(CHANGELOG, "", "CHANGELOG.md is missing", f"add CHANGELOG.md with a `## {version}` entry")
        return
    size = path.stat().st_size
    if size > MAX_OTHER_BYTES:
        col.add(CHANGELOG, "", f"file is {size} bytes, over the {MAX_OTHER_BYTES}-byte limit",
                "shorten the changelog (move old entries elsewhere)")
        return
    if changelog_entry(path.read_text(encoding="utf-8", errors="replace"), version) is None:
        col.add(CHANGELOG, "", f"no entry for version {version}",
                f"add a heading `## {version}` describing what changed")


def changelog_entry(text: str, version: str) -> str | None:
    """The CHANGELOG entry for `version` (its heading up to the next heading), or None without one.

    Headings are matched loosely (`## 1.2.0`, `## [1.2.0] - date`, `# v1.2.0`): changelog styles differ."""
    heading = re.search(rf"^#+\s*\[?v?{re.escape(version)}\]?(\s|$)", text, re.MULTILINE)
    if heading is None:
        return None
    body = text.find("\n", heading.start()) + 1 or len(text)
    following = re.search(r"^#", text[body:], re.MULTILINE)
    return text[heading.start():body + following.start() if following else len(text)]


# --------------------------------------------------------------------------- entry point


def load_pack(path: str | Path, *, registry: "Registry | None" = None, _stack: tuple[str, ...] = ()) -> Pack:
    """Load and validate the pack at `path`, composing its parents through `registry`.

    Raises PackError with every problem found. Parents are resolved with `registry`
    (default: the standard search path plus the pack's own parent directory).
    """
    root = Path(path)
    if root.name in ("", ".."):  # `.` or `..`: the pack's name and its siblings need the real directory
        root = root.resolve()
    col = _Collector(root)
    if not root.is_dir():
        col.add(root.resolve(), "", "pack directory does not exist", "pass the path of a directory holding pack.yaml")
        raise PackError(col.problems)
    if registry is not None:
        cached = registry.cached(root)
        if cached is not None:
            return cached
    data, lines = _load_manifest(col)
    if data is None:
        raise PackError(col.problems)
    pack = _build(col, data, lines, registry, _stack)
    if col.problems or pack is None:
        raise PackError(col.problems)
    if registry is not None:
        registry.remember(root, pack)
    return pack


def _build(col: _Collector, data: dict[str, Any], lines: dict[str, int], registry: "Registry | None",
           stack: tuple[str, ...]) -> Pack | None:
    broken = _schema_problems(col, data, lines)
    for pointer, message, hint in text_problems(data):
        col.add(MANIFEST, pointer + (f" (line {lines[pointer]})" if pointer in lines else ""), message, hint)
        broken.add(pointer.split("/")[1])  # its section is not checked further (it would fail again, or crash)
    name, version = data.get("name"), data.get("version")
    if isinstance(name, str) and name != col.root.name:
        col.add(MANIFEST, "/name", f"name {name!r} does not match the directory name {col.root.name!r}",
                f"rename the directory to {name!r} or set name: {col.root.name}")
    if isinstance(version, str) and not is_semver(version):
        col.add(MANIFEST, "/version", f"{version!r} is not a semantic version", "use MAJOR.MINOR.PATCH, e.g. 1.0.0")
    files = _pack_files(col)
    policy = _read_bounded(col, data.get("policy", ""), MAX_POLICY_BYTES, "/policy") if isinstance(data.get("policy"), str) else None
    if policy is not None and not policy.strip():
        col.add(str(data["policy"]), "", "policy text is empty", "write the policy the teacher should follow")
    if isinstance(version, str) and is_semver(version):
        _check_changelog(col, version)
    # Deeper checks assume their section passed the schema; a broken section is reported once, above.
    parents = _resolve_parents(col, data, registry, (*stack, str(name))) if "extends" not in broken else ()
    categories = () if broken & {"categories", ""} else _compose_categories(
        col, parents, _own_categories(col, data, str(name)), str(name))
    templates = _templates(col, data, categories) if not broken & {"synthesis", "name", "title", "summary"} else ()
    eval_sets = _eval_sets(col, data, categories) if categories and "eval" not in broken else ()
    if col.problems or policy is None:
        return None
    own_digest = files_digest(col.root, files)
    ref = f"{name}@{version}"
    synthesis = {k: v for k, v in data["synthesis"].items() if k != "templates"}
    return Pack(
        name=name, version=version, title=data["title"], summary=data["summary"], license=data["license"],
        root=col.root, own_policy=policy, policy=_compose_policy(parents, data["title"], ref, policy),
        extends=tuple(data.get("extends", [])), parents=parents, categories=categories, templates=templates,
        synthesis=_freeze(synthesis), eval_sets=eval_sets, training=_freeze(data.get("training", {})),
        files_digest=own_digest, digest=compose_digest(own_digest, parents), manifest=_freeze(data),
    )
