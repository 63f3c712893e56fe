"""Model cards (and pack cards) for the Hub, rendered from templates shipped in the package.

A published adapter is only useful if whoever pulls it can tell exactly which policy it was
trained on. The card therefore carries the pack's name, version and content digest twice: as
YAML metadata that `pa pull` verifies against `policyalign.json` (plus a sha256 of every
uploaded file), and as prose for people. Card text comes from our own Jinja template (a plain,
non-sandboxed environment), but every value that originates in a pack or a run artifact is
escaped for Markdown, quoted for Python or the shell, or serialised by `yaml.safe_dump` — packs
are untrusted input and must not be able to inject HTML, links or YAML into a card.

Run artifacts read here (contract in docs/ARCHITECTURE.md): `RUN_DIR/adapter/` (PEFT files,
`policyalign.json`, `loss.png`) is required; `RUN_DIR/eval/{before,after}/eval.json`,
their `categories.png` and `RUN_DIR/eval/before_after.png` are optional.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import __version__
from .errors import InvalidInputError, RunError
from .io import read_json, sha256_file
from .metrics import BETTER
from .models import TINY
from .stats import change_verdict, format_change, format_p, format_rate, is_number
from .templates import text_problem

ADAPTER_DIR = "adapter"
PROVENANCE_FILE = "policyalign.json"
REQUIRED_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", PROVENANCE_FILE)
# Optional adapter-side files worth publishing (tokenizer files let vLLM/PEFT users skip the base's).
OPTIONAL_ADAPTER_FILES = ("loss.png", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt")
# What policyalign.json and the card record of each pack a child pack extends.
PARENT_FIELDS = ("name", "version", "digest")
EVAL_STAGES = ("before", "after")
EVAL_FILES = ("eval.json", "categories.png")
PRIMARY_METRICS = {"safety": "violation_rate", "over-refusal": "over_refusal_rate"}
FALLBACK_METRICS = ("violation_rate", "over_refusal_rate")  # the rates an eval writes (`metrics.BETTER`)
DISTILL_HINT = "produced by the distill stage: run `pa apply PACK --model MODEL` (or `pa distill RUN_DIR`) first"
# vLLM's accepted `--max-lora-rank` values.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MODEL_CARD_TEMPLATE = "model_card.md.jinja"
PACK_CARD_TEMPLATE = "pack_card.md.jinja"
# What printed text from a card or the Hub may not hold beyond what pack text may (templates.text_problem): a tab or
# line break, which would split the line it is printed on.
_LINE_BREAK = re.compile(r"[\t\n\r\x85]")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- run artifacts


@dataclass(frozen=True)
class RunArtifacts:
    """What a run directory offers for publishing: provenance, evals, and files by repo path."""

    run_dir: Path
    provenance: Mapping[str, Any]
    evals: Mapping[str, Mapping[str, Any]]
    files: Mapping[str, Path] = field(default_factory=dict)
    # judged rows per eval stage (eval/<stage>/responses.jsonl, not published): the card's paired test
    responses: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def pack(self) -> Mapping[str, Any]:
        return self.provenance["pack"]

    @property
    def base_model(self) -> Mapping[str, Any]:
        return self.provenance["base_model"]

    @property
    def default_tag(self) -> str:
        """The revision tag a push gets unless told otherwise: `<pack>-v<version>`."""
        return adapter_tag(self.pack["name"], self.pack["version"])


def adapter_tag(pack_name: str, version: str) -> str:
    """The revision tag an adapter trained on pack `pack_name` at `version` is pushed under by default."""
    return f"{pack_name}-v{version}"


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Collect a run's publishable artifacts; missing required pieces are a RunError naming them."""
    root = Path(run_dir)
    if not root.is_dir():  # a path the user typed: invalid input, exit 2, as `run.run_inputs` and `pa runs` say
        raise InvalidInputError("a file, not a run directory" if root.exists() else "run directory not found",
                                file=str(root), hint="pass the directory `pa apply` wrote (it holds run.json and adapter/)")
    refuse_adapter_dir(root)
    adapter = root / ADAPTER_DIR
    for name in REQUIRED_ADAPTER_FILES:
        if not (adapter / name).is_file():
            raise RunError(f"missing {ADAPTER_DIR}/{name} in the run directory", file=str(adapter / name),
                           hint=DISTILL_HINT)
    provenance = read_json(adapter / PROVENANCE_FILE)
    _check_provenance(provenance, adapter / PROVENANCE_FILE)
    files = {name: adapter / name for name in (*REQUIRED_ADAPTER_FILES, *OPTIONAL_ADAPTER_FILES)
             if (adapter / name).is_file()}
    evals: dict[str, Mapping[str, Any]] = {}
    for stage in EVAL_STAGES:
        for name in EVAL_FILES:
            path = root / "eval" / stage / name
            if path.is_file():
                files[f"eval/{stage}/{name}"] = path
        if (root / "eval" / stage / "eval.json").is_file():
            evals[stage] = read_json(root / "eval" / stage / "eval.json")
            _check_eval_matches(stage, evals[stage], root / "eval" / stage / "eval.json", provenance, adapter)
    _check_evals_alike(evals, provenance, adapter)
    if (root / "eval" / "before_after.png").is_file():
        files["eval/before_after.png"] = root / "eval" / "before_after.png"
    return RunArtifacts(run_dir=root, provenance=provenance, evals=evals, files=files,
                        responses=_stage_responses(root, evals))


