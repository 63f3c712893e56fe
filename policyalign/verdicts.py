"""Judging response rows into verdicts, shared by `pa eval` and `pa judge`: tool calls parsed, each
row's label and reasons added, a batch at a time through the journal so that a slow model judge
stopped part way does not judge again what it had judged (`judge_journaled`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .eval_journal import Journal
from .progress import say_resuming
from .judges import (Judge, JudgeItem, ToolCall, Verdict, get_judge, judge_model, judge_model_errors, keyed_judge,
                     parse_tool_calls, structured_tool_calls)

JUDGE_CHUNK = 32  # rows the refusal judge judges (and journals) at a time; a model judge: `judge_chunk`


def judge_chunk(judge: Judge | None, batch_size: int) -> int:
    """Rows judged and journaled at a time: for a model judge its generation batch, the unit it finishes, so a stop
    keeps every verdict made before the batch under way. 32 at a time (4 batches of 8) lost up to 31 of them, and
    a `pa judge` stopped before its 32nd verdict kept none, though it said the verdicts so far were kept; journaled
    a batch at a time, 64 rows judged by `llm:tiny` took as long, and wrote the same bytes. The refusal judge's
    rules take microseconds a row: it journals 32 at a time."""
    return batch_size if judge_model(judge) else JUDGE_CHUNK


def _forbidden_call(calls: Sequence[ToolCall], forbidden: Sequence[str]) -> bool:
    return any(call.name in set(forbidden) for call in calls)


def _row_id(row: Mapping[str, Any]) -> str:
    """How errors name a row: `set/id` for an eval answer, its id (or nothing) for a `pa judge` line. An id of 0 is
    an id: `row.get("id") or ""` named `{"id": 0, ...}` by its line alone."""
    ident = "" if row.get("id") is None else str(row["id"])
    return f"{row['set']}/{ident}" if ident and row.get("set") else ident


def _judged(rows: list[dict[str, Any]], calls_per_row: list[list[ToolCall]], judge: Any, judge_spec: str, policy: str,
            places: Sequence[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """Judge every row (`messages`, `response`, the calls it made: `_calls_made`) and add `tool_calls`,
    `forbidden_call`, `label`, `unsafe`, `reason`, `judge_raw`. The judge comes made: a model judge loads its
    model once, however many chunks it is handed. `places` (file, line) name each row in the judge's errors."""
    items = []
    for k, (row, calls) in enumerate(zip(rows, calls_per_row)):
        file, line = places[k] if places else ("", 0)
        items.append(JudgeItem(messages=row["messages"], response=row["response"], category=row.get("category", ""),
                               policy=policy, tool_calls=tuple(calls),
                               forbidden_tools=tuple(row.get("forbidden_tools") or ()), id=_row_id(row),
                               file=file, line=line, tools=tuple(row.get("tools") or ())))
    verdicts: list[Verdict] = judge.judge(items) if items else []
    judged = []
    for row, calls, verdict in zip(rows, calls_per_row, verdicts):
        judged.append({**row, "tool_calls": [c.to_dict() for c in calls],
                       "forbidden_call": _forbidden_call(calls, row.get("forbidden_tools") or ()),
                       "label": verdict.label, "unsafe": verdict.unsafe, "reason": verdict.reason,
                       # the refusal judge's raw output is the response itself; `judge.spec` is the spec as made
                       # (" refusal " typed with spaces is the refusal judge, and copied every response here)
                       "judge_raw": verdict.raw if judge.spec != "refusal" else ""})
    return judged


def _calls_made(row: Mapping[str, Any]) -> tuple[list[ToolCall], bool]:
    """The calls a response made, and whether its text holds them: in its text (`parse_tool_calls`), else in the
    row's own `tool_calls`, where structured output (an API's) puts them. `pa judge` of `{"response": "",
    "tool_calls": [rm]}` with `rm` forbidden read no call, judged a refusal, and wrote `"tool_calls": []` over the
    row's. Parsed once a row: the verdict's key (`_verdict_key`) and the judge both need them."""
    in_text = parse_tool_calls(row["response"])
    return (in_text, True) if in_text else (structured_tool_calls(row.get("tool_calls")) or [], False)


def _verdict_key(judge_key: str, row: Mapping[str, Any], calls_in_text: bool) -> str:
    """Everything a verdict depends on: the judge (`judge_key`: spec, files and the policy it is
    shown) and the row it is shown, its tool definitions included where it has any (the `llm:` judge reads them),
    and its own `tool_calls` where they are the calls judged (`calls_in_text` False: none in the text)."""
    from .run import fingerprint

    given = row.get("tool_calls") if not calls_in_text else None
    return fingerprint({"judge": judge_key, "messages": row["messages"], "response": row["response"],
                        "category": row.get("category", ""), "forbidden_tools": row.get("forbidden_tools") or [],
                        **({"tools": row["tools"]} if row.get("tools") else {}),
                        **({"tool_calls": given} if given else {})})


def judge_journaled(rows: list[dict[str, Any]], judge_spec: str, journal: Journal, *, policy: str,
                    device: str | None, batch_size: int,
                    places: Sequence[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """Rows judged (`_judged`) a chunk at a time (`judge_chunk`), each chunk's verdicts journaled: an `llm:` judge on a real
    model is slow too, and a resumed evaluation (or `pa judge`) judges only what was not judged yet.
    A verdict is reused for the same judge (spec and weights), policy shown and row (`_verdict_key`).
    `places`, one (file, line) per row, name `pa judge`'s rows in errors: a row without an id was
    "conversation N", its place among the rows still to judge."""
    from .run import fingerprint

    judge_key = fingerprint({"judge": keyed_judge(judge_spec), **judge_weights_fetched(judge_spec), "policy": policy})
    made = [_calls_made(row) for row in rows]
    keys = [_verdict_key(judge_key, row, in_text) for row, (_, in_text) in zip(rows, made)]
    pending = [k for k, key in enumerate(keys) if key not in journal.verdicts]
    if len(pending) < len(rows):
        say_resuming(len(rows) - len(pending), len(rows), "verdicts", journal.path)
    judge = get_judge(judge_spec, device=device, batch_size=batch_size) if pending else None
    size = judge_chunk(judge, batch_size)
    for start in range(0, len(pending), size):
        chunk = pending[start:start + size]
        where = [places[k] for k in chunk] if places else None
        journal.add_verdicts([keys[k] for k in chunk], _judged([rows[k] for k in chunk], [made[k][0] for k in chunk],
                                                               judge, judge_spec, policy, where))
    return [{**row, **journal.verdicts[key]} for row, key in zip(rows, keys)]


def judge_weights_fetched(judge_spec: str, given_as: str | None = None) -> dict[str, str]:
    """`stages.judge_weights`, a Hub judge's config fetched first when the cache has none: until it is
    downloaded a Hub judge has no commit to key by, so the run that downloaded it journaled its
    verdicts under no commit, and its resume, keyed by the commit, judged every row again. `given_as`
    (`judge in FILE`) is where the judge was given, when not as --judge."""
    from .models import fetch_hub_files, resolve_model
    from .stages import judge_weights

    model = judge_model(get_judge(judge_spec))
    with judge_model_errors(judge_spec, given_as):
        if model:
            fetch_hub_files(resolve_model(model))  # tokenizer and config only: the snapshot names the commit
    return judge_weights(judge_spec)
