"""Policy-Sensitive Filtering: keep the instructions where the policy changes behaviour most.

For each synthesized instruction the student (no policy) samples its own on-policy response;
the policy sensitivity is the mean per-token reverse KL(student || teacher) over that
response, the teacher being the same model with the policy as its system message. High
sensitivity means the policy would make the model answer differently, which is where
distillation has something to teach. A held-out slice, never trained on, gives the
internalization metric before (here) and after (distill.py) training.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .distill_settings import check_seed
from .errors import InvalidInputError
from .io import append_jsonl, iter_jsonl, read_journal, write_jsonl
from .progress import progress_bar, say_resuming

if TYPE_CHECKING:
    from .generation import Backend, SamplingParams
    from .models import LoadedModel
    from .scoring import PolicyScorer

PARTIAL = "scored.partial.jsonl"
CHUNK = 32


@dataclass(frozen=True)
class FilterConfig:
    """Filtering settings (`pa filter`'s flags, the pack's and `pa apply`'s), checked when made: a bad one
    is refused naming its flag before the model loads, not as a backend error after minutes of loading."""

    keep: float | None = 0.5
    top_n: int | None = None
    min_score: float | None = None
    no_filter: bool = False
    samples: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    kl_top_k: int = 256
    heldout: float = 0.1
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        chosen = [x is not None for x in (self.top_n, self.min_score)].count(True)
        if chosen > 1:
            raise InvalidInputError("use only one of --top-k and --min-score (or --keep)")
        if self.keep is not None and not 0 < self.keep <= 1:
            raise InvalidInputError(f"--keep must be in (0, 1], got {self.keep}")
        # No score is >= NaN or inf (an empty selection), and every one is >= -inf (--no-filter, in other words).
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise InvalidInputError(f"--min-score must be a finite number, got {self.min_score}",
                                    hint="e.g. --min-score 0.5 (or --no-filter to keep every instruction)")
        if self.top_n is not None and self.top_n < 1:
            raise InvalidInputError(f"--top-k must be at least 1, got {self.top_n}")
        for flag, value in (("--samples", self.samples), ("--batch-size", self.batch_size),
                            ("--max-new-tokens", self.max_new_tokens)):
            if value < 1:  # here, before the model loads, not as a backend error after it
                raise InvalidInputError(f"{flag} must be at least 1, got {value}")
        if not 0 <= self.heldout < 1:
            raise InvalidInputError(f"--heldout must be in [0, 1), got {self.heldout}")
        check_seed(self.seed)

    @property
    def rule(self) -> str:
        """The selection rule in words (`keep 0.5`, `top-5`, `score>=0.7`, `none`): run.json and the card say
        how the training set was chosen without the reader decoding which of the exclusive flags was given."""
        if self.no_filter:
            return "none"
        if self.top_n is not None:
            return f"top-{self.top_n}"
        if self.min_score is not None:
            return f"score>={self.min_score}"
        return f"keep {self.keep}"


@dataclass(frozen=True)
class FilterResult:
    scored: int
    selected: int
    heldout: int
    internalization_before: float | None
    per_category: dict[str, dict[str, int]]


# --------------------------------------------------------------------------- reading instructions

INSTRUCTION_HINT = ('each line needs "id" (unique), "category" and "messages" (chat turns such as '
                    '{"role": "user", "content": "..."}), and "tools" when given is a list of function definitions, '
                    "as `pa synthesize` writes; fix or delete the line")


def read_instructions(path: Path, remake: str = "") -> list[dict[str, Any]]:
    """Instruction rows (instructions/selected/heldout.jsonl), checked up front: a hand-edited line
    would otherwise fail as a bare KeyError after minutes of scoring, and a repeated id would
    silently share one score (ids key the resumable partial file). `remake` is the command that writes
    the file anew, which a bad line's hint names: a file cut short mid-line was named by file and line
    alone, leaving the user to guess whether the run could go on and how."""
    again = f"; or delete {path.name} and run {remake} again to write it anew" if remake else ""
    try:
        numbered = list(iter_jsonl(path))
    except InvalidInputError as exc:  # a line that is no JSON object: cut short, or edited by hand
        raise InvalidInputError(exc.problem.message, file=exc.problem.file, where=exc.problem.where,
                                hint=exc.problem.hint + again) from None
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, row in numbered:
        problem = _instruction_problem(row, seen)
        if problem:
            raise InvalidInputError(problem, file=str(path), where=f"line {lineno}", hint=INSTRUCTION_HINT + again)
        seen[row["id"]] = lineno
        rows.append(row)
    return rows


def instruction_conversation(record: dict[str, Any]) -> dict[str, Any]:
    """The conversation an instruction row holds (its messages, and its tools when it has any), as sampling
    and training both give it to the model: a row's id, category and provenance are no part of the prompt."""
    return {"messages": record["messages"], **({"tools": record["tools"]} if record.get("tools") else {})}


def _instruction_problem(row: dict[str, Any], seen: dict[str, int]) -> str | None:
    from .chat import conversation

    for key in ("id", "category"):
        if not isinstance(row.get(key), str) or not row[key]:
            return f'"{key}" is missing or not a non-empty string'
    if not isinstance(row.get("messages"), list) or not row["messages"]:
        return '"messages" is missing or not a non-empty list of chat turns'
    try:  # each turn and tool as chat templates need them: a bad one was a traceback from inside the template
        conversation({"messages": row["messages"], "tools": row.get("tools")})
    except InvalidInputError as exc:
        return exc.problem.message
    if "provenance" in row and not isinstance(row["provenance"], dict):  # split_heldout reads its "source"
        return '"provenance" is not an object like {"source": "generated"}; fix it or drop the key'
    if row["id"] in seen:
        return f'id {row["id"]!r} repeats line {seen[row["id"]]}'
    return None


# --------------------------------------------------------------------------- sampling and scoring


def sampling_params(config: FilterConfig, seed: int) -> "SamplingParams":
    """The student's on-policy sampling for scoring: greedy at temperature 0, seeded by the caller
    (`chunk_seed`) so that a resumed run samples the same responses."""
    from .generation import SamplingParams

    return SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                          do_sample=config.temperature > 0, seed=seed)