def refuse_adapter_dir(root: Path) -> None:
    """`pa push RUN/adapter` (the adapter's own folder, an easy slip) was told "missing adapter/adapter_config.json"
    and to train with `pa apply` first, hours of work, where the fix is to pass the run directory holding it."""
    if not (root / ADAPTER_DIR).is_dir() and all((root / name).is_file() for name in REQUIRED_ADAPTER_FILES):
        raise RunError("this is the run's adapter directory, not the run directory (which holds adapter/ and eval/)",
                       file=str(root), hint=f"pass the run directory that holds it: {root.absolute().parent}")


def _stage_responses(root: Path, evals: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    from .eval_report import responses_beside

    found = {stage: responses_beside(root / "eval" / stage) for stage in evals}
    return {stage: rows for stage, rows in found.items() if rows is not None}


def _check_evals_alike(evals: Mapping[str, Any], provenance: Mapping[str, Any], adapter: Path) -> None:
    """The card's Change column subtracts before from after, set by set: both must have been measured
    alike. An after-eval re-run with `pa eval`'s defaults (every item, 256 tokens) beside an apply
    before-eval (`--eval-limit`) published a change between two different tests."""
    from .eval_report import comparable_notes
    from .run import read_manifest

    if not {"before", "after"} <= set(evals):
        return
    notes = comparable_notes(evals["before"], evals["after"])
    if not notes:
        return
    before, after = evals["before"], adapter.parent / "eval" / "after"
    sampling = before.get("sampling") if isinstance(before.get("sampling"), dict) else {}
    # eval.json names a local model or judge by its directory's name only; run.json (never published) has its path
    manifest = read_manifest(adapter.parent)
    model = manifest["inputs"].get("model") or before.get("model")
    ran_before = manifest["stages"].get("eval_before") or {}
    judge = (ran_before.get("options") or {}).get("judge") or before.get("judge")
    flags = "".join(f" {flag} {sh(value)}" for flag, value in (
        ("--judge", judge), ("--limit", before.get("limit")),
        ("--max-new-tokens", sampling.get("max_new_tokens"))) if value is not None)
    raise RunError("eval/before and eval/after were not measured alike, so the card cannot compare them: "
                   + "; ".join(note.removeprefix("- ") for note in notes), file=str(after / "eval.json"),
                   hint=f"re-run the after-eval as the before-eval ran: `pa eval {sh(provenance['pack']['name'])} "
                        f"--model {sh(model)} --adapter {sh(adapter)} --out {sh(after)}{flags}`, "
                        f"or both with `pa apply PACK --model MODEL --out {sh(adapter.parent)}`")


def _check_eval_matches(stage: str, summary: Any, path: Path, provenance: Mapping[str, Any], adapter: Path) -> None:
    """An eval published on the card must have measured this run: the pack digest must be the one
    policyalign.json records and, for `after`, the adapter weights' sha256 the current file's. An
    after-eval without a recorded hash (written before eval.json carried one) is refused too: it
    cannot be tied to these weights."""
    run_dir = adapter.parent
    hint = (f"re-run the eval for this run: `pa apply PACK --model MODEL --out {run_dir}` (re-runs stale evals)"
            + ("" if stage == "before" else
               f", or `pa eval PACK --model MODEL --adapter {adapter} --out {path.parent}`"))
    if not isinstance(summary, dict):
        raise RunError(f"eval/{stage}/eval.json must be a JSON object", file=str(path), hint=hint)
    pack = summary.get("pack")
    digest = pack.get("digest") if isinstance(pack, dict) else None
    if digest != provenance["pack"]["digest"]:
        raise RunError(f"eval/{stage}/eval.json was measured on a different pack (digest {digest!r}) than the "
                       f"adapter was trained on ({provenance['pack']['digest']!r} in {ADAPTER_DIR}/{PROVENANCE_FILE})",
                       file=str(path), where="/pack/digest", hint=hint)
    if stage != "after":
        return
    recorded = summary.get("adapter_sha256")
    if not isinstance(recorded, str) or not recorded:
        raise RunError(f"eval/{stage}/eval.json records no adapter_sha256, so it cannot be tied to this run's "
                       "adapter weights", file=str(path), where="/adapter_sha256", hint=hint)
    current = sha256_file(adapter / "adapter_model.safetensors")
    if recorded != current:
        raise RunError(f"eval/{stage}/eval.json measured other adapter weights (sha256 {recorded[:12]}…) than "
                       f"{ADAPTER_DIR}/adapter_model.safetensors now holds ({current[:12]}…)",
                       file=str(path), where="/adapter_sha256", hint=hint)


def unprintable(value: str) -> bool:
    """Whether text a card, policyalign.json or the Hub gives is unfit to print: it holds what pack text may not
    (C0 and C1 controls, U+009B being a one-character CSI; bidirectional overrides), or a tab or line break.
    Checking C0 controls alone, a forged adapter's `1.0.0<U+009B>2J` verified and was printed."""
    return bool(_LINE_BREAK.search(value) or text_problem(value))


def unsafe_id(value: str) -> bool:
    """Whether a name, version or id a card or policyalign.json records is unfit for a card: `unprintable`, or
    holding a backtick (cards quote ids in markdown code spans)."""
    return "`" in value or unprintable(value)


def _check_provenance(data: Any, path: Path) -> None:
    """policyalign.json must name the pack (name, version, digest) and the base model (id)."""
    required = {"pack": ("name", "version", "digest"), "base_model": ("id",)}
    if not isinstance(data, dict):
        raise RunError("policyalign.json must be a JSON object", file=str(path), hint=DISTILL_HINT)
    for section, keys in required.items():
        block = data.get(section)
        for key in keys:
            value = block.get(key) if isinstance(block, dict) else None
            if not isinstance(value, str) or not value:
                raise RunError(f"policyalign.json lacks {section}.{key}", file=str(path), where=f"/{section}/{key}",
                               hint="re-run the distill stage; it writes the pack and base model it trained on")
    for section, key in (("pack", "name"), ("pack", "version"), ("base_model", "id")):
        if unsafe_id(data[section][key]):
            raise RunError(f"{section}.{key} contains control characters or backticks", file=str(path),
                           where=f"/{section}/{key}", hint="names and ids must be plain text")
    if not _SHA256.fullmatch(data["pack"]["digest"]):
        # A pulled adapter's forged digest ("\x1b[2J...") passed as verified and went raw to the terminal:
        # `pa pull` prints it, and compares it with the local pack's.
        raise RunError("pack.digest is not a sha256 digest (64 hex digits)", file=str(path), where="/pack/digest",
                       hint="re-run the distill stage; it records the digest of the pack it trained on")
    _check_parents(data["pack"].get("parents", []), path)


def _check_parents(parents: Any, path: Path) -> None:
    """`pack.parents` (a child pack's: every pack it extends), when present: a list of
    {name, version, digest}, each plain text."""
    hint = "re-run the distill stage; it records every pack the pack extends"
    if not isinstance(parents, list):
        raise RunError("policyalign.json's pack.parents must be a list", file=str(path), where="/pack/parents", hint=hint)
    for index, parent in enumerate(parents):
        for key in PARENT_FIELDS:
            value = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(value, str) or not value or unsafe_id(value):
                raise RunError(f"policyalign.json's pack.parents[{index}] lacks a plain-text {key}", file=str(path),
                               where=f"/pack/parents/{index}/{key}", hint=hint)


def parents_of(pack: Mapping[str, Any]) -> list[dict[str, str]]:
    """A provenance or card `pack` block's parents as {name, version, digest} ([] when none are recorded)."""
    parents = pack.get("parents") if isinstance(pack, Mapping) else None
    if not isinstance(parents, list):
        return []
    return [{key: parent.get(key) for key in PARENT_FIELDS} for parent in parents if isinstance(parent, Mapping)]


def file_hashes(files: Mapping[str, Path]) -> dict[str, str]:
    """sha256 of every file to publish, keyed by repo path; `pa pull` re-checks them."""
    return {name: sha256_file(path) for name, path in sorted(files.items())}


# --------------------------------------------------------------------------- escaping


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md(value: Any) -> str:
    """Plain text for Markdown: one line, every inline Markdown/HTML-active character backslash-escaped.

    Templates only place these values mid-line (table cells, after a label), so line-start
    syntax (lists, headings) cannot be triggered; HTML becomes entities and inline syntax
    (links, images, emphasis, code, table pipes) is neutralised with backslashes.
    """
    text = " ".join(str(value).split())
    text = "".join(_HTML.get(ch, ch) for ch in text)
    return _MD_SPECIAL.sub(r"\\\1", text)


def py(value: Any) -> str:
    """A Python string literal (JSON's syntax is valid Python); backticks escaped so fences hold."""
    return json.dumps(str(value), ensure_ascii=False).replace("`", "\\u0060")


def sh(value: Any) -> str:
    """A single shell word."""
    return shlex.quote(str(value))


def _environment() -> Any:
    from jinja2 import Environment, StrictUndefined

    env = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(md=md, py=py, sh=sh, pct=format_rate)
    env.globals.update(pp=format_change, rate=format_rate, p_value=format_p, verdict=_verdict, better=BETTER)
    return env


def _verdict(before: Any, after: Any, metric: str) -> str:
    """A card row's "better" or "worse" after training, by which way `metric` improves (`metrics.BETTER`, as
    `pa eval --compare` says it); "–" where nothing changed or a side is missing."""
    return change_verdict(before, after, BETTER.get(metric)) or "–"


def render_template(name: str, context: Mapping[str, Any]) -> str:
    """Render one of the package's card templates (policyalign/templates/NAME)."""
    source = resources.files("policyalign").joinpath("templates", name).read_text(encoding="utf-8")
    return _environment().from_string(source).render(**context)


# --------------------------------------------------------------------------- front matter


def dump_front_matter(metadata: Mapping[str, Any]) -> str:
    """The YAML block that opens a card; safe_dump quotes whatever the values contain."""
    body = yaml.safe_dump(dict(metadata), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{body}---\n"


def hub_card_metadata(card_data: Any) -> dict[str, Any]:
    """A card's metadata as the Hub's `model_info` returns it (a CardData, a dict or None), as a dict."""
    data = card_data.to_dict() if hasattr(card_data, "to_dict") else card_data
    return data if isinstance(data, dict) else {}


def parse_card(text: str) -> tuple[dict[str, Any], str]:
    """Split a README into (metadata, body); a card without a valid YAML block has no metadata."""
    match = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", text, flags=re.S)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1))
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
        # Also a value PyYAML cannot build (`2001-13-45`, an integer past Python's digit limit) or block nesting
        # past the stack: a Hub repo's card is anyone's text, and `pa pack pull` of one crashed with a traceback.
        return {}, text
    return (data if isinstance(data, dict) else {}), text[match.end():]


# --------------------------------------------------------------------------- evals


@dataclass(frozen=True)
class SetRow:
    name: str
    kind: str
    n: Any
    metric: str
    before: Any
    after: Any
    before_ci: Any = None
    after_ci: Any = None
    p: float | None = None  # exact paired test of the change; None without both sides' responses
    of: Any = None  # items the set holds, when --limit evaluated fewer
    tool_items: Any = None  # a forbidden-call row's items: those naming forbidden tools, which its rate is over

    @property
    def limited(self) -> bool:
        return self.of not in (None, self.n)

    @property
    def items(self) -> str:
        """The set's items ("N of M" when limited); for a forbidden-call row, first how many name
        forbidden tools (`forbidden_tools`): its rate is over those, and "57" beside a rate of 2 such items
        read as 57 measured. Not "with tools": agent-tools' benign set offers tools in 54 of its 57 items,
        and its card said "2 with tools, of 57"."""
        items = f"{self.n} of {self.of}" if self.limited else str(self.n)
        return items if self.tool_items is None else f"{self.tool_items} with forbidden tools, of {items}"


def eval_sets(summary: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per-set metrics from an eval.json, whichever layout wrote it.

    The run contract has `sets: {name: {kind, n, <rates>, per_category}}`; evaluate.py also
    writes `sets` as a list with the numbers under `metrics.sets`. Both are read here so the
    card does not break when one side moves first.
    """
    if not summary:
        return {}
    sets = summary.get("sets")
    if isinstance(sets, dict):
        return {str(k): dict(v) for k, v in sets.items() if isinstance(v, dict)}
    metrics = summary.get("metrics")
    nested = metrics.get("sets") if isinstance(metrics, dict) else None
    return {str(k): dict(v) for k, v in nested.items() if isinstance(v, dict)} if isinstance(nested, dict) else {}


def eval_categories(summary: Mapping[str, Any] | None, set_name: str) -> dict[str, dict[str, Any]]:
    """Per-category metrics of one set: its own `per_category`, or, from an eval.json written before
    sets carried one, the pooled `metrics.categories` only when the eval has this one set (with two
    sets the pooled numbers mix their items, and would be shown as each set's)."""
    if not summary:
        return {}
    sets = eval_sets(summary)
    per = sets.get(set_name, {}).get("per_category")
    if isinstance(per, dict):
        return {str(k): dict(v) for k, v in per.items() if isinstance(v, dict)}
    if set(sets) != {set_name}:
        return {}
    metrics = summary.get("metrics")
    cats = metrics.get("categories") if isinstance(metrics, dict) else None
    return {str(k): dict(v) for k, v in cats.items() if isinstance(v, dict)} if isinstance(cats, dict) else {}


def primary_metric(kind: str, *blocks: Mapping[str, Any]) -> str | None:
    """The rate a set is judged by: violations for safety sets, over-refusals for benign ones."""
    preferred = PRIMARY_METRICS.get(kind)
    candidates = ([preferred] if preferred else []) + [m for m in FALLBACK_METRICS if m != preferred]
    for metric in candidates:
        if any(isinstance(b.get(metric), (int, float)) for b in blocks):
            return metric
    return preferred


def set_rows(evals: Mapping[str, Mapping[str, Any]],
             responses: Mapping[str, list[dict[str, Any]]] | None = None) -> list[SetRow]:
    """A row per eval set for its primary rate, and one for forbidden tool calls where the set has
    items naming forbidden tools (an agent pack's key evidence), each with its intervals and paired p."""
    from .metrics import paired_p

    before, after = eval_sets(evals.get("before")), eval_sets(evals.get("after"))
    responses, sizes = responses or {}, _set_sizes(evals.get("after"), evals.get("before"))
    rows = []
    for name in dict.fromkeys([*after, *before]):
        b, a = before.get(name, {}), after.get(name, {})
        kind = str(a.get("kind") or b.get("kind") or "")
        metrics = [primary_metric(kind, a, b)]
        if a.get("tool_items") or b.get("tool_items"):
            metrics.append("forbidden_tool_call_rate")
        for metric in (m for m in metrics if m is not None):
            rows.append(SetRow(name, kind, a.get("n", b.get("n")), metric, b.get(metric), a.get(metric),
                               _interval(b, metric), _interval(a, metric),
                               paired_p(responses.get("before"), responses.get("after"), metric, ("set", name)),
                               sizes.get(name),
                               a.get("tool_items", b.get("tool_items")) if metric == "forbidden_tool_call_rate" else None))
    return rows


def _set_sizes(*summaries: Mapping[str, Any] | None) -> dict[str, Any]:
    """Items each set holds (`items_in_set` in evaluate.py's `sets` list), so a limited eval's
    12 items read as "12 of 80" and not as the whole set."""
    sizes: dict[str, Any] = {}
    for summary in summaries:
        for entry in (summary or {}).get("sets") or []:
            if isinstance(entry, Mapping) and entry.get("items_in_set") is not None:
                sizes.setdefault(str(entry.get("name")), entry["items_in_set"])
    return sizes


def _interval(block: Mapping[str, Any], metric: str) -> Any:
    ci = block.get("ci95")
    return ci.get(metric) if isinstance(ci, Mapping) else None


def category_rows(evals: Mapping[str, Mapping[str, Any]], row: SetRow) -> list[dict[str, Any]]:
    before = eval_categories(evals.get("before"), row.name)
    after = eval_categories(evals.get("after"), row.name)
    names = list(dict.fromkeys([*after, *before]))
    return [{"category": c, "before": before.get(c, {}).get(row.metric), "after": after.get(c, {}).get(row.metric)}
            for c in names if before.get(c, {}).get(row.metric) is not None or after.get(c, {}).get(row.metric) is not None]


def unmeasured_categories(pack: Mapping[str, Any], evals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The policy's categories no evaluated item belongs to: no set may hold one (a child's inherited
    sets drop the items its changes no longer fit), and `--eval-limit` may skip a category; the
    card says what its numbers do not cover rather than letting the tables imply it all."""
    measured = {str(c) for summary in evals.values() for name in eval_sets(summary)
                for c in eval_categories(summary, name)}
    if not measured:
        return []
    ids = [str(c.get("id")) for c in pack.get("categories") or [] if isinstance(c, Mapping)]
    return [c for c in ids if c not in measured]


def unparseable_counts(evals: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, Any, Any]]:
    """(stage, set, unparseable, items) wherever a judge's verdicts could not be read. They are left
    out of the rates, so the table's "Items" overstates what a rate measured: a card whose judge
    could read 4 of 62 verdicts showed "62" beside a violation rate of 4 items, and nowhere said so."""
    return [(stage, name, block.get("unparseable"), block.get("n")) for stage in EVAL_STAGES
            for name, block in eval_sets(evals.get(stage)).items()
            if isinstance(block.get("unparseable"), int) and block["unparseable"] > 0]


def model_index(name: str, artifacts: RunArtifacts, *, limited: bool = False) -> list[dict[str, Any]]:
    """The Hub's `model-index` block: the adapter's (after) result on each of the pack's eval sets that it
    evaluated whole. A `--limit`ed set's rate (12 of its 80 items) is left out: the Hub's results widget and
    the leaderboards read a result by dataset, config, split and metric, with nothing for "12 of 80" (the
    spec's `dataset.args` is not shown or compared), so it stood beside full-set results of other adapters
    as the same measurement. The card's text gives it, as N of M with its interval. `limited`: include them
    too, as cards published before this did (`pa pull` checks those cards' values against eval.json)."""
    pack = artifacts.pack
    results = []
    for row in set_rows(artifacts.evals):
        if not isinstance(row.after, (int, float)) or (row.limited and not limited):
            continue
        results.append({
            "task": {"type": "text-generation", "name": "Safety policy compliance"},
            "dataset": {"name": f"{pack['name']}@{pack['version']} {row.name}", "type": f"policyalign/{pack['name']}",
                        "config": str(pack["version"]), "split": row.name},
            "metrics": [{"type": row.metric, "value": round(float(row.after), 6),
                         "name": row.metric.replace("_", " ").capitalize()}],
        })
    return [{"name": name, "results": results}] if results else []


# --------------------------------------------------------------------------- model card


def is_hub_id(model_id: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", model_id))


def hub_license(value: Any) -> str:
    """A license id the Hub accepts (lowercase, e.g. `cc-by-4.0`); anything else becomes `other`."""
    text = str(value or "").strip().lower()
    return text if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", text) else "other"


def check_license(given: str | None, option: str = "--license") -> None:
    """A `--license` the Hub cannot take is refused: `hub_license` turned it into `other`, and the
    card then said the base model's license "was not found" instead of the one the publisher gave.
    `option` is where it was given, for the error to name (`license in FILE`)."""
    if given is not None and hub_license(given) == "other" and str(given).strip().lower() != "other":
        raise InvalidInputError(f"{option}: invalid license id {given!r}",
                                hint="use the Hub's license id (letters, digits, '.', '+' or '-'), e.g. apache-2.0, "
                                     "mit, cc-by-4.0, or `other`")


def license_source(chosen: str, base: Mapping[str, Any]) -> str:
    """Where the card's license came from: `base`, `publisher` (a `--license` other than the base
    model's) or `unknown` (`other` because the base model's was not found). The card said "follows
    its base model" in all three cases."""
    recorded = base.get("license")
    if recorded and hub_license(recorded) == chosen:
        return "base"
    return "unknown" if chosen == "other" and not recorded else "publisher"


def card_license(given: str | None, base: Mapping[str, Any]) -> dict[str, str]:
    """`license` for the card: the one given (`--license`), else the base model's as policyalign.json
    records it, else `other`; a base model's `license: other` keeps its `license_name`/`license_link`
    (e.g. Qwen's research license), without which the Hub cannot say which license that is."""
    chosen = hub_license(given or base.get("license"))
    extra = {} if given or chosen != "other" else {
        key: str(base[key]) for key in ("license_name", "license_link") if isinstance(base.get(key), str)}
    return {"license": chosen, **extra}


def card_metadata(artifacts: RunArtifacts, repo_id: str, *, license: str | None = None) -> dict[str, Any]:
    """YAML metadata: what the Hub indexes (tags, base model, results) and what `pa pull` verifies."""
    pack, base = artifacts.pack, artifacts.base_model
    # a child pack's parents; a pack without any gets no key, so its card stays as it was
    parents = {"parents": parents_of(pack)} if parents_of(pack) else {}
    metadata: dict[str, Any] = {}
    if is_hub_id(base["id"]):
        metadata["base_model"] = base["id"]
    metadata.update({
        "library_name": "peft",
        **card_license(license, base),
        "pipeline_tag": "text-generation",
        "tags": ["policyalign", "safety", "lora", f"pack:{pack['name']}", f"pack-version:{pack['version']}"],
        "policyalign": {
            "version": str(artifacts.provenance.get("policyalign_version", __version__)),
            "pack": {"name": pack["name"], "version": pack["version"], "digest": pack["digest"], **parents},
            "base_model": {k: base.get(k) for k in ("name", "id", "revision", "commit") if k != "commit" or base.get(k)},
            "files": file_hashes(artifacts.files),
        },
    })
    index = model_index(repo_id.split("/")[-1], artifacts)
    if index:
        metadata["model-index"] = index
    return metadata


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, display value) rows for a two-column table."""
    if isinstance(data, Mapping):
        rows: list[tuple[str, str]] = []
        for key, value in data.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(data, (list, tuple)):
        return [(prefix, ", ".join(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in data))]
    if isinstance(data, float):  # 0.7552418741914961 says no more than 0.7552; policyalign.json keeps it all
        text = f"{data:.4g}"
        return [(prefix, text if any(c in text for c in ".en") else f"{text}.0")]  # 1.0 stays a float
    return [(prefix, "null" if data is None else str(data))]


def _settings_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The training settings as given, each one that did not act marked unused: `num_epochs` where `max_steps`
    set the length (the tiny demo's card read "num_epochs | 1.0" above "max_steps | 60", one pass to the eye,
    where its 60 steps made 12 passes over 40 instructions), and `ema_decay`, always recorded, beside the base
    teacher."""
    steps = config.get("max_steps")
    unused = {"num_epochs": "max_steps sets the length"} if is_number(steps) and steps > 0 else {}
    if config.get("teacher") == "base":
        unused["ema_decay"] = "the teacher is the base model"
    return [(key, f"{value}, not used: {unused[key]}" if key in unused else value) for key, value in _flatten(config)]


def _internalization_rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Before and after as recorded; `drop` is relative (1 - after/before), so it is labelled and shown
    as a percentage: a bare "drop | 0.554" under "before | 0.7504" and "after | 0.3346" read as the
    absolute fall, which those two numbers put at 0.416. Neither measured (internalization is None
    only without held-out instructions) says so: "before | null", "after | null" read as a failed measurement."""
    if "before" in data and data.get("before") is None and data.get("after") is None:
        return [("before, after", "not measured: no instructions were held out")]
    rows = _flatten({key: value for key, value in data.items() if key != "drop"})
    drop = data.get("drop")
    if is_number(drop):
        rows.append(("relative drop, 1 - after / before", f"{drop:.1%}"))
    return rows


def _lora_summary(adapter_config: Mapping[str, Any]) -> dict[str, str]:
    """Rank, alpha and targets for the card, plus the `--max-lora-rank` vLLM needs for this rank. On a
    multimodal base the targets alone read as if the vision tower's `q_proj` were adapted too (`trainer.lora_config`
    leaves it out through `exclude_modules`), so the card says they are the language model's."""
    rank = adapter_config.get("r")
    targets = adapter_config.get("target_modules")
    allowed = [r for r in VLLM_LORA_RANKS if isinstance(rank, int) and r >= rank]
    # PEFT saves a resolved `all-linear` as a set, in a different order each process
    shown = ", ".join(sorted(map(str, targets))) if isinstance(targets, (list, tuple)) else str(targets or "?")
    if adapter_config.get("exclude_modules"):  # a multimodal base: its vision tower's q_proj is left alone
        shown += " (language model only: exclude_modules in adapter_config.json names the rest)"
    return {
        "r": str(rank if rank is not None else "?"),
        "alpha": str(adapter_config.get("lora_alpha", "?")),
        "targets": shown,
        "vllm_max_rank": str(allowed[0] if allowed else 16),
    }


def card_context(artifacts: RunArtifacts, repo_id: str, revision: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the model-card template shows, as plain data."""
    from .eval_report import inherited_notes

    prov, pack, base = artifacts.provenance, artifacts.pack, artifacts.base_model
    adapter_config = read_json(artifacts.files["adapter_config.json"])
    rows = set_rows(artifacts.evals, artifacts.responses)
    plots = [(alt, path) for alt, path in (("Training loss", "loss.png"),
                                            ("Violation and over-refusal rates before and after", "eval/before_after.png"),
                                            ("Per-category rates before training", "eval/before/categories.png"),
                                            ("Per-category rates after training", "eval/after/categories.png"))
             if path in artifacts.files]
    after = artifacts.evals.get("after") or {}
    return {
        "front_matter": dump_front_matter(metadata),
        "repo_id": repo_id,
        "revision": revision,
        "pack": pack,
        "parents": parents_of(pack),
        "categories": [c for c in pack.get("categories") or [] if isinstance(c, Mapping)],
        "base": base,
        "base_is_hub": is_hub_id(base["id"]),
        "base_is_tiny": base["id"] == TINY,  # policyalign's own, which transformers cannot load by that name
        "license": metadata["license"],
        "license_source": license_source(metadata["license"], base),
        "base_license": hub_license(base.get("license")) if base.get("license") else None,
        "lora": _lora_summary(adapter_config),
        "settings": _settings_rows(prov.get("config") or {}) + _flatten(prov.get("training") or {}, "run"),
        "data": _flatten(prov.get("data") or {}),
        # a --no-filter ablation trained on every instruction: its card must not say they were selected
        "filtered": (prov.get("data") or {}).get("selection") != "none",
        "internalization": _internalization_rows(prov.get("internalization") or {}),
        "seeds": _flatten(prov.get("seeds") or {}),
        "has_eval": bool(artifacts.evals),
        "eval_stages": [s for s in EVAL_STAGES if s in artifacts.evals],
        "judge": after.get("judge") or (artifacts.evals.get("before") or {}).get("judge"),
        # which version of the judge's built-in rules (or an llm: judge's prompt) gave the verdicts: the same
        # judge under other rules labels answers otherwise, and the card alone made two such evals look alike
        "judge_rules": after.get("judge_rules") or (artifacts.evals.get("before") or {}).get("judge_rules"),
        "set_rows": rows,
        "unmeasured": unmeasured_categories(pack, artifacts.evals),
        "limited": any(row.limited for row in rows),
        "unparseable": unparseable_counts(artifacts.evals),
        "inherited": inherited_notes(after or artifacts.evals.get("before")),
        "category_tables": [(row, category_rows(artifacts.evals, row)) for row in rows],
        "drift": _flatten(after.get("drift")) if isinstance(after.get("drift"), Mapping) else [],
        "plots": plots,
        "files": metadata["policyalign"]["files"],
        "policyalign_version": metadata["policyalign"]["version"],
    }


def render_model_card(artifacts: RunArtifacts, repo_id: str, revision: str, *, license: str | None = None) -> str:
    """README.md for an adapter repo: YAML metadata, then the human-readable card.

    The metadata records the sha256 of the text below it (`body_sha256`), which `pa pull` checks:
    the prose repeats the pack digest and the rates, and the Hub shows it, so an edit there (a
    digest or a violation rate changed on the Hub) must not pass as verified."""
    metadata = card_metadata(artifacts, repo_id, license=license)
    context = card_context(artifacts, repo_id, revision, metadata)
    metadata["policyalign"]["body_sha256"] = body_sha256(parse_card(render_template(MODEL_CARD_TEMPLATE, context))[1])
    return render_template(MODEL_CARD_TEMPLATE, {**context, "front_matter": dump_front_matter(metadata)})


def body_sha256(body: str) -> str:
    """sha256 of a card's text below its metadata (as `parse_card` splits it)."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- pack card


def pack_card_metadata(pack: Any, files: Mapping[str, str]) -> dict[str, Any]:
    """Dataset-card metadata for a published pack; `files` maps pack-relative paths to sha256."""
    return {
        "license": hub_license(pack.license),
        "pretty_name": pack.title,
        "tags": ["policyalign", "policyalign-pack", "safety", f"pack:{pack.name}", f"pack-version:{pack.version}"],
        "policyalign": {
            "version": __version__,
            "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest,
                     "files_digest": pack.files_digest, "extends": list(pack.extends)},
            "files": dict(sorted(files.items())),
        },
    }


def _pack_set_row(eval_set: Any) -> dict[str, Any]:
    """A pack card's eval-set row: an inherited set's items say how many of its ancestor's were left out."""
    dropped = sum(n for _, n in eval_set.dropped)
    items = f"{len(eval_set.items)} ({dropped} left out)" if dropped else str(len(eval_set.items))
    return {"name": eval_set.name, "kind": eval_set.kind, "size": items, "inherited": bool(eval_set.origin)}


def render_pack_card(pack: Any, repo_id: str, revision: str, files: Mapping[str, str]) -> str:
    """README.md for a pack's dataset repo."""
    metadata = pack_card_metadata(pack, files)
    context = {
        "front_matter": dump_front_matter(metadata),
        "pack": pack,
        "repo_id": repo_id,
        "revision": revision,
        "categories": pack.categories,
        "eval_sets": [_pack_set_row(s) for s in pack.evaluated_sets()],
    }
    return render_template(PACK_CARD_TEMPLATE, context)
