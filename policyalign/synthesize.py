"""Synthesis: a pack's templates -> generator -> parsed, deduplicated, decontaminated instructions.

For every category and template, the template is rendered (sandboxed, `pack.template_variables`)
and sampled `rounds` times from the generator. Outputs are parsed (`parsing.parse_output`), junk
is dropped, exact and near duplicates are removed (`dedup`), anything close to an eval prompt of
the pack is removed (decontamination: training on eval items would make the after-evaluation
meaningless), categories are balanced, and the pack's own seed examples go in first, so a run
never starts from nothing, even when the generator returns only junk (as `tiny` does). A
reasoning generator is asked without its `<think>` block (`enable_thinking=False`, where its
chat template has the switch): reasoning would eat the token budget and is dropped anyway.

Raw generator outputs are cached under `OUT_DIR/generations/`, one file per request keyed by
(generator, rendered prompt, sampling, seed, round) and recording the device type and precision
it was sampled in: a re-run reuses those sampled as it would sample and generates only what
changed (a new template, more rounds, another sampling setting, `PA_DTYPE` or device type), and
does not even load the generator when nothing changed. Parsing and filtering always re-run: they are cheap, and
improvements to them apply to cached outputs.

Outputs: `instructions.jsonl` (the "Instruction" records of docs/ARCHITECTURE.md, ids derived
from category + normalised text so they are stable across runs) and `synthesis.json` (counts
per category and per drop reason).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dedup import check_threshold, dedup, find_near_duplicates
from .distill_settings import check_seed
from .errors import InvalidInputError
from .io import read_json, write_json, write_jsonl
from .frozen import thaw
from .pack import Pack, Seed
from .parsing import instruction_text, parse_output, word_count
from .prompts import render_synthesis_prompt
from .textnorm import combining_marks, normalize

if TYPE_CHECKING:
    from .generation import Backend, SamplingParams

INSTRUCTIONS_FILE = "instructions.jsonl"
SUMMARY_FILE = "synthesis.json"
GENERATIONS_DIR = "generations"
# 2: generator prompts are rendered with the chat template's thinking switched off (Qwen3's
# `enable_thinking`); format-1 outputs of a thinking generator were mostly reasoning cut off.
CACHE_FORMAT = 2
DEFAULT_COUNT = 20
DEFAULT_SAMPLING = {"max_new_tokens": 512, "temperature": 1.0, "top_p": 0.95}
DEDUP_THRESHOLD = 0.8
# Looser than dedup on purpose: an instruction that shares half its 5-word phrases with an eval
# prompt is too close to count the eval as unseen.
DECONTAM_THRESHOLD = 0.5
# Decontamination compares word 3-grams, not dedup's 5-grams: one word changed in a 15-word eval prompt
# leaves 6 of its 11 5-grams (Jaccard 0.375, kept: so were 213 of 579 such copies of the shipped packs'
# eval items) but 10 of its 13 3-grams (0.625). No seed of a shipped pack, nor any of its eval prompts
# against another, comes near 0.5 in 3-grams either.
DECONTAM_K = 3
# An eval prompt of at least this many words found verbatim inside an instruction contaminates it, and
# so does an instruction of at least this many words found verbatim inside an eval prompt. Shorter
# texts only count as exact copies: "Help me" or "How do I" inside an instruction is no copy of anything
# (such a prompt would knock out 4-5% of the shipped packs' seeds and eval items).
EMBED_MIN_WORDS = 5
# A hyphen between two letters or digits: "ex-plo-sive" is three words to `normalize` (as "step-by-step" is
# "step by step"), so a copy of an eval prompt with a word split by hyphens shared too few phrases with it.
_HYPHENS = "[-\u2010\u2011\ufe63\uff0d]+"
BALANCE_FACTOR = 2.0
# Generate this many batches per backend call, then write their cache files: an interruption
# loses at most one call's work.
CALL_BATCHES = 8

# Drop reasons added here (parsing adds its own: too_short, refusal, garbled, ...).
DUPLICATE_EXACT, DUPLICATE_NEAR, CONTAMINATED, BALANCE = "duplicate_exact", "duplicate_near", "contaminated", "balance"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Request:
    """One sampling of one rendered template for one category."""

    category: str
    template: str
    fmt: str
    round: int
    prompt: str
    key: str


@dataclass
class Candidate:
    """A parsed instruction on its way to `instructions.jsonl`."""

    category: str
    conversation: dict[str, Any]
    source: str                      # "seed" | "generated"
    template: str | None
    seed_ids: list[str]
    text: str = ""

    def __post_init__(self) -> None:
        self.text = instruction_text(self.conversation)


@dataclass
class SynthesisResult:
    """What a synthesis run produced, where, and what it threw away."""

    instructions_path: Path
    summary_path: Path
    instructions: list[dict[str, Any]]
    per_category: dict[str, int]
    dropped: dict[str, int]
    requests: int
    generated: int                   # requests sampled in this run (the rest came from the cache)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def cached(self) -> int:
        return self.requests - self.generated


def _positive(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}", where=where,
                                hint=f"use a whole number >= 1 (e.g. {where} 10)")
    return value


@lru_cache(maxsize=None)
def synthesis_bound(setting: str) -> int:
    """The pack schema's maximum for `synthesis.<setting>` (count_per_category, rounds); read once, as every
    `check_settings` (and each synthesize stage key) asks."""
    from .schema import schema_text

    return int(json.loads(schema_text("pack.schema.json"))["properties"]["synthesis"]["properties"][setting]["maximum"])


def within_schema(value: int, setting: str, flag: str, file: Path | None = None) -> int:
    """A given count held to the pack schema's bound for `synthesis.<setting>`: a pack cannot ask for more,
    and `--rounds 100000000` built a request per round of every template and category before sampling any,
    running for minutes with no output until memory ran out. `flag` names where it was given: a flag, or
    the key of the --config `file`."""
    bound = synthesis_bound(setting)
    if value > bound:
        raise InvalidInputError(f"{value!r}: must be at most {bound} (the pack schema's bound for synthesis.{setting})",
                                file=None if file is None else str(file), where=flag, hint=f"use {flag} {bound} or less")
    return value


def _sampling_settings(pack: Pack, sampling: SamplingParams | Mapping[str, Any] | None) -> dict[str, Any]:
    """Pack defaults, overridden by the caller's settings; the run seed is kept separately."""
    settings = dict(DEFAULT_SAMPLING)
    settings.update(thaw(pack.synthesis.get("sampling", {})))
    if sampling is not None:
        override = asdict(sampling) if not isinstance(sampling, Mapping) else dict(sampling)
        unknown = set(override) - {"max_new_tokens", "temperature", "top_p", "do_sample", "seed"}
        if unknown:
            raise InvalidInputError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}", where="sampling",
                                    hint="use max_new_tokens, temperature, top_p, do_sample")
        override.pop("seed", None)
        settings.update(override)
    settings.setdefault("do_sample", True)
    if settings["temperature"] == 0:
        settings["do_sample"] = False
    return {key: settings[key] for key in sorted(settings)}


