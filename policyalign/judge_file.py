"""`pa judge`: judging any JSONL file of responses, each line checked first (an error names file and
line), the verdicts journaled beside the output so a stopped run resumes, the rates those of `pa eval`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .eval_journal import Journal
from .io import iter_jsonl, output_dir, write_jsonl
from .judges import get_judge, keyed_judge, structured_tool_calls
from .metrics import summarize
from .run import JUDGE_OUT_BUSY, run_lock
from .schema import BENIGN_EXPECT, HARMFUL_EXPECT
from .verdicts import judge_journaled, judge_weights_fetched

EXPECTS = (*HARMFUL_EXPECT, *BENIGN_EXPECT)


def _bad_row(path: Path, lineno: int, message: str, hint: str) -> InvalidInputError:
    return InvalidInputError(message, file=str(path), where=f"line {lineno}", hint=hint)


_ROW_HINT = ('each line needs {"prompt": str | "messages": [...], "response": str} and optionally "category", "expect", '
             '"forbidden_tools", "tools", "tool_calls"')


def _check_messages(path: Path, lineno: int, messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad_row(path, lineno, "\"messages\" must be a non-empty list", _ROW_HINT)
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
                message.get("content", ""), (str, type(None))):
            raise _bad_row(path, lineno, f"messages[{k}] must be an object with \"role\" and \"content\" strings",
                           _ROW_HINT)
    return [dict(m) for m in messages]


def _check_encodable(path: Path, lineno: int, raw: dict[str, Any]) -> None:
    """Refuse a row holding a lone UTF-16 surrogate ("\\ud83d", a string cut inside an emoji's pair): JSON reads
    the escape, but no verdict key, journal or output can write it as UTF-8, and `pa judge` ended in a
    UnicodeEncodeError traceback."""
    from .templates import LONE_SURROGATE

    surrogate = LONE_SURROGATE.search(json.dumps(raw, ensure_ascii=False))
    if surrogate:
        raise _bad_row(path, lineno, f"holds a lone UTF-16 surrogate ({ascii(surrogate.group())[1:-1]}), which cannot "
                       "be written as UTF-8", "write the character itself, or drop the escape (a string cut inside "
                       "a surrogate pair)")


def _judge_row(path: Path, lineno: int, raw: Any) -> dict[str, Any]:
    """Validate one `pa judge` input row and normalise it to {messages, response, ...}."""
    if not isinstance(raw, dict):
        raise _bad_row(path, lineno, "each line must be a JSON object", _ROW_HINT)
    _check_encodable(path, lineno, raw)
    if not isinstance(raw.get("response"), str):
        raise _bad_row(path, lineno, "missing or non-string \"response\"", _ROW_HINT)
    if "messages" in raw:
        messages = _check_messages(path, lineno, raw["messages"])
    elif isinstance(raw.get("prompt"), str):
        messages = [{"role": "user", "content": raw["prompt"]}]
    else:
        raise _bad_row(path, lineno, "needs \"prompt\" (string) or \"messages\" (list)", _ROW_HINT)
    expect = raw.get("expect")
    if expect is not None and expect not in EXPECTS:
        raise _bad_row(path, lineno, f"\"expect\" must be one of {', '.join(EXPECTS)}, got {expect!r}", _ROW_HINT)
    forbidden = raw.get("forbidden_tools") or []
    if not isinstance(forbidden, list) or not all(isinstance(t, str) for t in forbidden):
        raise _bad_row(path, lineno, "\"forbidden_tools\" must be a list of tool names", _ROW_HINT)
    tools = raw.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):  # the llm: judge is shown them
        raise _bad_row(path, lineno, "\"tools\" must be a list of function definitions",
                       'each tool looks like {"type": "function", "function": {"name": ..., "parameters": {...}}}')
    if raw.get("tool_calls") is not None and structured_tool_calls(raw["tool_calls"]) is None:
        raise _bad_row(path, lineno, "\"tool_calls\" must be a list of function calls",
                       'write each as {"type": "function", "function": {"name": ..., "arguments": {...}}}, or leave '
                       "the calls in \"response\"")
    category = raw.get("category", "")
    if not isinstance(category, str):
        raise _bad_row(path, lineno, "\"category\" must be a string", _ROW_HINT)
    return {**raw, "messages": messages, "category": category, "expect": expect, "forbidden_tools": forbidden,
            "set": raw.get("set", path.stem)}


def read_judge_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read and validate a JSONL of response pairs; a bad line is an error naming file and line."""
    return [row for _, row in _numbered_rows(Path(path))]


def _numbered_rows(p: Path) -> list[tuple[int, dict[str, Any]]]:
    """`read_judge_file`'s rows with their line numbers, which name them in the judge's errors."""
    if not p.is_file():
        raise InvalidInputError("a directory, not a file" if p.is_dir() else f"no such file: {p}", file=str(p),
                                hint="pass a JSONL file of responses (e.g. an evaluation's responses.jsonl)")
    rows = [(lineno, _judge_row(p, lineno, raw)) for lineno, raw in iter_jsonl(p)]
    if not rows:
        raise InvalidInputError("the file has no rows", file=str(p), hint=_ROW_HINT)
    return rows


@dataclass
class JudgeFileResult:
    """`pa judge`'s output: where the judged rows went and their metrics."""

    out_path: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]