def chunk_seed(seed: int, index: int) -> int:
    """A seed per fixed chunk of the instruction list, so a resumed run samples the same responses."""
    return int.from_bytes(hashlib.blake2b(f"psf:{seed}:{index}".encode(), digest_size=4).digest(), "little")


def sample_and_score(scorer: "PolicyScorer", records: Sequence[dict[str, Any]], params: "SamplingParams",
                     samples: int, *, backend: "str | Backend" = "transformers",
                     batch_size: int = 8) -> list[dict[str, Any]]:
    """On-policy responses from the student, scored against the policy teacher (mean over samples).

    `backend` is a backend name or one already made: a caller sampling chunk after chunk passes
    one, since a vLLM engine takes minutes to start and keeps its GPU memory until the process ends.
    """
    from .generation import get_backend

    gen = get_backend(backend, scorer.loaded) if isinstance(backend, str) else backend
    conversations = [instruction_conversation(r) for r in records]
    per_record: list[list[tuple[Any, Any]]] = [[] for _ in records]
    for k in range(samples):
        with scorer.student_context():
            outs = gen.generate(conversations, _reseed(params, k), batch_size=batch_size, progress=False)
        scores = scorer.score(records, [o.token_ids for o in outs])
        for i, (out, score) in enumerate(zip(outs, scores)):
            per_record[i].append((out, score))
    return [_scored_row(r, pairs) for r, pairs in zip(records, per_record)]


def _reseed(params: "SamplingParams", k: int) -> "SamplingParams":
    from dataclasses import replace

    return replace(params, seed=params.seed + 7919 * k)


