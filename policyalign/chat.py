"""Student and teacher conversations, and the one place chats become text and token ids.

The whole method rests on one difference: the teacher sees the policy as its system message,
the student does not, and everything else is identical. Building both views here, and
rendering every chat through `render_chat`, keeps that difference exact across synthesis,
scoring, distillation and evaluation (no stage formats a prompt by hand).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import InvalidInputError, ModelError, Problem

PROMPT_OR_MESSAGES = 'use {"prompt": "..."} for a single user turn, or a "messages" list'

Message = dict[str, Any]
ROLES = frozenset({"system", "user", "assistant", "tool"})


def _copy(messages: Sequence[Message]) -> list[Message]:
    """Shallow-copy each message so callers can edit the result without touching the record."""
    return [dict(m) for m in messages]


def student_messages(messages: Sequence[Message]) -> list[Message]:
    """The student's view: the instruction's messages, unchanged (copied)."""
    return _copy(messages)


def teacher_messages(policy: str, messages: Sequence[Message]) -> list[Message]:
    """The teacher's view: the policy as the one system message, then the same turns.

    An instruction's own leading system message is kept, appended after the policy with a
    blank line between, so the policy always comes first (and its prefix is shared by every
    teacher prompt, which the scoring module's KV cache relies on).
    """
    policy = policy.strip()
    if not policy:
        raise ValueError("teacher_messages needs a non-empty policy")
    turns = _copy(messages)
    system = policy
    if turns and turns[0].get("role") == "system":
        own = str(turns.pop(0).get("content") or "").strip()
        if own:
            system = f"{policy}\n\n{own}"
    return [{"role": "system", "content": system}, *turns]


def conversation(record: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """Normalise a record with `prompt` (shorthand) or `messages` into (messages, tools).

    Raises InvalidInputError naming the record's id when neither or both are present, or a
    message is malformed: records come from user-written files.
    """
    file, where = record_place(record)
    has_prompt, has_messages = "prompt" in record, "messages" in record
    if has_prompt == has_messages:
        raise InvalidInputError(
            "a record needs exactly one of 'prompt' or 'messages'", file=file, where=where,
            hint=PROMPT_OR_MESSAGES,
        )
    if has_prompt:
        if not isinstance(record["prompt"], str):
            raise InvalidInputError("'prompt' must be a string", file=file, where=where)
        messages: list[Message] = [{"role": "user", "content": record["prompt"]}]
    else:
        messages = _validated(record["messages"], where, file)
    tools = record.get("tools") or None
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        # A name or a list of names fails inside transformers with a bare ValueError.
        raise InvalidInputError("'tools' must be a list of function definitions", file=file, where=where,
                                hint='each tool looks like {"type": "function", "function": {"name": ..., "parameters": {...}}}')
    return messages, tools


def record_place(record: dict[str, Any]) -> tuple[str, str]:
    """(file, where) naming a record in errors: its optional `file`, and its `line` in it and its `id`,
    when it carries them.

    A conversation record is `{"messages", "tools"?}`; callers add `id` (and `file`, the JSONL it
    came from, and `line`) so an error about one of many records says which one, not only what is wrong.
    """
    where = [f"line {record['line']}"] if record.get("line") else []
    where += [f"id {record['id']}"] if "id" in record else []
    return str(record.get("file") or ""), ", ".join(where)


def _validated(messages: Any, where: str, file: str = "") -> list[Message]:
    """Check the transformers chat shape: a non-empty list of {role, content} dicts."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError("'messages' must be a non-empty list", file=file, where=where)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidInputError(
                f"message {index} needs a role among {sorted(ROLES)}", file=file, where=where,
                hint='each message looks like {"role": "user", "content": "..."}',
            )
        problem = content_problem(message)
        if problem:
            raise InvalidInputError(
                f"message {index} ({message['role']}): {problem}", file=file, where=where,
                hint='give it "content": "..." (text); only an assistant turn making tool_calls may leave it null',
            )
    return _copy(messages)


def content_problem(message: Message) -> str | None:
    """What is wrong with a turn's content, if anything. Chat templates concatenate content as a
    string: only an assistant turn may carry none (it may make tool_calls instead); for any
    other role a null or missing content would fail inside the template with a bare TypeError."""
    content = message.get("content")
    if content is None:
        return None if message["role"] == "assistant" else "'content' is missing or null"
    if not isinstance(content, str):
        return f"'content' must be a string, got {type(content).__name__}"
    return None