def judge_journal_path(out: Path) -> Path:
    """Where `pa judge` journals its verdicts: beside its output, `judged.jsonl` -> `judged.partial.jsonl`."""
    return out.with_suffix(".partial.jsonl")


def _checked_judge_out(source: Path, out: Path) -> Path:
    """`pa judge`'s output file, checked before any verdict (a model judge takes hours, and its
    output was refused only at the end): never the input (it was replaced by the judged rows), not
    a directory, in a folder that can be made. Returns the journal's path. The directory is refused first:
    `--out ""` (the current directory, `.`) has no name to put the journal's suffix on (a ValueError)."""
    if out.is_dir():
        raise InvalidInputError("--out is a directory", file=str(out),
                                hint=f"give --out a file name, e.g. {out / (source.stem + '.judged.jsonl')}")
    journal = judge_journal_path(out)
    for path, what in ((out, "--out is the input file"), (journal, f"--out {out} keeps its journal here")):
        if path.resolve() == source.resolve():
            raise InvalidInputError(f"{what}: judging would overwrite the input", file=str(source),
                                    hint="give --out another file name (the default is FILE.judged.jsonl)")
    if (journal.exists() or journal.is_symlink()) and not _judge_journal(journal):
        raise InvalidInputError(f"--out {out.name} keeps its journal here, and it holds another file: judging would "
                                "replace it, then delete it", file=str(journal),
                                hint="move that file away, or give --out another file name")
    try:
        output_dir(out.parent)
    except InvalidInputError:
        raise InvalidInputError("--out: its folder cannot be made, a file has its name or a parent's",
                                file=str(out), hint="give --out a file in a folder (created when missing)") from None
    return journal


def _judge_journal(path: Path) -> bool:
    """Whether `path` is a journal `pa judge` wrote (its first line a journal header of `judge_settings`) or empty: any
    other file there (the user's own `X.partial.jsonl`, `pa eval`'s journal of answers) was discarded as a journal
    made under other settings, and deleted once the output was written."""
    from .eval_journal import is_journal_header

    if not path.is_file():
        return False
    if not path.stat().st_size:  # nothing there to lose
        return True
    with path.open("rb") as handle:
        first = handle.readline()
    try:
        header = json.loads(first)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return is_journal_header(header) and "judge" in header["settings"]


def judge_settings(judge: str, policy: str, device: str | None) -> dict[str, Any]:
    """What every verdict of `pa judge` depends on besides its row: the judge and its weights, the
    policy it is shown and, for a model judge, the device type and precision (bf16 on a GPU judges
    otherwise than fp32 on a CPU, or than `PA_DTYPE=fp32` on that GPU). A journal made under other
    settings is discarded."""
    from .run import fingerprint

    settings: dict[str, Any] = {"judge": keyed_judge(judge), **judge_weights_fetched(judge), "policy": fingerprint(policy)}
    if settings["judge"] != "refusal":
        from .models import expected_numerics

        settings.update(expected_numerics(device))
    return settings


def judge_file(path: str | os.PathLike[str], judge: str = "refusal", *, out: str | os.PathLike[str] | None = None,
               policy: str = "", device: str | None = None, batch_size: int = 8) -> JudgeFileResult:
    """Judge any JSONL of {prompt|messages, response[, category, expect]} rows; write the rows
    with verdicts to `out` (default: FILE.judged.jsonl) and return metrics.

    Verdicts are journaled as they come (`judge_journal_path`, the `Journal` `pa eval` keeps): a run
    killed part way and started again judges only the rows not judged yet, and the journal is
    deleted once `out` is written. One process at a time writes an output: two `pa judge --out X`
    appended to one journal and each replaced the other's output."""
    p = Path(path)
    numbered = _numbered_rows(p)
    rows = [row for _, row in numbered]
    get_judge(judge)
    out_path = Path(out) if out else p.with_name(f"{p.stem}.judged.jsonl")
    journal_path = _checked_judge_out(p, out_path)
    # The lock file goes on release: it sat for good beside the user's output (as `pa pull --to`'s did).
    with run_lock(out_path.parent, JUDGE_OUT_BUSY, name=f".{out_path.name}.lock", remove=True):
        journal = Journal.open(journal_path, judge_settings(judge, policy, device), made="verdicts",
                               redo="judging every row again")
        try:
            judged = judge_journaled(rows, judge, journal, policy=policy, device=device, batch_size=batch_size,
                                     places=[(str(p), lineno) for lineno, _ in numbered])
        except BaseException:
            if not journal.verdicts:  # only its header (a judge model that failed to load): nothing to resume
                journal.path.unlink(missing_ok=True)
            raise
        write_jsonl(out_path, judged)
        journal.path.unlink(missing_ok=True)  # everything it held is in the output now
    return JudgeFileResult(out_path=out_path, rows=judged, metrics=summarize(judged))
