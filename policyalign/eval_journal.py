"""The journal that makes an evaluation resumable (`responses.partial.jsonl`): a model's answers
and a judge's verdicts take hours on a real model, and a run killed part way must not make them
again. `evaluate` journals both; `pa judge` journals its verdicts beside its output.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import append_jsonl, read_journal, write_jsonl

if TYPE_CHECKING:
    from .evaluate import EvalTask
    from .generation import SamplingParams
    from .pack import Pack

JOURNAL = "responses.partial.jsonl"
JOURNAL_SCHEMA = "policyalign.eval-journal/1"
RESPONSE_FIELDS = ("response", "finish_reason", "response_tokens")
VERDICT_FIELDS = ("tool_calls", "forbidden_call", "label", "unsafe", "reason", "judge_raw")


def journal_settings(loaded: Any, adapter: str | None, adapter_hash: str | None, policy_in_context: bool,
                     params: "SamplingParams", pack: "Pack") -> dict[str, Any]:
    """What every response depends on besides its item: the model (where it loads from: tiny's
    cache directory names its weights; the files of a local directory, wherever it is; the revision and the cache
    snapshot's commit of a Hub id), the adapter's weights, the policy, the sampling and the
    numerics (device type and dtype: bf16 on a GPU answers otherwise than fp32 on a CPU)."""
    from .models import keyed_name, loaded_commit, numerics, weights_key

    ref = loaded.ref  # a local directory by its files alone: moved elsewhere, its answers are still its own
    return {"model": keyed_name(ref) if ref.kind == "local" else ref.location, "revision": ref.revision, "commit": loaded_commit(loaded), "model_files": weights_key(ref),
            "adapter": adapter_hash or adapter, "policy_in_context": policy_in_context,
            "sampling": dataclasses.asdict(params), "pack": pack.digest, **numerics(loaded.device, loaded.dtype)}


@dataclass
class Journal:
    """`responses.partial.jsonl` in an eval's out dir: every batch of answers, and every chunk of
    verdicts, appended and fsynced as it is made, so an evaluation killed after 250 of 300 items
    answers only the last 50 when run again (`pa eval` with the same options, or `pa apply`).

    Its first line holds the `journal_settings` the answers were made under; a journal made under
    others is discarded with a one-line notice. Answers are matched to items by set, id and what
    the model was shown, verdicts by the judge and what it was shown, so a changed item or judge
    is done again, never served from the journal. A line torn by a kill is skipped. `evaluate`
    deletes the journal once eval.json and responses.jsonl are written. `pa judge` (`judge_file`)
    keeps its verdicts in one too, beside its output."""

    path: Path
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, settings: Mapping[str, Any], *, made: str = "responses",
             redo: str = "answering every item again") -> "Journal":
        """The journal at `path` when it was made under `settings`, else a new one in its place;
        the notice says what its `made` (responses, verdicts) depended on that changed, and `redo`."""
        rows = read_journal(path)
        header = {"journal": JOURNAL_SCHEMA, "settings": json.loads(json.dumps(settings, default=str))}
        if rows and rows[0] == header:
            journal = cls(path)
            for row in rows[1:]:
                journal._take(row)
            return journal
        if path.exists():
            print(f"discarding {path}: {_journal_change(rows[0] if rows else {}, header, made)}; {redo}",
                  file=sys.stderr)
        write_jsonl(path, [header])
        return cls(path)

    def _take(self, row: Mapping[str, Any]) -> None:
        if isinstance(row.get("shown"), str) and all(name in row for name in RESPONSE_FIELDS):
            self.responses[row["shown"]] = {name: row[name] for name in RESPONSE_FIELDS}
        elif isinstance(row.get("verdict"), str) and all(name in row for name in VERDICT_FIELDS):
            self.verdicts[row["verdict"]] = {name: row[name] for name in VERDICT_FIELDS}

    def add_responses(self, answered: Sequence[tuple[EvalTask, str, Any]]) -> None:
        """Journal (task, its shown key, its Generation) triples."""
        rows = [{"set": task.set_name, "id": task.item.id, "shown": key, "response": gen.text,
                 "finish_reason": gen.finish_reason, "response_tokens": len(gen.token_ids)}
                for task, key, gen in answered]
        append_jsonl(self.path, rows)
        for row in rows:
            self._take(row)

    def add_verdicts(self, keys: Sequence[str], judged: Sequence[Mapping[str, Any]]) -> None:
        rows = [{"set": row.get("set"), "id": row.get("id"), "verdict": key, **{n: row[n] for n in VERDICT_FIELDS}}
                for key, row in zip(keys, judged)]
        append_jsonl(self.path, rows)
        for row in rows:
            self._take(row)


def is_journal_header(row: Any) -> bool:
    """Whether `row` (a journal's first line) is the header of a journal this version of policyalign wrote."""
    return isinstance(row, Mapping) and row.get("journal") == JOURNAL_SCHEMA and isinstance(row.get("settings"), dict)


def _journal_change(found: Mapping[str, Any], header: Mapping[str, Any], made: str = "responses") -> str:
    """Why a journal cannot be resumed, naming the settings that changed."""
    if not is_journal_header(found):
        return "not a journal this version of policyalign wrote"
    then, now = found["settings"], header["settings"]
    changed = sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))
    return f"its {made} were made with another {', '.join(changed)}"
