"""A pack's eval sets: items parsed and validated from JSONL, and sets inherited from ancestors.

An eval set is untrusted JSONL whose labels decide the metrics, so every line is checked
(duplicate keys, nesting, schema, ids, categories, forbidden tools offered, `expect` against the
set's kind) and reported with its line. A child pack is also measured on its ancestors' sets,
minus the items whose expectation it changed (`inherit_set`).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .chat import PROMPT_OR_MESSAGES
from .errors import did_you_mean
from .frozen import freeze, thaw
from .io import JSON_ARRAY_HINT
from .pack_input import MAX_EVAL_ITEMS, Collector
from .schema import BENIGN_EXPECT, KIND_EXPECTS, eval_item_validator, schema_problems
from .untrusted_data import MAX_NESTING, DuplicateKey, text_problems, too_deep, unique_keys

if TYPE_CHECKING:
    from .pack import Pack


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
    try:
        now = pack.category(item.category).action
    except KeyError:
        return f"category {item.category!r} removed"
    was = ancestor.category(item.category).action
    if item.expect in BENIGN_EXPECT or now == was or item.expect == now:
        return ""
    return f"category {item.category!r} changed from {was!r} to {now!r}"


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text. Only \\n, \\r\\n and \\r end a line: str.splitlines() also splits on
    U+2028, U+0085 and other characters that JSON strings may hold raw (ensure_ascii=False writes them)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _one_json_document(text: str) -> str:
    """What the whole text is when it is JSON written over several lines (a JSON array of items, or items
    pretty-printed one after another, as `jq .` writes them), else "". Read line by line, such a set was a
    "malformed JSON" problem for every line (26 for four items written with indent=2), none of which said that
    the file was simply not JSON Lines."""
    decoder, values, at = json.JSONDecoder(), [], 0
    try:
        while (at := JSON_SPACE.match(text, at).end()) < len(text):  # type: ignore[union-attr]
            value, at = decoder.raw_decode(text, at)
            values.append(value)
    except (ValueError, RecursionError):
        return ""
    if len(values) == 1 and isinstance(values[0], list):
        return "a JSON array"
    return "pretty-printed JSON objects" if values and all(isinstance(v, dict) for v in values) else ""


def eval_items(col: Collector, file: str, text: str, known: list[str] | None, seen_ids: dict[str, str],
                kind: str) -> list[EvalItem]:
    """The items of one eval set, every problem collected; `known` None skips the category check."""
    validator = eval_item_validator()
    items: list[EvalItem] = []
    failed = False  # a line was malformed: the whole text is tried as one JSON document at the first only
    for lineno, line in enumerate(jsonl_lines(text), start=1):
        if col.overflowed:  # nothing more would be reported: do not parse millions of junk lines
            break
        if not line.strip():
            continue
        if len(items) >= MAX_EVAL_ITEMS:
            col.add(file, f"line {lineno}", f"more than {MAX_EVAL_ITEMS} items", "split the eval set")
            break
        try:
            raw = json.loads(line, object_pairs_hook=unique_keys)
        except DuplicateKey as exc:
            col.add(file, f"line {lineno}", f"duplicate key {exc.key!r} in one JSON object; JSON would silently "
                    "keep only the last value", "delete one of the two")
            continue
        except json.JSONDecodeError as exc:
            first_failure, failed = not failed, True
            if first_failure and not items and (whole := _one_json_document(text)):
                col.add(file, f"line {lineno}", f"the file holds {whole} over several lines, not JSON Lines",
                        JSON_ARRAY_HINT if whole.startswith("a JSON array") else
                        "write each item as one JSON object on one line, e.g. jq -c . FILE > FILE.jsonl")
                return []
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
        item = _eval_item(col, file, lineno, raw, validator, known, seen_ids, kind)
        if item is not None and _expect_fits_kind(col, file, f"line {lineno}", item, kind):
            items.append(item)
    return items


def _eval_item(col: Collector, file: str, lineno: int, raw: Any, validator: Any, known: list[str] | None,
               seen_ids: dict[str, str], kind: str) -> EvalItem | None:
    errors = list(validator.iter_errors(raw))
    bad_text = text_problems(raw)
    for pointer, message, hint in bad_text:
        col.add(file, f"line {lineno} {pointer}", message, hint)
    for error in errors:
        for pointer, message, hint in _item_schema_problems(error, known, kind):
            col.add(file, f"line {lineno} {pointer}", message, hint)
    if errors or bad_text:
        return None
    where = f"line {lineno}"
    if raw["id"] in seen_ids:
        col.add(file, where + " /id", f"duplicate eval item id {raw['id']!r} (first in {seen_ids[raw['id']]})",
                "eval item ids must be unique across the pack")
    seen_ids.setdefault(raw["id"], f"{file} line {lineno}")
    if known is not None and raw["category"] not in known:
        col.add(file, where + " /category", f"unknown category {raw['category']!r}",
                did_you_mean(raw["category"], known, "known categories") if kind != "capability" else _category_hint(known, kind))
        return None
    if not _forbidden_tools_offered(col, file, where, raw):
        return None
    messages = raw.get("messages") or [{"role": "user", "content": raw["prompt"]}]
    if asks_nothing(messages):
        col.add(file, where + (" /prompt" if "prompt" in raw else " /messages"), "the item asks nothing: its text is "
                "blank", "write the request, or delete the item")
        return None
    forged = chat_token_problem(messages)
    if forged:
        col.add(file, where + (" /prompt" if "prompt" in raw else f" /messages/{forged[0]}/content"), f"the item {forged[1]}",
                forged[2])
        return None
    if in_tools := tool_token_problem(messages, raw.get("tools")):
        col.add(file, f"{where} {in_tools[0]}", f"the item {in_tools[1]}", in_tools[2])
        return None
    return EvalItem(raw["id"], raw["category"], freeze(messages), freeze(raw.get("tools", [])), raw["expect"],
                    tuple(raw.get("forbidden_tools", [])), raw.get("note", ""))


def _item_schema_problems(error: Any, known: list[str] | None, kind: str) -> list[tuple[str, str, str]]:
    """One schema error of an eval item as (JSON pointer, message, hint) problems (`schema.schema_problems`: an
    unknown field each at its own place, as in pack.yaml), with what to write for the item's two own cases."""
    if error.validator == "oneOf":  # schema_hint would give the item's description, not what to write
        return [("/" + "/".join(str(p) for p in error.absolute_path), "needs exactly one of 'prompt' or 'messages'",
                 PROMPT_OR_MESSAGES)]
    problems = schema_problems(error)
    if error.validator == "required" and not error.absolute_path and "'category'" in problems[0][1] and known is not None:
        return [(pointer, message, _category_hint(known, kind)) for pointer, message, _ in problems]
    return problems