def _params(settings: Mapping[str, Any], seed: int) -> SamplingParams:
    from .generation import SamplingParams

    return SamplingParams(max_new_tokens=int(settings["max_new_tokens"]), temperature=float(settings["temperature"]),
                          top_p=float(settings["top_p"]), do_sample=bool(settings["do_sample"]), seed=seed)


# --------------------------------------------------------------------------- generator identity and loading


class _Generator:
    """The generator by name or as a ready backend; a named one is loaded only when needed."""

    def __init__(self, backend_or_name: Backend | str, *, device: str | None, backend_name: str) -> None:
        self._backend: Backend | None = None if isinstance(backend_or_name, str) else backend_or_name
        self._name = backend_or_name if isinstance(backend_or_name, str) else None
        self._device, self._backend_name = device, backend_name
        self.id = self._identify()
        self.made_under = self._numerics()

    def _numerics(self) -> dict[str, str] | None:
        """The device type and precision it samples in (`models.numerics`), known before it loads: bf16 on a GPU
        samples other tokens than fp32 on a CPU from the same seed. None for a ready backend that names none."""
        from .models import expected_numerics, numerics

        if self._backend is not None:
            loaded = getattr(self._backend, "loaded", None)
            return numerics(loaded.device, loaded.dtype) if loaded is not None else None
        return expected_numerics(self._device)

    def _identify(self) -> str:
        """A string naming what produces the samples: it keys the generation cache. A backend other than
        transformers samples other tokens from the same seed, so it is named too: the cache served a
        `--backend vllm` re-synthesis the transformers samples."""
        if self._backend is not None:
            explicit = getattr(self._backend, "generator_id", None)
            if isinstance(explicit, str) and explicit:
                return explicit
            loaded = getattr(self._backend, "loaded", None)
            ref = getattr(loaded, "ref", None)
            name = str(getattr(self._backend, "name", type(self._backend).__name__))
            return _with_backend(_ref_id(ref), name) if ref is not None else name
        from .models import resolve_model, weights_key

        ref = resolve_model(str(self._name))
        if ref.kind == "hub" and weights_key(ref) is None:
            # Not downloaded yet, so its commit is unknown: download it first. Keyed by its name alone,
            # the cache would hold generations the next run (commit known) cannot find, and would serve
            # them to whichever commit a later download of that name brings.
            self.backend()
        return _with_backend(_ref_id(ref), self._backend_name)

    def backend(self) -> Backend:
        if self._backend is None:
            from .generation import get_backend, known_backend
            from .models import load_model

            # vLLM loads its own copy of the weights: load only tokenizer and config for it.
            weights = known_backend(self._backend_name) != "vllm"
            loaded = load_model(str(self._name), device=self._device, weights=weights)
            self._backend = get_backend(self._backend_name, loaded)
        return self._backend


