"""Validate many packs at once and gather every problem, for `pa validate` and CI."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError, PackError, Problem, problem_count
from .pack import Pack, Seed, load_pack, parse_seed
from .pack_input import MANIFEST, manifest_place
from .pack_index import index_problems
from .registry import INDEX_FILE, Registry
from .scaffold import draft_leftovers


@dataclass
class ValidationReport:
    packs: list[Pack] = field(default_factory=list)
    failures: dict[str, list[Problem]] = field(default_factory=dict)
    index: list[Problem] = field(default_factory=list)
    drafts: dict[str, list[Problem]] = field(default_factory=dict)  # valid, but `pa new` stand-in text is left
    warnings: dict[str, list[Problem]] = field(default_factory=dict)  # valid, but a file pack.yaml does not list

    @property
    def ok(self) -> bool:
        return not self.failures and not self.index

    def distinct_problems(self) -> list[Problem]:
        """Every failing pack's problems, each once: packs extending each other in a loop all fail on the one
        cycle, which was listed and counted once per pack ("2 problem(s) found" for one cycle)."""
        return list(dict.fromkeys(p for problems in self.failures.values() for p in problems))

    def problem_count(self) -> int:
        return problem_count(self.distinct_problems()) + len(self.index)


def validate_paths(paths: list[Path], registry: Registry) -> ValidationReport:
    report = ValidationReport()
    for path in paths:
        try:
            pack = load_pack(path, registry=registry)
        except PackError as exc:
            report.failures[str(path)] = exc.problems
            continue
        report.packs.append(pack)
        if copies := seed_copy_problems(pack):
            report.failures[str(pack.root)] = copies
        if leftovers := draft_leftovers(pack):
            report.drafts[str(pack.root)] = leftovers
        if warnings := pack_warnings(pack):
            report.warnings[str(pack.root)] = warnings
    return report


def pack_warnings(pack: Pack) -> list[Problem]:
    """What is worth saying about a valid pack without failing it (packs already published so must still
    pull): `pa validate` lists these, and `pa pack push` before it uploads."""
    return [*unlisted_files(pack), *byte_order_marks(pack)]


# The pack's own files pack.yaml lists by folder and suffix, and where it lists them.
LISTED_FILES = (("templates", ".jinja", "synthesis.templates"), ("eval", ".jsonl", "eval"))


def unlisted_files(pack: Pack) -> list[Problem]:
    """A template or eval set in the pack's folder that its pack.yaml does not list: validation never reads
    it, synthesis and `pa eval` never use it, and `pa pack push` publishes it (a renamed eval set's old file,
    or one whose entry was forgotten). A warning, not a problem: packs already published with such a file
    must still pull. Among the files the loader walked (`Pack.files`): those are the ones pushed."""
    synthesis = pack.manifest.get("synthesis")
    entries = [*(synthesis.get("templates") or () if isinstance(synthesis, Mapping) else ()), *(pack.manifest.get("eval") or ())]
    listed = {posixpath.normpath(e["file"]) for e in entries if isinstance(e, Mapping) and isinstance(e.get("file"), str)}
    found = []
    for folder, suffix, section in LISTED_FILES:
        for rel in pack.files:
            if rel.startswith(f"{folder}/") and rel.endswith(suffix) and rel not in listed:
                found.append(Problem(str(pack.root.joinpath(*rel.split("/"))), "", f"not listed in {MANIFEST}: `pa "
                                     "validate` does not check it, no stage uses it, and `pa pack push` publishes it",
                                     f"list it under `{section}` in {MANIFEST}, or delete it"))
    return found


UTF8_BOM = b"\xef\xbb\xbf"


def byte_order_marks(pack: Pack) -> list[Problem]:
    """A pack file starting with a UTF-8 byte-order mark (Windows editors add one). Every loader reads past it,
    but the digest counts it, as it does not count CRLF line endings (which a checkout may change): saved again
    without one, the same text had another digest, and `pa validate --all` asked for a new version with nothing
    to see in the file. Warned about, not stripped from the digest: that would change the digest of every pack
    already published or trained on with one, and `pa pack pull` would refuse them as changed."""
    found = []
    for rel in pack.files:
        path = pack.root.joinpath(*rel.split("/"))
        with path.open("rb") as handle:
            if handle.read(len(UTF8_BOM)) == UTF8_BOM:
                found.append(Problem(str(path), "line 1", "starts with a UTF-8 byte-order mark, which the pack digest "
                                     "counts (unlike line endings): saved without one, the same text has another digest",
                                     "save it as UTF-8 without a byte-order mark"))
    return found


def seed_copy_problems(pack: Pack) -> list[Problem]:
    """A seed that copies an eval item loads fine, then synthesis drops it from every run's training as
    `contaminated`: the author learns of it from a count in synthesis.json, if at all. One a parent
    already has is that parent's problem, reported when it is validated."""
    from .synthesize import seed_copies

    inherited = {(seed.text, text) for ancestor in pack.ancestry()[:-1] for seed, _, text in seed_copies(ancestor)}
    return [_seed_copy_problem(pack, seed, label, text)
            for seed, label, text in seed_copies(pack) if (seed.text, text) not in inherited]


