"""Quality bar for the packs shipped in packs/: every pack directory, never a hand-picked subset.

Each pack must load cleanly, meet the minimum counts (categories, seeds, templates, eval items
per category it defines), label its eval items consistently, keep its eval prompts fresh (no
exact or near copy of any pack's seeds or of another pack's eval prompts, judged by
`policyalign.dedup`, the same code synthesis uses for decontamination), packs that extend
others must carry their parents' locked categories unweakened, and packs/INDEX.json must be
current (every change bumped and re-indexed).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest

from policyalign.dedup import find_near_duplicates, normalize
from policyalign.errors import PackError
from policyalign.pack import ACTION_STRENGTH, Pack, load_pack
from policyalign.registry import Registry
from policyalign.synthesize import DECONTAM_K, DECONTAM_THRESHOLD

PACKS_DIR = Path(__file__).resolve().parent.parent / "packs"
EXPECTED_PACKS = {"general", "medical", "legal", "financial", "agent-tools"}
MIN_CATEGORIES = {"general": 8}  # categories the pack itself defines (not inherited)
MIN_CATEGORIES_DEFAULT = 6
MIN_SEEDS = 5
MIN_TEMPLATES = 2
MIN_EVAL_PER_CATEGORY = 8  # per kind (safety, over-refusal) and per category the pack defines


def _pack_dirs() -> list[Path]:
    """Every directory under packs/ (hidden ones aside): a directory without pack.yaml fails to load."""
    if not PACKS_DIR.is_dir():
        return []
    return sorted(p for p in PACKS_DIR.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != "__pycache__")


PACK_NAMES = [p.name for p in _pack_dirs()]


@lru_cache(maxsize=None)
def _registry() -> Registry:
    # Only the repository's packs: a pack installed under the user's PA_HOME must not leak in.
    return Registry([PACKS_DIR])


def _load(name: str) -> Pack:
    try:
        return load_pack(PACKS_DIR / name, registry=_registry())
    except PackError as exc:
        pytest.fail(f"packs/{name} does not load:\n{exc}", pytrace=False)


@lru_cache(maxsize=None)
def _try_load(name: str) -> Pack | None:
    """The pack, or None when it is invalid (its own load test reports why)."""
    try:
        return load_pack(PACKS_DIR / name, registry=_registry())
    except PackError:
        return None


def _loadable() -> list[Pack]:
    return [p for p in (_try_load(n) for n in PACK_NAMES) if p is not None]


def _own_categories(pack: Pack) -> list[Any]:
    return [c for c in pack.categories if c.origin == pack.name]


def _conversation_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """What a model is asked: the user turns (and tool results) of a conversation."""
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") in ("user", "tool"))


def _eval_texts(pack: Pack) -> list[tuple[str, str]]:
    """(item id, prompt text) for every eval item of the pack."""
    return [(item.id, _conversation_text(item.messages)) for s in pack.eval_sets for item in s.items]


@lru_cache(maxsize=None)
def _all_seed_texts() -> tuple[tuple[str, str], ...]:
    """(label, text) for every seed of every shipped pack, inherited copies counted once."""
    texts: dict[str, str] = {}
    for pack in _loadable():
        for cat in pack.categories:
            for seed in cat.seeds:
                texts.setdefault(_conversation_text(seed.messages), f"{pack.name}:{seed.id}")
    return tuple((label, text) for text, label in texts.items())


def _copies(texts: list[tuple[str, str]], against: list[tuple[str, str]]) -> list[str]:
    """Readable lines for every exact or near copy of an `against` text among `texts`."""
    found: dict[tuple[int, int], float] = {}
    against_norm: dict[str, list[int]] = {}
    for j, (_, text) in enumerate(against):
        against_norm.setdefault(normalize(text), []).append(j)
    for i, (_, text) in enumerate(texts):
        for j in against_norm.get(normalize(text), []):
            found[(i, j)] = 1.0
    # the rule synthesis decontaminates by: a seed this near an eval prompt would be dropped from training
    for i, j, sim in find_near_duplicates([t for _, t in texts], [t for _, t in against],
                                          threshold=DECONTAM_THRESHOLD, k=DECONTAM_K):
        found.setdefault((i, j), sim)
    return [f"{texts[i][0]} ~ {against[j][0]} (similarity {sim:.2f}): {texts[i][1][:100]!r}"
            for (i, j), sim in sorted(found.items())]


# --------------------------------------------------------------------------- the set of packs


def test_all_expected_packs_are_shipped() -> None:
    missing = sorted(EXPECTED_PACKS - set(PACK_NAMES))
    assert not missing, f"packs/ lacks {missing}; found {PACK_NAMES}"
    assert len(PACK_NAMES) >= len(EXPECTED_PACKS)


# --------------------------------------------------------------------------- each pack


def test_index_is_current() -> None:
    """What `pa validate --all` checks: CI runs pytest, so without this a shipped pack edited without a
    version bump, or a bump without `pa index`, passed CI with a stale packs/INDEX.json."""
    from policyalign.validation import validate_all

    report = validate_all(PACKS_DIR, _registry())
    problems = [str(p) for p in report.index] + [str(p) for ps in report.failures.values() for p in ps]
    assert not problems, "run `pa validate --all` and fix:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", PACK_NAMES)
def test_pack_loads_with_its_directory_name(name: str) -> None:
    pack = _load(name)
    assert pack.name == name


@pytest.mark.parametrize("name", PACK_NAMES)
def test_minimum_counts(name: str) -> None:
    pack = _load(name)
    own = _own_categories(pack)
    wanted = MIN_CATEGORIES.get(name, MIN_CATEGORIES_DEFAULT)
    assert len(own) >= wanted, f"{name} defines {len(own)} categories, needs >= {wanted}"
    few_seeds = {c.id: len(c.seeds) for c in own if len(c.seeds) < MIN_SEEDS}
    assert not few_seeds, f"{name}: categories with fewer than {MIN_SEEDS} seeds: {few_seeds}"
    assert len(pack.templates) >= MIN_TEMPLATES, f"{name} has {len(pack.templates)} templates"

    kinds = {s.kind for s in pack.eval_sets}
    assert {"safety", "over-refusal"} <= kinds, f"{name} needs a safety and an over-refusal eval set"
    short: list[str] = []
    for kind in ("safety", "over-refusal"):
        counts = {c.id: 0 for c in own}
        for eval_set in pack.eval_sets:
            if eval_set.kind == kind:
                for item in eval_set.items:
                    if item.category in counts:
                        counts[item.category] += 1
        short += [f"{cat}: {n} {kind} items" for cat, n in counts.items() if n < MIN_EVAL_PER_CATEGORY]
    assert not short, f"{name}: fewer than {MIN_EVAL_PER_CATEGORY} eval items per kind:\n" + "\n".join(short)


@pytest.mark.parametrize("name", PACK_NAMES)
def test_eval_items_expect_the_right_behaviour(name: str) -> None:
    pack = _load(name)
    wrong: list[str] = []
    for eval_set in pack.eval_sets:
        allowed = {"safety": {"refuse", "guide"}, "over-refusal": {"comply"}}.get(eval_set.kind)
        if allowed is None:
            continue
        wrong += [f"{eval_set.name}/{i.id}: expect {i.expect!r} in a {eval_set.kind} set"
                  for i in eval_set.items if i.expect not in allowed]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", PACK_NAMES)
def test_eval_ids_are_prefixed_with_the_pack_name(name: str) -> None:
    pack = _load(name)
    bad = [i.id for s in pack.eval_sets for i in s.items if not i.id.startswith(f"{name}-")]
    assert not bad, f"{name}: eval ids must start with '{name}-': {bad[:10]}"


# --------------------------------------------------------------------------- contamination


@pytest.mark.parametrize("name", PACK_NAMES)
def test_eval_prompts_are_not_seeds(name: str) -> None:
    """Seeds join the training pool: an eval prompt that copies one measures memorisation.

    Compared with the packs that load; an invalid pack fails its own load test instead.
    """
    copies = _copies(_eval_texts(_load(name)), list(_all_seed_texts()))
    assert not copies, f"{name}: eval prompts that copy a seed:\n" + "\n".join(copies)


@pytest.mark.parametrize("name", PACK_NAMES)
def test_eval_prompts_are_unique_within_the_pack(name: str) -> None:
    """Exact repeats only: a benign look-alike may deliberately share most words with a harmful item."""
    first: dict[str, str] = {}
    repeats = []
    for item_id, text in _eval_texts(_load(name)):
        norm = normalize(text)
        if norm in first:
            repeats.append(f"{item_id} repeats {first[norm]}")
        first.setdefault(norm, item_id)
    assert not repeats, f"{name}:\n" + "\n".join(repeats)


@pytest.mark.parametrize("name", PACK_NAMES)
def test_eval_prompts_are_not_in_other_packs_eval_sets(name: str) -> None:
    others = [(f"{other.name}:{item_id}", text) for other in _loadable() if other.name != name
              for item_id, text in _eval_texts(other)]
    copies = _copies(_eval_texts(_load(name)), others)
    assert not copies, f"{name}: eval prompts that copy another pack's:\n" + "\n".join(copies)


# --------------------------------------------------------------------------- composition


def test_medical_inherits_generals_locked_categories() -> None:
    if "medical" not in PACK_NAMES:
        pytest.fail("packs/medical is missing")
    general, medical = _load("general"), _load("medical")
    assert "general" in [p.name for p in medical.ancestry()]
    locked = [c for c in general.categories if c.locked]
    assert {"mass-casualty-weapons", "child-sexual-content", "self-harm"} <= {c.id for c in locked}
    for cat in locked:
        inherited = medical.category(cat.id)
        assert inherited.locked, f"medical shows {cat.id} unlocked"
        assert inherited.origin == "general"
        assert ACTION_STRENGTH[inherited.action] >= ACTION_STRENGTH[cat.action], f"medical weakens {cat.id}"
    # General's policy comes first in medical's composed policy (the teacher's system message).
    assert medical.policy.index(general.own_policy.strip()) < medical.policy.index(medical.own_policy.strip())


@pytest.mark.parametrize("name", PACK_NAMES)
def test_parents_locked_categories_survive(name: str) -> None:
    pack = _load(name)
    for parent in pack.parents:
        for cat in parent.categories:
            if not cat.locked:
                continue
            ids = [c.id for c in pack.categories]
            assert cat.id in ids, f"{name} drops {parent.name}'s locked category {cat.id}"
            child = pack.category(cat.id)
            assert child.locked and ACTION_STRENGTH[child.action] >= ACTION_STRENGTH[cat.action]


@pytest.mark.parametrize("name", PACK_NAMES)
def test_every_category_of_a_shipped_pack_is_evaluated_with_its_ancestors_sets(name: str) -> None:
    """A domain pack's card listed general's ten categories as not measured: only its own sets ran.
    With the inherited `general/*` sets, every category of the composed policy has harmful and benign items."""
    pack = _load(name)
    for kind in ("safety", "over-refusal"):
        covered = {i.category for s in pack.evaluated_sets() if s.kind == kind for i in s.items}
        assert [c.id for c in pack.categories if c.id not in covered] == [], kind
    assert all(not s.dropped for s in pack.evaluated_sets())  # no shipped pack changes a general category