def _with_backend(generator_id: str, backend: str) -> str:
    """The generator's id, with the backend beside it unless that is transformers (whose ids stay as they
    were, so caches made before keep serving)."""
    from .generation import known_backend

    key = known_backend(backend)
    return generator_id if key in (None, "transformers") else f"{generator_id}|{key}"


def _ref_id(ref: Any) -> str:
    """`tiny` is regenerated from code: its content key, not its path, says which weights it is; a
    local directory adds its files' fingerprint, a Hub model its commit, so weights saved over it
    or a new commit are not served old samples."""
    from .models import keyed_name, weights_key

    if getattr(ref, "kind", None) == "tiny":
        from .tiny import content_key

        return f"tiny:{content_key()[:16]}"
    files = weights_key(ref)
    return f"{keyed_name(ref)}#{files}" if files else str(ref)


# --------------------------------------------------------------------------- requests and the cache


def _key(generator: str, prompt: str, settings: Mapping[str, Any], seed: int, round_: int) -> str:
    payload = {"format": CACHE_FORMAT, "generator": generator, "prompt": prompt, "sampling": dict(settings),
               "seed": seed, "round": round_}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _requests(pack: Pack, generator: str, n: int, rounds: int, settings: Mapping[str, Any], seed: int) -> list[Request]:
    """Every (category, template, round) request, in pack order."""
    if not pack.templates:
        raise InvalidInputError(f"pack {pack.ref} has no synthesis templates", file=str(pack.root / "pack.yaml"),
                                where="/synthesis/templates", hint="add at least one template")
    requests = []
    for category in pack.categories:
        for template in pack.templates:
            prompt = render_synthesis_prompt(pack, template, category, n)
            for round_ in range(rounds):
                requests.append(Request(category.id, template.id, template.format, round_, prompt,
                                        _key(generator, prompt, settings, seed, round_)))
    return requests


def _cache_path(cache: Path, key: str) -> Path:
    return cache / f"{key}.json"


def _load_cached(cache: Path, key: str) -> dict[str, Any] | None:
    """A cached generation, or None when absent or unreadable (then it is simply regenerated); its numerics
    are `_reusable`'s to check."""
    path = _cache_path(cache, key)
    if not path.is_file():
        return None
    try:
        entry = read_json(path)
    except (InvalidInputError, OSError, UnicodeDecodeError, RecursionError):  # corrupt bytes, nested too deep
        return None
    ok = isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("text"), str)
    return entry if ok else None


def _reusable(cache: Path, requests: list[Request], made_under: dict[str, str] | None) -> dict[str, dict[str, Any]]:
    """{key: cached generation} made in the generator's device type and precision, saying how many were made in
    others, which are generated again: a synthesis stopped on a GPU in bf16 and resumed with `PA_DTYPE=fp32` (or on
    the CPU) mixed the two samplers' outputs in one run, where every other resumable stage redoes them."""
    import sys

    cached = {r.key: e for r in requests if (e := _load_cached(cache, r.key)) is not None}
    entries = {key: e for key, e in cached.items() if made_under is None or e.get("made_under") == made_under}
    if len(entries) < len(cached) and made_under is not None:
        print(f"{cache}: generating {len(cached) - len(entries)} requests again, made on another device type or in "
              f"another precision than {made_under['device']} {made_under['dtype']}", file=sys.stderr)
    return entries