def _scored_row(record: dict[str, Any], pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    first_out, _ = pairs[0]
    scores = [s for _, s in pairs]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        **record,
        "response": first_out.text,
        "response_ids": first_out.token_ids,
        "score": mean([s.reverse_kl for s in scores]),
        "score_full": mean([s.reverse_kl_full for s in scores]),
        "logprob_gap": mean([s.logprob_gap for s in scores]),
        "response_tokens": len(first_out.token_ids),
        "samples": len(scores),
    }


def score_instructions(run_dir: Path, scorer: "PolicyScorer", records: list[dict[str, Any]],
                       config: FilterConfig, *, backend: str = "transformers", progress: bool = True,
                       scores_key: str = "") -> list[dict[str, Any]]:
    """Score every instruction, reusing the scores made under the same `scores_key` (the filter stage's
    score key: instructions, pack, model, backend and sampling settings) in the same numerics
    (`models.numerics`): scored.partial.jsonl's after a crash, scored.jsonl's when only the selection
    changes. Each row records what it was made under, so nothing else is mixed in (after an
    out-of-memory crash in bf16 on a GPU, a resume with `PA_DTYPE=fp32` re-scores the rest too), and
    an attempt with other settings that failed leaves the finished scores reusable (the run's record
    of them used to be replaced by the failed attempt's, and going back re-scored everything)."""
    from .generation import get_backend
    from .models import numerics

    partial = Path(run_dir) / PARTIAL
    made_under = {"scores": scores_key, **numerics(scorer.loaded.device, scorer.loaded.dtype)}
    done = _reusable_scores(Path(run_dir), records, made_under)
    scorer.prompts([r for r in records if r["id"] not in done], room=config.max_new_tokens,  # fail before sampling
                   file=str(Path(run_dir) / "instructions.jsonl"))
    chunks = [records[i:i + CHUNK] for i in range(0, len(records), CHUNK)]
    gen: "Backend | None" = None  # one for every chunk, made only if one is left to sample
    with progress_bar(progress, len(records), "scoring policy sensitivity") as advance:
        advance(sum(1 for r in records if r["id"] in done))
        for index, chunk in enumerate(chunks):
            if all(r["id"] in done for r in chunk):
                continue
            gen = gen or get_backend(backend, scorer.loaded)
            rows = sample_and_score(scorer, chunk, sampling_params(config, chunk_seed(config.seed, index)),
                                    config.samples, backend=gen, batch_size=config.batch_size)
            check_finite(rows)
            for row in rows:
                row["made_under"] = made_under
            append_jsonl(partial, rows)
            for row in rows:
                done[row["id"]] = row
            advance(len(chunk))
    return [done[r["id"]] for r in records]


def check_finite(rows: list[dict[str, Any]]) -> None:
    """Raise for a score that is NaN or infinite: the student or the teacher overflowed on that instruction.

    Such a score would rank first or last at random (NaN compares false both ways), crash the
    histogram and poison the held-out mean; sampling checks its logits the same way.
    """
    from .errors import ModelError
    from .models import OVERFLOW_HINT

    for row in rows:
        if not all(math.isfinite(row[key]) for key in ("score", "score_full", "logprob_gap")):
            raise ModelError(f"the model produced NaN or infinite logits scoring instruction {row['id']!r}",
                             hint=OVERFLOW_HINT)


SCORED_KEYS = ("id", "response", "response_ids", "score", "score_full", "logprob_gap", "response_tokens", "samples")