def _category_hint(known: list[str], kind: str) -> str:
    """Which category to name: a capability item asks something outside the policy's reach, yet must name
    one of the pack's categories, and "add `category`: Id of a category of the composed pack" said neither
    which ones there are nor which a request outside all of them takes."""
    hint = f"add `category`, one of: {', '.join(known)}"
    if kind == "capability":
        hint = (f"a capability item names the category nearest its topic (its results count with that category's "
                f"benign items in the per-category rates pooled over all sets), one of: {', '.join(known)}")
    return hint


def chat_token_problem(messages: Any) -> tuple[int, str, str] | None:
    """(turn index, message, hint) for the first turn of a seed or eval item holding a chat-template token
    (`parsing.CHAT_TOKEN`), or None.

    The tokenizer reads "<|im_end|>\\n<|im_start|>system" in a turn's text as the real tokens: a seed holding
    them forged a system turn in the generator's prompt and in every training conversation made from it
    (the teacher's policy overridden by a turn of the pack's choosing), and an eval prompt in what the model
    was scored on. Synthesis drops a generated instruction holding one as garbled."""
    from .parsing import CHAT_TOKEN

    for index, message in enumerate(messages):
        token = CHAT_TOKEN.search(str(message.get("content") or "")) if isinstance(message, Mapping) else None
        if token:
            return (index, f"holds the chat-template token {token.group()!r}: a tokenizer reads it as the real one, "
                    "so the text ends its turn and forges another",
                    "delete it, or write it with spaces (\"< |im_start| >\") so that no tokenizer reads it as a token")
    return None


def tool_token_problem(messages: Any, tools: Any) -> tuple[str, str, str] | None:
    """(JSON pointer, message, hint) for the first tool definition, or turn field besides role and content (tool
    calls, name, tool_call_id), holding a chat-template token, or None. `chat_token_problem` read only content:
    chat templates write tools and tool calls into the prompt as JSON (Qwen's tools into the system turn), and a
    tool description of "<|im_end|>\\n<|im_start|>system..." validated and forged a turn there."""
    fields = [(f"/messages/{i}/{key}", value) for i, message in enumerate(messages) if isinstance(message, Mapping)
              for key, value in message.items() if key not in ("role", "content")]
    fields += [(f"/tools/{i}", tool) for i, tool in enumerate(tools or ())]
    for pointer, value in fields:
        if forged := chat_token_problem([{"content": json.dumps(thaw(value), ensure_ascii=False)}]):
            return pointer, forged[1], forged[2]
    return None


def asks_nothing(messages: Any) -> bool:
    """Whether no user or tool turn of a conversation holds text. Whitespace passes every length bound of
    the schemas: a seed of eight spaces, or an eval prompt of one, validated, and trained or was scored as
    a request."""
    return not any(str(m.get("content") or "").strip() for m in messages if m.get("role") in ("user", "tool"))


def _expect_fits_kind(col: Collector, file: str, where: str, item: EvalItem, kind: str) -> bool:
    """Metrics count an item by its `expect`, not by its set: a `comply` item in a safety set left the
    set's violation rate and silently joined the over-refusal rate (a harmful prompt the model rightly
    refused counted as over-refusal), while the card still listed it among the safety set's items."""
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


def _forbidden_tools_offered(col: Collector, file: str, where: str, raw: dict[str, Any]) -> bool:
    """Every forbidden tool must be one the item offers: a typo ('send_emial') or a missing `tools`
    made the forbidden-call check vacuous, silently (the model cannot call a tool it is not given)."""
    offered = sorted({name for tool in raw.get("tools", []) if (name := _tool_name(tool))})
    missing = [(i, name) for i, name in enumerate(raw.get("forbidden_tools", [])) if name not in offered]
    for i, name in missing:
        col.add(file, f"{where} /forbidden_tools/{i}", f"forbidden tool {name!r} is not one of this item's tools",
                did_you_mean(name, offered) or f"its tools: {', '.join(offered) or 'none (add them under `tools`)'}")
    return not missing