def render_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    *,
    enable_thinking: bool | None = None,
    file: str = "",
    where: str = "",
) -> str:
    """The chat as the model sees it, via the tokenizer's own chat template.

    A template without a system role (Gemma's raise), or one that leaves the system message out
    (Mistral v0.3's writes it only into a final user turn, so a conversation ending in a tool
    result renders without it: the teacher would silently lose the policy), gets the system
    message at the top of the first user turn. Other template failures (Mistral v0.3's demand for
    9-character tool-call ids, Gemma-2's refusal of tool turns) become a `ModelError` that names
    the model and the record (`file`, `where`), instead of a Jinja traceback, as does a template
    that drops the conversation's `tools` without a word (Gemma-2's).

    `enable_thinking` goes to the template when not None (Qwen3's switches its `<think>` block
    off with False; templates without the switch ignore it). Leave it None for every prompt that
    must show the model as it is used: student, teacher and evaluated prompts.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"{_model_name(tokenizer)} has no chat template", hint="use an instruction-tuned (chat) variant of the model",
        )
    options = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    text = _render(tokenizer, messages, tools, add_generation_prompt, options, file, where)
    if tools and _tools_left_out(tokenizer, messages, text, add_generation_prompt, options):
        # Gemma-2's template ignores `tools`: the model answered without ever seeing them, and an eval
        # item's forbidden tools, which it could not call, counted as refused calls.
        raise ModelError(f"the chat template of {_model_name(tokenizer)} leaves out the tools of this conversation",
                         file=file, where=where, hint=_TOOLS_LEFT_OUT_HINT)
    return text


def _tools_left_out(tokenizer: Any, messages: Sequence[Message], text: str, add_generation_prompt: bool,
                    options: dict[str, Any]) -> bool:
    """Whether the chat renders the same without its tools (`text` is it with them): the template ignored them."""
    try:
        return text == _render(tokenizer, messages, None, add_generation_prompt, options, "", "")
    except ModelError:  # a template that needs the tools it was given did not ignore them
        return False


def _render(tokenizer: Any, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None,
            add_generation_prompt: bool, options: dict[str, Any], file: str, where: str) -> str:
    """`render_chat` before its check that the tools were shown."""
    try:
        text = _apply_template(tokenizer, messages, tools, add_generation_prompt, options)
    except Exception as exc:  # jinja2 TemplateError, or raise_exception() inside the template
        if type(exc).__module__.split(".")[0] not in ("jinja2", "transformers"):
            raise
        return _render_system_in_first_user_turn(tokenizer, messages, tools, add_generation_prompt, options,
                                                 Problem(file, where, f"rejected this conversation: {exc}", _hint_for(exc)))
    if _system_shown(messages, text):
        return text
    return _render_system_in_first_user_turn(tokenizer, messages, tools, add_generation_prompt, options,
                                             Problem(file, where, "leaves out the system message of this conversation",
                                                     _REJECTED_HINT))


_REJECTED_HINT = "some templates refuse system turns, tools or non-alternating roles; try another model"
_TOOLS_LEFT_OUT_HINT = ("use a model whose chat template renders tools (Qwen2.5, Llama 3.1 or Mistral v0.3 do, Gemma-2 "
                        "does not), or leave out the records that carry tools")
_TOOL_CALL_ID_HINT = ('give each tool call an "id" of 9 letters or digits (e.g. "call00001") and the tool turn '
                      'answering it the same "tool_call_id"; Mistral templates require both')


def _hint_for(exc: Exception) -> str:
    """The fix for a template's refusal: Mistral's tool-call id check is fixed in the record, not by another model."""
    return _TOOL_CALL_ID_HINT if "length 9" in str(exc) else _REJECTED_HINT


def _model_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or "this model"


def _system_shown(messages: Sequence[Message], text: str) -> bool:
    """Whether a leading system message's text made it into the rendered chat (trimmed, as some templates do)."""
    if not messages or messages[0].get("role") != "system":
        return True
    return str(messages[0].get("content") or "").strip() in text


def _render_system_in_first_user_turn(tokenizer: Any, messages: Sequence[Message],
                                      tools: Sequence[dict[str, Any]] | None, add_generation_prompt: bool,
                                      options: dict[str, Any], failure: Problem) -> str:
    """The chat with its system message moved into the first user turn, or `failure` (naming the
    model, the problem and the record) when that does not render either."""
    merged = _system_in_first_user_turn(messages)
    if merged is not None:
        try:
            text = _apply_template(tokenizer, merged, tools, add_generation_prompt, options)
            if _system_shown(messages, text):
                return text
        except Exception:  # noqa: BLE001 - report the original problem below
            pass
    raise ModelError(f"the chat template of {_model_name(tokenizer)} {failure.message}", file=failure.file,
                     where=failure.where, hint=failure.hint) from None