def _seed_copy_problem(pack: Pack, seed: Seed, label: str, text: str) -> Problem:
    """Named where the fix belongs: a parent's seed copied by one of this pack's eval items is that item's
    to change (pack.yaml was named, which does not hold the seed, and "rewrite the seed" meant the parent)."""
    message = (f"{seed.text[:80]!r} copies eval item {label} ({text[:80]!r}), so synthesis drops it from training "
               "as contaminated")
    why = "so that neither repeats or closely paraphrases the other (packs/README.md, 'Know what decontamination catches')"
    owner = _seed_owner(pack, seed)
    own_set = next((s for s in pack.eval_sets if not s.origin and label.startswith(f"{s.name}/")), None)
    if owner is not pack and own_set is not None:
        return Problem(str(pack.root / own_set.file), f"item {label[len(own_set.name) + 1:]}",
                       f"{message} (the seed is {owner.ref}'s, category {seed.id.split('/')[0]})",
                       hint=f"rewrite this eval item {why}")
    return Problem(str(pack.root / MANIFEST), _own_seed_place(pack, seed), message,
                   hint=f"rewrite the seed or the eval item {why}")


def _own_seed_place(pack: Pack, seed: Seed) -> str:
    """Where `pack`'s manifest lists `seed`: its JSON pointer and line, as other pack.yaml problems are
    placed. The seed's id numbers it in the composed category, after the parents' seeds, so a child's
    only seed of an inherited category was named "seed voter-suppression/seed-5" in a list of one."""
    pointer = _own_seed_pointer(pack, seed)
    if pointer is None:
        return f"seed {seed.id}"
    return manifest_place(pointer, pack.manifest_lines)


def _seed_owner(pack: Pack, seed: Seed) -> Pack:
    """The pack in `pack`'s ancestry whose own manifest lists `seed` (the nearest, `pack` itself first)."""
    return next((c for c in reversed(pack.ancestry()) if _own_seed_pointer(c, seed) is not None), pack)


def _own_seed_pointer(pack: Pack, seed: Seed) -> str | None:
    """The JSON pointer of `seed` in `pack`'s own manifest (under the first category of its id, the one
    composed), None where that manifest does not list it."""
    category = seed.id.split("/")[0]
    for index, own in enumerate(pack.manifest.get("categories", ())):
        if own.get("id") == category:
            return next((f"/categories/{index}/seeds/{number}" for number, raw in enumerate(own.get("seeds", ()))
                         if parse_seed(category, number, raw).text == seed.text), None)
    return None


def validate_all(packs_dir: Path, registry: Registry) -> ValidationReport:
    """Every pack under `packs_dir`, plus the INDEX.json consistency checks CI relies on.

    A `packs_dir` that is not a directory (a typo in --dir) is an error: `pa index` created it and
    wrote an empty index there, and `pa validate --all` only said the index was missing."""
    if not packs_dir.is_dir():  # a file was "packs directory X does not exist", though it is right there
        what = "is a file, not a directory" if packs_dir.exists() else "does not exist"
        raise InvalidInputError(f"packs directory {packs_dir} {what}", file=str(packs_dir),
                                hint="pass --dir the directory that holds the packs (default: packs, from the repository root)")
    if (packs_dir / MANIFEST).is_file():  # every subfolder (eval/, templates/) would be "missing pack.yaml"
        raise InvalidInputError(f"{packs_dir} is a pack, not a directory of packs", file=str(packs_dir),
                                hint=f"pass --dir its parent ({packs_dir.resolve().parent}), "
                                     f"or validate this pack alone: `pa validate {packs_dir}`")
    dirs = sorted(c for c in packs_dir.iterdir() if c.is_dir() and not c.name.startswith("."))
    report = validate_paths(dirs, registry)
    if not report.failures:
        report.index = index_problems(packs_dir / INDEX_FILE, report.packs)
    return report