def _reusable_scores(run_dir: Path, records: list[dict[str, Any]],
                     made_under: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{id: scored row} of scored.jsonl and then scored.partial.jsonl (torn lines skipped, see
    `io.read_journal`) made under `made_under`, saying how many instructions they held scores of
    made otherwise, which are scored again, and, as `pa eval` does, how many scores a stopped run
    left in scored.partial.jsonl are picked up (the resume went unsaid)."""
    import sys

    saved, partial = ([row for row in read_journal(run_dir / name) if all(key in row for key in SCORED_KEYS)]
                      for name in ("scored.jsonl", PARTIAL))
    rows = saved + partial
    done = {row["id"]: row for row in rows if row.get("made_under") == made_under}
    wanted = {r["id"] for r in records}
    if resumed := {row["id"] for row in partial if done.get(row["id"]) is row} & wanted:  # its last score of the id
        say_resuming(len(resumed), len(wanted), "scores", run_dir / PARTIAL)
    again = ({row["id"] for row in rows} - set(done)) & wanted
    if again:
        print(f"{run_dir}: scoring {len(again)} instructions again, scored with other settings or inputs, or on "
              f"another device type or precision than {made_under['device']} {made_under['dtype']}", file=sys.stderr)
    return done


# --------------------------------------------------------------------------- selection


def split_heldout(records: list[dict[str, Any]], fraction: float,
                  seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train pool, held out): per category, a deterministic `fraction` of the distinct instructions (at
    least one when the category has three or more, and never all); generated instructions are held out before seeds.

    Instructions are told apart by their normalised text, not their ids: a hand-made file can hold
    the same request twice under two ids (or in two categories), and one copy trained on would
    leak into the held-out internalization metric. Every copy of a held-out text is held out.
    """
    if fraction <= 0:
        return list(records), []
    from .textnorm import normalize
    from .parsing import instruction_text

    # A row with no user text to compare is its own instruction.
    text = {r["id"]: normalize(instruction_text(r)) or f"\0{r['id']}" for r in records}
    by_cat: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_cat[r["category"]][text[r["id"]]].append(r)

    def rank(r: dict[str, Any]) -> tuple[bool, str]:
        return (r.get("provenance", {}).get("source") == "seed",
                hashlib.sha256(f"{seed}:{r['id']}".encode()).hexdigest())

    held: set[str] = set()
    for copies in by_cat.values():
        # never the whole category: --heldout 0.9 of 3 rounded to 3 and left it nothing to train on
        n = min(len(copies) - 1, max(1, round(fraction * len(copies)))) if len(copies) >= 3 else 0
        held.update(sorted(copies, key=lambda t: min(map(rank, copies[t])))[:n])
    return [r for r in records if text[r["id"]] not in held], [r for r in records if text[r["id"]] in held]


def select(scored: list[dict[str, Any]], config: FilterConfig) -> list[dict[str, Any]]:
    """The instructions to train on, balanced per category, highest policy sensitivity first."""
    if config.no_filter:
        return list(scored)
    if config.min_score is not None:
        return [r for r in scored if r["score"] >= config.min_score]
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(scored, key=lambda r: (-r["score"], r["id"])):
        by_cat[r["category"]].append(r)
    if config.top_n is not None:
        chosen = _round_robin(by_cat, config.top_n)
    else:
        chosen = [r for rows in by_cat.values() for r in rows[: kept_count(config.keep, len(rows))]]
    ids = {r["id"] for r in chosen}
    return [r for r in scored if r["id"] in ids]


def kept_count(keep: float, rows: int) -> int:
    """How many of a category's `rows` `--keep` keeps: the fraction rounded up, at least one.

    Rounded up after a tolerance: 0.28 * 25 is 7.000000000000001 in floating point, and a plain
    ceil kept 8 of 25 (32%) where 7 is 28%."""
    return max(1, math.ceil(keep * rows - 1e-9))


def _round_robin(by_cat: dict[str, list[dict[str, Any]]], total: int) -> list[dict[str, Any]]:
    """Take the best remaining instruction of each category in turn until `total` are chosen."""
    chosen: list[dict[str, Any]] = []
    depth = 0
    while len(chosen) < total and any(depth < len(rows) for rows in by_cat.values()):
        for rows in by_cat.values():
            if depth < len(rows) and len(chosen) < total:
                chosen.append(rows[depth])
        depth += 1
    return chosen


def threshold(selected: list[dict[str, Any]], scored: list[dict[str, Any]]) -> float | None:
    """The lowest selected score, when the selection dropped anything and kept every instruction scoring
    at least that (for the histogram's "kept >=" line). A selection per category (--keep, --top-k) is no
    such cut: it drops instructions scoring above another category's lowest kept one, which the line
    said were kept."""
    if len(selected) == len(scored) or not selected:
        return None
    cut = min(r["score"] for r in selected)
    return cut if sum(r["score"] >= cut for r in scored) == len(selected) else None


def plot_histogram(scored: list[dict[str, Any]], selected: list[dict[str, Any]], path: Path) -> None:
    """filter_hist.png: the scores kept and not kept, with the cut where one score separates them (`threshold`),
    so a user choosing --keep or --min-score sees where the selection falls in the distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_open

    kept_ids = {r["id"] for r in selected}
    kept = [r["score"] for r in scored if r["id"] in kept_ids]
    dropped = [r["score"] for r in scored if r["id"] not in kept_ids]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    # Kept and dropped stacked: a selection per category keeps some scores below others it drops.
    ax.hist([kept, dropped], bins=min(40, max(5, len(scored) // 3)), stacked=True, color=["#4c72b0", "#b0b0b0"],
            alpha=0.85, label=["kept", "not kept"])
    cut = threshold(selected, scored)
    if cut is not None:
        ax.axvline(cut, color="#c44e52", linestyle="--", label=f"kept >= {cut:.3g}")
    ax.legend()
    ax.set_xlabel("policy sensitivity: mean reverse KL(student || teacher) per token")
    ax.set_ylabel("instructions")
    ax.set_title(f"Policy-Sensitive Filtering: {len(selected)} of {len(scored)} kept")
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def per_category(scored: list[dict[str, Any]], selected: list[dict[str, Any]],
                 heldout: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Scored, selected and held-out counts per category, recorded in run.json: selection balances per
    category, and a category the filter left with nothing to train on shows here rather than in a worse adapter."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"scored": 0, "selected": 0, "heldout": 0})
    for name, rows in (("scored", scored), ("selected", selected), ("heldout", heldout)):
        for r in rows:
            table[r["category"]][name] += 1
    return dict(table)


def mean_score(rows: list[dict[str, Any]]) -> float | None:
    """The mean policy sensitivity of `rows`, None for none: over held-out rows, the internalization gap."""
    return sum(r["score"] for r in rows) / len(rows) if rows else None


# --------------------------------------------------------------------------- the stage


def filter_run(run_dir: Path, loaded: "LoadedModel", policy: str, config: FilterConfig, *,
               backend: str = "transformers", progress: bool = True, scores_key: str = "") -> FilterResult:
    """Score instructions.jsonl, hold out a slice, select; write scored/selected/heldout and a histogram.
    `scores_key` names what the scores depend on (`score_instructions`)."""
    from .run import require
    from .scoring import PolicyScorer

    run_dir = Path(run_dir)
    synthesize = "pa synthesize PACK --model M --out RUN_DIR"
    records = read_instructions(require(run_dir, "instructions.jsonl", synthesize),
                                remake=f"`{synthesize}` (or the run's `pa apply`)")
    if not records:
        raise InvalidInputError("instructions.jsonl is empty", file=str(run_dir / "instructions.jsonl"),
                                hint="re-run synthesis; the pack's seeds alone should give some instructions")
    scorer = PolicyScorer(loaded, policy, top_k=config.kl_top_k, batch_size=config.batch_size)
    scored = score_instructions(run_dir, scorer, records, config, backend=backend, progress=progress,
                                scores_key=scores_key)
    pool, heldout = split_heldout(scored, config.heldout, config.seed)
    selected = select(pool, config)
    write_jsonl(run_dir / "scored.jsonl", scored)
    write_jsonl(run_dir / "selected.jsonl", selected)
    write_jsonl(run_dir / "heldout.jsonl", heldout)
    plot_histogram(pool, selected, run_dir / "filter_hist.png")
    (run_dir / PARTIAL).unlink(missing_ok=True)
    return FilterResult(len(scored), len(selected), len(heldout), mean_score(heldout),
                        per_category(scored, selected, heldout))


def result_dict(result: FilterResult, config: FilterConfig) -> dict[str, Any]:
    return {**asdict(result), "config": asdict(config), "rule": config.rule}