def _apply_template(tokenizer: Any, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None,
                    add_generation_prompt: bool, options: dict[str, Any]) -> str:
    """The template applied, each turn of a role it reads only as parts (`text_part_roles`) given its text as one."""
    roles = text_part_roles(tokenizer)
    if roles:
        messages = [{**m, "content": [{"type": "text", "text": m["content"]}]}
                    if m.get("role") in roles and isinstance(m.get("content"), str) else m for m in messages]
    return _apply_raw(tokenizer, messages, tools, add_generation_prompt, options)


def _apply_raw(tokenizer: Any, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None,
               add_generation_prompt: bool, options: dict[str, Any]) -> str:
    return tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                         add_generation_prompt=add_generation_prompt, tokenize=False, **options)


_PROBE = "policyalign probe 7f3a"
# Each role probed in the smallest chat a template takes it in: (turns before it, whether a reply is prompted).
_PROBED_ROLES = {"system": ([], False), "user": ([], True), "assistant": ([{"role": "user", "content": "hello"}], False)}
_TEXT_PART_ROLES: dict[str, frozenset[str]] = {}  # by template text: computed once per template


def text_part_roles(tokenizer: Any) -> frozenset[str]:
    """The roles whose text the chat template leaves out given as a string, yet renders given as a text part
    ([{"type": "text", "text": ...}]): their string contents are rendered as that part (`_apply_template`).

    A multimodal processor's template (LLaVA's, in its chat_template.json) reads each turn's content as a list of
    {"type": ...} parts and skips whatever else it is given: every prompt, whose content is a string
    (`content_problem`), rendered as the bare role markup, its instruction gone, and nothing failed; pa refused
    such a model. Probed role by role, on its own text: a template may read the system turn as a string and the
    others as parts, and a part rendered as a Python list (`{{ m['content'] }}`) shows the text but is no rendering
    of it, so it does not count as shown."""
    template = getattr(tokenizer, "chat_template", None)
    key = json.dumps(template, sort_keys=True, default=str)
    if key not in _TEXT_PART_ROLES:
        _TEXT_PART_ROLES[key] = frozenset(role for role in _PROBED_ROLES if _reads_parts_only(tokenizer, role))
    return _TEXT_PART_ROLES[key]


def _reads_parts_only(tokenizer: Any, role: str) -> bool:
    """Whether the template leaves out `role`'s text given as a string, and renders it (not a list's repr) as a part."""
    before, prompted = _PROBED_ROLES[role]
    after = [{"role": "user", "content": "hello"}] if role == "system" else []

    def shown(content: Any) -> bool:
        try:
            text = _apply_raw(tokenizer, [*before, {"role": role, "content": content}, *after], None, prompted, {})
        except Exception:  # noqa: BLE001 - a template that fails on this probe is judged by its real prompts
            return False
        return _PROBE in text and "'type'" not in text and '"type"' not in text

    return not shown(_PROBE) and shown([{"type": "text", "text": _PROBE}])


def leaves_out_user_text(tokenizer: Any) -> bool:
    """Whether the template, given a user turn as pa gives it (a string, or a text part where `text_part_roles`
    says so), renders that turn without its text: every prompt would reach the model without its instruction.
    A template that fails on this probe is judged by its real prompts (`render_chat` names the record)."""
    try:
        return _PROBE not in _apply_template(tokenizer, [{"role": "user", "content": _PROBE}], None, True, {})
    except Exception:  # noqa: BLE001 - see above
        return False


def _system_in_first_user_turn(messages: Sequence[Message]) -> list[Message] | None:
    """The conversation with its system message moved to the top of the first user turn, or None.

    Some templates have no system role (Gemma's raise "System role not supported"); this is the
    usual way to give such a model its instructions. The policy still opens every teacher
    prompt, so the prefix cache still shares it.
    """
    if len(messages) < 2 or messages[0].get("role") != "system" or messages[1].get("role") != "user":
        return None
    turns = _copy(messages)
    system, user = turns[0], turns[1]
    user["content"] = f"{system.get('content') or ''}\n\n{user.get('content') or ''}"
    return turns[1:]


def encode_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    *,
    enable_thinking: bool | None = None,
    file: str = "",
    where: str = "",
) -> list[int]:
    """Token ids of `render_chat(...)`; no extra BOS, since templates write their own."""
    text = render_chat(tokenizer, messages, tools, add_generation_prompt, enable_thinking=enable_thinking,
                       file=file, where=where)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