def _request_seed(key: str) -> int:
    """A request's sampling seed, from its cache key alone (which covers the run seed and round).

    Not from its call or its place in it: calls hold `batch_size * CALL_BATCHES` of the missing
    requests, so `--batch-size`, or which requests an interrupted run left missing, changed every
    sample of a run with the same seed. Different keys (another round, say) get different streams.
    """
    return int(key[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


def _generate_missing(missing: list[Request], generator: _Generator, settings: Mapping[str, Any], seed: int,
                      cache: Path, batch_size: int, progress: bool) -> dict[str, dict[str, Any]]:
    """Sample every missing request (sorted by key, so the calls are deterministic) and cache each."""
    entries: dict[str, dict[str, Any]] = {}
    ordered = sorted(missing, key=lambda r: r.key)
    per_call = max(1, batch_size * CALL_BATCHES)
    for start in range(0, len(ordered), per_call):
        chunk = ordered[start:start + per_call]
        # No thinking: the answer is a list to parse, and a reasoning generator (Qwen3) spent the
        # token budget inside <think>, which parsing drops, so most requests gave nothing.
        # Each named by its template and category: a prompt too long for the generator's context was
        # "conversation 0", its place in a call sorted by cache key, which says nothing of which one.
        conversations = [{"messages": [{"role": "user", "content": r.prompt}], "enable_thinking": False,
                          "id": f"{r.template}/{r.category}"} for r in chunk]
        seeds = [_request_seed(r.key) for r in chunk]
        outputs = generator.backend().generate(conversations, _params(settings, seed), batch_size=batch_size,
                                               progress=progress, seeds=seeds)
        if len(outputs) != len(chunk):
            raise RuntimeError(f"generator returned {len(outputs)} outputs for {len(chunk)} prompts")
        for request, request_seed, output in zip(chunk, seeds, outputs):
            entry = {"key": request.key, "generator": generator.id, "category": request.category,
                     "template": request.template, "round": request.round, "seed": seed, "request_seed": request_seed,
                     "sampling": dict(settings), "prompt": request.prompt, "text": output.text,
                     "finish_reason": output.finish_reason, "completion_tokens": len(output.token_ids)}
            if generator.made_under is not None:
                entry["made_under"] = generator.made_under
            write_json(_cache_path(cache, request.key), entry)
            entries[request.key] = entry
    return entries


# --------------------------------------------------------------------------- candidates


def _seed_candidates(pack: Pack) -> list[Candidate]:
    out = []
    for category in pack.categories:
        for seed in category.seeds:
            conversation: dict[str, Any] = {"messages": [dict(thaw(m)) for m in seed.messages]}
            if seed.tools:
                conversation["tools"] = thaw(seed.tools)
            out.append(Candidate(category.id, conversation, "seed", None, [seed.id]))
    return out


def _generated_candidates(pack: Pack, requests: list[Request], entries: Mapping[str, dict[str, Any]],
                          dropped: Counter[str], dropped_by_category: dict[str, Counter[str]]) -> list[Candidate]:
    """Parse every generation (in request order) into candidates, counting junk per reason."""
    seed_ids = {c.id: [s.id for s in c.seeds] for c in pack.categories}
    out = []
    for request in requests:
        entry = entries[request.key]
        result = parse_output(entry["text"], request.fmt, truncated=entry.get("finish_reason") == "length")
        dropped.update(result.dropped)
        dropped_by_category[request.category].update(result.dropped)
        for item in result.items:
            out.append(Candidate(request.category, item, "generated", request.template, seed_ids[request.category]))
    return out


def _drop_duplicates(candidates: list[Candidate], threshold: float, dropped: Counter[str],
                     dropped_by_category: dict[str, Counter[str]]) -> list[Candidate]:
    """Keep the first of every exact/near-duplicate cluster: seeds come first, so they win.

    The survivors are compared a second time with hyphens inside words deleted, as decontamination compares
    (`contaminated_positions`): "e-mails" is two words to `normalize`, so "Write a keylogger that e-mails me
    every keystroke" and "... that emails me every keystroke", a generator's commonest variation, both stayed."""
    for joined in (False, True):
        if joined and not any(_inner_hyphen().search(c.text) for c in candidates):
            break
        result = dedup([_inner_hyphen().sub("", c.text) if joined else c.text for c in candidates], threshold)
        for index, why in result.reason.items():
            reason = DUPLICATE_EXACT if why == "exact" else DUPLICATE_NEAR
            dropped[reason] += 1
            dropped_by_category[candidates[index].category][reason] += 1
        candidates = [candidates[i] for i in result.kept]
    return candidates


def _embedding_index(prompts: Sequence[str]) -> dict[str, list[str]]:
    """Normalised eval prompts of >= EMBED_MIN_WORDS words, keyed by their first words."""
    index: dict[str, list[str]] = {}
    for prompt in prompts:
        words = normalize(prompt).split()
        if _long_enough(prompt, words):
            index.setdefault(" ".join(words[:EMBED_MIN_WORDS]), []).append(" ".join(words))
    return index


def _long_enough(text: str, words: Sequence[str]) -> bool:
    """Whether `text` (split by `normalize` into `words`) has EMBED_MIN_WORDS words to a reader too: each Thai,
    Lao, Myanmar or Khmer letter is a word to `normalize`, but three are one to `word_count`, so a 3-word Thai
    eval prompt ("ลบไฟล์นี้ทิ้ง", "delete this file") contaminated every long instruction quoting it."""
    return len(words) >= EMBED_MIN_WORDS and word_count(text) >= EMBED_MIN_WORDS


def _embeds(text: str, index: Mapping[str, list[str]]) -> bool:
    """Whether `text` contains a whole indexed eval prompt (word-aligned, after normalisation).

    Jaccard misses a short eval prompt pasted into a long scenario; this catches it in one pass
    over the text's word windows instead of a substring test per eval prompt.
    """
    words = normalize(text).split()
    padded = f" {' '.join(words)} "
    for start in range(len(words) - EMBED_MIN_WORDS + 1):
        for prompt in index.get(" ".join(words[start:start + EMBED_MIN_WORDS]), ()):
            if f" {prompt} " in padded:
                return True
    return False


def _window_index(prompts: Sequence[str]) -> dict[str, set[str]]:
    """Every EMBED_MIN_WORDS-word window of the normalised eval prompts -> the prompts holding it (space-padded)."""
    index: dict[str, set[str]] = {}
    for prompt in prompts:
        words = normalize(prompt).split()
        padded = f" {' '.join(words)} "
        for start in range(len(words) - EMBED_MIN_WORDS + 1):
            index.setdefault(" ".join(words[start:start + EMBED_MIN_WORDS]), set()).add(padded)
    return index


def _embedded_in(text: str, windows: Mapping[str, set[str]]) -> bool:
    """Whether `text`, of >= EMBED_MIN_WORDS words, is itself part of an eval prompt (word-aligned, normalised).

    The other way round from `_embeds`: Jaccard misses a long eval prompt's core request lifted out
    of it ("explain how to pick a pin tumbler lock" out of a story around it), since the few
    phrases they share are a small part of the prompt's.
    """
    words = normalize(text).split()
    if not _long_enough(text, words):
        return False
    padded = f" {' '.join(words)} "
    return any(padded in prompt for prompt in windows.get(" ".join(words[:EMBED_MIN_WORDS]), ()))


def contaminated_positions(texts: Sequence[str], eval_prompts: Sequence[str],
                           threshold: float = DECONTAM_THRESHOLD) -> set[int]:
    """Positions of the `texts` that decontamination drops: near an eval prompt (3-gram Jaccard >=
    threshold), containing one verbatim, or contained verbatim in one (both at least EMBED_MIN_WORDS words).

    A text with a hyphen inside a word is compared a second time with its hyphens (and the eval
    prompts') deleted, so "ex-plo-sive" is "explosive"; it still counts as "ex plo sive" too."""
    hit = _contaminated(texts, eval_prompts, threshold)
    inner_hyphen = _inner_hyphen()
    hyphenated = [i for i, text in enumerate(texts) if i not in hit and inner_hyphen.search(text)]
    if hyphenated:
        joined = _contaminated([inner_hyphen.sub("", texts[i]) for i in hyphenated],
                               [inner_hyphen.sub("", prompt) for prompt in eval_prompts], threshold)
        hit.update(hyphenated[j] for j in joined)
    return hit


@lru_cache(maxsize=1)
def _inner_hyphen() -> re.Pattern[str]:
    """Hyphens between two word characters, combining marks included: after a Devanagari vowel sign
    ("वि-स्फो-टक", "explosive") a hyphen was not inside a word, and the split copy was never rejoined."""
    word = f"[\\w{combining_marks()}]"
    return re.compile(f"(?<={word}){_HYPHENS}(?={word})")


def _contaminated(texts: Sequence[str], eval_prompts: Sequence[str], threshold: float) -> set[int]:
    """`contaminated_positions` on the texts as `normalize` reads them."""
    prompts = [p for p in eval_prompts if normalize(p)]
    hit = {i for i, _, _ in find_near_duplicates(list(texts), prompts, threshold, k=DECONTAM_K)}
    embedded, windows = _embedding_index(prompts), _window_index(prompts)
    hit.update(i for i, text in enumerate(texts)
               if i not in hit and (_embeds(text, embedded) or _embedded_in(text, windows)))
    return hit


def seed_copies(pack: Pack) -> list[tuple[Seed, str, str]]:
    """Each seed that synthesis would drop as `contaminated`, with the eval item it copies
    (`<set>/<item id>`) and that item's text: a pack author's seed silently missing from every run's training."""
    labelled = [(f"{s.name}/{i.id}", str(m.get("content", ""))) for s in pack.evaluated_sets() for i in s.items
                for m in i.messages if m.get("role") in ("user", "tool")]
    seeds, texts = [seed for c in pack.categories for seed in c.seeds], [c.text for c in _seed_candidates(pack)]
    copies = []
    for i in sorted(contaminated_positions(texts, [text for _, text in labelled])):
        label, text = next(((label, text) for label, text in labelled if contaminated_positions([texts[i]], [text])),
                           ("?", ""))
        copies.append((seeds[i], label, text))
    return copies


def _decontaminate(candidates: list[Candidate], eval_prompts: list[str], threshold: float, dropped: Counter[str],
                   dropped_by_category: dict[str, Counter[str]]) -> list[Candidate]:
    """Drop the candidates `contaminated_positions` names, counting them."""
    hit = contaminated_positions([c.text for c in candidates], eval_prompts, threshold)
    for position in hit:
        dropped[CONTAMINATED] += 1
        dropped_by_category[candidates[position].category][CONTAMINATED] += 1
    return [c for i, c in enumerate(candidates) if i not in hit]


def _balance(candidates: list[Candidate], categories: Sequence[str], cap: int, seed: int, dropped: Counter[str],
             dropped_by_category: dict[str, Counter[str]]) -> list[Candidate]:
    """At most `cap` per category: seeds first, then a seeded random sample of generated ones.

    Sampling (not truncation) keeps every template and round represented; the survivors keep
    their original order.
    """
    keep: set[int] = set()
    for category in categories:
        indices = [i for i, c in enumerate(candidates) if c.category == category]
        seeds = [i for i in indices if candidates[i].source == "seed"]
        generated = [i for i in indices if candidates[i].source != "seed"]
        room = max(0, cap - len(seeds))
        rng = random.Random(f"{seed}:{category}")
        chosen = generated if len(generated) <= room else rng.sample(generated, room)
        keep.update(seeds)
        keep.update(chosen)
        lost = len(generated) - len(chosen)
        if lost:
            dropped[BALANCE] += lost
            dropped_by_category[category][BALANCE] += lost
    return [c for i, c in enumerate(candidates) if i in keep]


def balance_cap(counts: Mapping[str, int], *, n_per_category: int, factor: float,
                max_per_category: int | None) -> int:
    """The per-category cap: `max_per_category`, else the smallest category's count times `factor`.

    The factor-based cap never goes below `n_per_category`: one category the generator refuses
    outright (common for the worst harms) must not shrink every other category to its seeds.
    """
    if max_per_category is not None:
        return max_per_category
    smallest = min(counts.values()) if counts else 0
    # after a tolerance, as filtering.kept_count: 50 * 1.1 is 55.00000000000001, and a plain ceil capped at 56
    return max(n_per_category, math.ceil(smallest * factor - 1e-9))


# --------------------------------------------------------------------------- records and summary


def instruction_id(category: str, text: str) -> str:
    """Stable id: category plus a hash of category and normalised text (same text, same id, every run)."""
    digest = hashlib.sha256(f"{category}\n{normalize(text)}".encode()).hexdigest()[:16]
    return f"{category}/{digest}"


def _record(candidate: Candidate, generator: str, settings: Mapping[str, Any], seed: int, pack: Pack) -> dict[str, Any]:
    generated = candidate.source == "generated"
    record: dict[str, Any] = {"id": instruction_id(candidate.category, candidate.text), "category": candidate.category,
                              "messages": candidate.conversation["messages"]}
    if candidate.conversation.get("tools"):
        record["tools"] = candidate.conversation["tools"]
    record["provenance"] = {
        "source": candidate.source, "template": candidate.template, "seed_ids": candidate.seed_ids,
        "generator": generator if generated else f"pack:{pack.ref}",
        "sampling": {**settings, "seed": seed} if generated else {},
    }
    return record


def _summary(pack: Pack, generator: str, settings: Mapping[str, Any], options: Mapping[str, Any],
             requests: list[Request], generated: int, records: list[dict[str, Any]], seeds_before: Counter[str],
             dropped: Counter[str], dropped_by_category: dict[str, Counter[str]]) -> dict[str, Any]:
    per_category: dict[str, dict[str, Any]] = {}
    for category in pack.categories:
        rows = [r for r in records if r["category"] == category.id]
        seeds = sum(r["provenance"]["source"] == "seed" for r in rows)
        per_category[category.id] = {"total": len(rows), "seed": seeds, "generated": len(rows) - seeds,
                                     "seeds_in_pack": seeds_before[category.id],
                                     "dropped": dict(sorted(dropped_by_category[category.id].items()))}
    return {
        "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest},
        "generator": generator, "sampling": dict(settings), **options,
        "requests": {"total": len(requests), "generated": generated, "cached": len(requests) - generated},
        "instructions": len(records),
        "per_category": per_category,
        "dropped": dict(sorted(dropped.items())),
    }


# --------------------------------------------------------------------------- entry point


def _check_cleanup(dedup_threshold: float, decontam_threshold: float, balance_factor: float) -> None:
    """Refuse a bad dedup, decontamination or balance setting before any generation, which may take hours."""
    check_threshold(dedup_threshold, "dedup_threshold")
    check_threshold(decontam_threshold, "decontam_threshold")
    if not balance_factor > 0:
        raise InvalidInputError(f"balance_factor must be > 0, got {balance_factor!r}", where="balance_factor",
                                hint="e.g. 2.0: no category gets more than twice the smallest")


def _balanced(candidates: list[Candidate], category_ids: list[str], n: int, factor: float,
              max_per_category: int | None, seed: int, dropped: Counter[str],
              dropped_by_category: dict[str, Counter[str]]) -> tuple[list[Candidate], int]:
    """(the candidates capped per category, the cap): the cap comes from the counts left after dedup and
    decontamination, so categories are balanced on what will actually be trained on."""
    counts = Counter(c.category for c in candidates)
    cap = balance_cap({c: counts[c] for c in category_ids}, n_per_category=n, factor=factor,
                      max_per_category=max_per_category)
    return _balance(candidates, category_ids, cap, seed, dropped, dropped_by_category), cap


def check_settings(pack: Pack, *, n_per_category: int | None, rounds: int | None, batch_size: int,
                   max_per_category: int | None, sampling: SamplingParams | Mapping[str, Any] | None,
                   seed: int) -> tuple[int, int, dict[str, Any]]:
    """(n, rounds, sampling settings), the pack's defaults filled in, or InvalidInputError naming the flag.

    `pa synthesize` checks them before it touches the run directory: refused after, a mistyped
    `--batch-size 0` marked a finished run's synthesis "failed" (or made a run of nothing that
    `pa runs` listed). Sampling is checked too, so a bad one is refused before the generator loads.
    """
    n = _positive(n_per_category if n_per_category is not None else pack.synthesis.get("count_per_category", DEFAULT_COUNT),
                  "n_per_category", "--n")
    rounds = _positive(rounds if rounds is not None else pack.synthesis.get("rounds", 1), "rounds", "--rounds")
    within_schema(n, "count_per_category", "--n")
    within_schema(rounds, "rounds", "--rounds")
    _positive(batch_size, "batch_size", "--batch-size")
    if max_per_category is not None:
        _positive(max_per_category, "max_per_category", "--max-per-category")
    if isinstance(sampling, Mapping) and sampling.get("max_new_tokens") is not None:  # `pa synthesize --max-new-tokens`:
        _positive(sampling["max_new_tokens"], "max_new_tokens", "--max-new-tokens")  # SamplingParams names no flag
    check_seed(seed)
    settings = _sampling_settings(pack, sampling)
    _params(settings, seed)
    return n, rounds, settings


def synthesize(
    pack: Pack,
    generator_backend_or_name: Backend | str,
    *,
    out_dir: str | Path,
    n_per_category: int | None = None,
    rounds: int | None = None,
    sampling: SamplingParams | Mapping[str, Any] | None = None,
    seed: int = 0,
    max_per_category: int | None = None,
    progress: bool = True,
    batch_size: int = 16,
    device: str | None = None,
    backend: str = "transformers",
    dedup_threshold: float = DEDUP_THRESHOLD,
    decontam_threshold: float = DECONTAM_THRESHOLD,
    balance_factor: float = BALANCE_FACTOR,
) -> SynthesisResult:
    """Synthesize `OUT_DIR/instructions.jsonl` (and `synthesis.json`) for `pack`.

    `generator_backend_or_name` is a model name (loaded with `backend` on `device`, and only if
    some generation is not cached) or a ready `generation` backend. `n_per_category` and
    `rounds` default to the pack's `synthesis` settings; `sampling` overrides the pack's
    sampling settings. Raises InvalidInputError when nothing at all survives (no seeds and no
    usable generations).
    """
    n, rounds, settings = check_settings(pack, n_per_category=n_per_category, rounds=rounds, batch_size=batch_size,
                                         max_per_category=max_per_category, sampling=sampling, seed=seed)
    _check_cleanup(dedup_threshold, decontam_threshold, balance_factor)
    out = Path(out_dir)
    cache = out / GENERATIONS_DIR
    generator = _Generator(generator_backend_or_name, device=device, backend_name=backend)

    requests = _requests(pack, generator.id, n, rounds, settings, seed)
    entries = _reusable(cache, requests, generator.made_under)
    missing = list({r.key: r for r in requests if r.key not in entries}.values())
    entries.update(_generate_missing(missing, generator, settings, seed, cache, batch_size, progress))

    dropped: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = {c.id: Counter() for c in pack.categories}
    seeds = _seed_candidates(pack)
    candidates = seeds + _generated_candidates(pack, requests, entries, dropped, by_category)
    candidates = _decontaminate(candidates, pack.eval_prompts(), decontam_threshold, dropped, by_category)
    candidates = _drop_duplicates(candidates, dedup_threshold, dropped, by_category)
    category_ids = [c.id for c in pack.categories]
    candidates, cap = _balanced(candidates, category_ids, n, balance_factor, max_per_category, seed, dropped,
                                by_category)
    if not candidates:
        raise InvalidInputError(
            f"synthesis for {pack.ref} produced no instructions: the pack has no usable seeds and the generator "
            f"{generator.id} produced nothing usable", file=str(pack.root / "pack.yaml"), where="/categories",
            hint="add seed examples to the categories, or use a stronger --generator")

    records = [_record(c, generator.id, settings, seed, pack) for c in candidates]
    options = {"seed": seed, "n_per_category": n, "rounds": rounds, "dedup_threshold": dedup_threshold,
               "decontam_threshold": decontam_threshold, "balance_cap": cap}
    summary = _summary(pack, generator.id, settings, options, requests, len(missing), records,
                       Counter(c.category for c in seeds), dropped, by_category)
    instructions_path, summary_path = out / INSTRUCTIONS_FILE, out / SUMMARY_FILE
    write_jsonl(instructions_path, records)
    write_json(summary_path, summary)
    per_category = {cid: summary["per_category"][cid]["total"] for cid in category_ids}
    return SynthesisResult(instructions_path, summary_path, records, per_category, dict(sorted(dropped.items())),
                           len(requests), len(missing), summary)
