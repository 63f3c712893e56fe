"""Student/teacher views and chat rendering (tiny's ChatML template, tools included)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from transformers import AutoTokenizer

from policyalign import tiny
from policyalign.chat import conversation, encode_chat, render_chat, student_messages, teacher_messages
from policyalign.errors import InvalidInputError, ModelError

from chat_templates import (ALTERNATING_ROLES, NO_SYSTEM_ROLE, NO_THINK, SYSTEM_IN_LAST_USER_TURN,
                            TOOL_CALL_IDS_OF_LENGTH_9, thinking_switch)

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather", "description": "Get weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
AGENT_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
    ]},
    {"role": "tool", "content": '{"temp": 18}'},
    {"role": "tool", "content": '{"wind": 3}'},
    {"role": "assistant", "content": "18 degrees."},
    {"role": "user", "content": "Thanks"},
]
EXPECTED_AGENT_RENDER = """<|im_start|>system
Be brief.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Get weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{"temp": 18}
</tool_response>
<tool_response>
{"wind": 3}
</tool_response><|im_end|>
<|im_start|>assistant
18 degrees.<|im_end|>
<|im_start|>user
Thanks<|im_end|>
<|im_start|>assistant
"""


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(tiny.tiny_model_path())


def test_renders_system_user_assistant_tool_turns_and_tools(tokenizer: Any) -> None:
    assert render_chat(tokenizer, AGENT_CHAT, TOOLS) == EXPECTED_AGENT_RENDER


def test_default_system_turn_and_generation_prompt(tokenizer: Any) -> None:
    chat = [{"role": "user", "content": "hi"}]
    assert render_chat(tokenizer, chat) == (
        f"<|im_start|>system\n{tiny.DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat(tokenizer, chat, add_generation_prompt=False).endswith("hi<|im_end|>\n")


def test_tool_call_arguments_as_json_string_are_not_double_encoded(tokenizer: Any) -> None:
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]},
    ]
    text = render_chat(tokenizer, chat, add_generation_prompt=False)
    assert 'ok\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call><|im_end|>\n' in text


def test_encode_chat_matches_rendered_text_and_keeps_special_tokens_whole(tokenizer: Any) -> None:
    ids = encode_chat(tokenizer, AGENT_CHAT, TOOLS)
    assert ids == tokenizer(render_chat(tokenizer, AGENT_CHAT, TOOLS), add_special_tokens=False)["input_ids"]
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start
    assert ids.count(im_start) == EXPECTED_AGENT_RENDER.count("<|im_start|>")
    assert tokenizer.convert_tokens_to_ids("<tool_call>") in ids


def test_student_messages_are_an_unchanged_copy() -> None:
    original = copy.deepcopy(AGENT_CHAT)
    student = student_messages(AGENT_CHAT)
    assert student == AGENT_CHAT
    student[0]["content"] = "changed"
    assert AGENT_CHAT == original


def test_teacher_puts_the_policy_first_in_one_system_message() -> None:
    chat = [{"role": "user", "content": "How do I pick a lock?"}]
    assert teacher_messages("POLICY\n", chat) == [{"role": "system", "content": "POLICY"}, *chat]
    merged = teacher_messages("POLICY", AGENT_CHAT)
    assert merged[0] == {"role": "system", "content": "POLICY\n\nBe brief."}
    assert merged[1:] == AGENT_CHAT[1:]
    assert [m["role"] for m in merged].count("system") == 1
    assert AGENT_CHAT[0]["content"] == "Be brief."  # input untouched
    with pytest.raises(ValueError):
        teacher_messages("  ", chat)


def test_teacher_prompts_share_the_policy_prefix_and_differ_from_student(tokenizer: Any) -> None:
    policy = "Refuse to help with weapons. Guide medical questions to a doctor."
    a = encode_chat(tokenizer, teacher_messages(policy, [{"role": "user", "content": "Hello there"}]))
    b = encode_chat(tokenizer, teacher_messages(policy, [{"role": "user", "content": "Build a bomb"}]))
    prefix = encode_chat(tokenizer, [{"role": "system", "content": policy}], add_generation_prompt=False)
    shared = prefix[:-2]  # up to the policy text; <|im_end|>\n follows
    assert a[: len(shared)] == shared and b[: len(shared)] == shared
    student = encode_chat(tokenizer, student_messages([{"role": "user", "content": "Hello there"}]))
    assert student != a and len(a) > len(student)
    assert render_chat(tokenizer, [{"role": "user", "content": "Hello there"}]).count(policy) == 0


def test_conversation_normalises_prompt_and_messages() -> None:
    assert conversation({"id": "x", "prompt": "hi"}) == ([{"role": "user", "content": "hi"}], None)
    messages, tools = conversation({"messages": AGENT_CHAT, "tools": TOOLS})
    assert messages == AGENT_CHAT and tools == TOOLS
    assert conversation({"messages": AGENT_CHAT, "tools": []})[1] is None


@pytest.mark.parametrize("record", [
    {"id": "a"},
    {"id": "b", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
    {"id": "c", "messages": []},
    {"id": "d", "messages": [{"role": "robot", "content": "hi"}]},
    {"id": "e", "prompt": 3},
    {"id": "f", "messages": [{"role": "user", "content": "hi"}], "tools": {"name": "x"}},
    {"id": "g", "messages": [{"role": "user", "content": "hi"}], "tools": ["search"]},
])
def test_conversation_rejects_malformed_records(record: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError) as info:
        conversation(record)
    assert f"id {record['id']}" in str(info.value)


@pytest.mark.parametrize("role", ["system", "user", "tool"])
@pytest.mark.parametrize("content", [None, "missing"])
def test_only_an_assistant_turn_may_have_no_content(tokenizer: Any, role: str, content: str | None) -> None:
    """A null content elsewhere used to pass validation and crash in the template with a bare TypeError."""
    turn = {"role": role} if content == "missing" else {"role": role, "content": content}
    messages = [{"role": "user", "content": "hi"}, turn] if role != "user" else [turn]
    with pytest.raises(InvalidInputError, match=f"message {len(messages) - 1} \\({role}\\): 'content' is missing or null") as info:
        conversation({"id": "z", "messages": messages})
    assert info.value.problem.where == "id z" and "only an assistant turn" in info.value.problem.hint
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ok, _ = conversation({"messages": [{"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": None, "tool_calls": [call]}]})
    assert "<tool_call>" in render_chat(tokenizer, ok, TOOLS)
    with pytest.raises(InvalidInputError, match="'content' must be a string, got int"):
        conversation({"messages": [{"role": "user", "content": 3}]})


def test_missing_or_failing_chat_template_is_a_model_error(tokenizer: Any) -> None:
    with pytest.raises(ModelError, match="chat template"):
        render_chat(tokenizer, [{"role": "developer", "content": "hi"}])
    bare = AutoTokenizer.from_pretrained(tiny.tiny_model_path())
    bare.chat_template = None
    with pytest.raises(ModelError, match="no chat template"):
        encode_chat(bare, [{"role": "user", "content": "hi"}])


def test_a_template_without_a_system_role_gets_it_at_the_top_of_the_first_user_turn() -> None:
    gemma_like = AutoTokenizer.from_pretrained(tiny.tiny_model_path())
    gemma_like.chat_template = NO_SYSTEM_ROLE
    text = render_chat(gemma_like, teacher_messages("Refuse weapons.", [{"role": "user", "content": "Hi there"}]))
    assert text.endswith("<start_of_turn>user\nRefuse weapons.\n\nHi there<end_of_turn>\n<start_of_turn>model\n")
    assert "system" not in text
    with pytest.raises(ModelError, match="System role not supported"):  # nothing to merge into: the original error
        render_chat(gemma_like, [{"role": "system", "content": "Rules."}, {"role": "assistant", "content": "Hi"}])


def test_a_template_that_leaves_the_system_turn_out_gets_it_at_the_top_of_the_first_user_turn() -> None:
    """Mistral v0.3 writes the system message into a final user turn only: a teacher prompt ending in a
    tool result rendered without the policy, silently, so teacher and student saw the same prompt."""
    mistral_like = AutoTokenizer.from_pretrained(tiny.tiny_model_path())
    mistral_like.chat_template = SYSTEM_IN_LAST_USER_TURN
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    agent = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "content": '{"temp": 18}'}]
    text = render_chat(mistral_like, teacher_messages("Refuse weapons.", agent), TOOLS)
    assert text.startswith("[AVAILABLE_TOOLS] ")
    assert "[/AVAILABLE_TOOLS][INST] Refuse weapons.\n\nWeather in Paris?[/INST][TOOL_CALLS] " in text
    assert text != render_chat(mistral_like, student_messages(agent), TOOLS)
    kept = render_chat(mistral_like, teacher_messages("Refuse weapons.", agent[:1]))  # where the template keeps it
    assert kept == "[INST] Refuse weapons.\n\nWeather in Paris?[/INST]"


def _tokenizer_with(template: str) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(tiny.tiny_model_path())
    tokenizer.chat_template = template
    return tokenizer


# LLaVA's processor template: every turn's content read as a list of {"type": "text"} parts, a string left out.
PARTS_ONLY = ("{% for m in messages %}{{ m['role'].upper() }}: {% for part in m['content'] | selectattr('type', 'equalto', "
              "'text') %}{{ part['text'] }} {% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
# The same for the user and assistant turns, with the system turn read as a string (a list there shows its repr).
SYSTEM_AS_STRING = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n{% else %}"
                    "{{ m['role'].upper() }}: {% for part in m['content'] | selectattr('type', 'equalto', 'text') %}"
                    "{{ part['text'] }} {% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def test_a_template_reading_content_only_as_parts_gets_each_string_as_a_text_part() -> None:
    """A multimodal processor's template (LLaVA's) reads each turn's content only as a list of parts: every prompt,
    a string, rendered as 'USER: ASSISTANT:', and pa refused such a model. The roles it reads so (probed one by
    one) get their text as one text part, rendered exactly as the same chat given as parts; others keep strings."""
    chat = [{"role": "system", "content": "Refuse weapons."}, {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "Hi."}]
    as_parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in chat]
    parts = _tokenizer_with(PARTS_ONLY)
    assert render_chat(parts, chat[:2]) == "SYSTEM: Refuse weapons. USER: hello ASSISTANT:"
    assert render_chat(parts, chat, add_generation_prompt=False) == parts.apply_chat_template(as_parts, tokenize=False)
    assert encode_chat(parts, chat[1:2]) == parts(render_chat(parts, chat[1:2]), add_special_tokens=False)["input_ids"]
    mixed = _tokenizer_with(SYSTEM_AS_STRING)
    assert render_chat(mixed, chat, add_generation_prompt=False) == "Refuse weapons.\nUSER: hello ASSISTANT: Hi. "
    assert chat[1]["content"] == "hello"  # the caller's messages are not changed


def test_enable_thinking_reaches_a_template_with_the_switch_only_when_asked() -> None:
    """Judges and synthesis ask a Qwen3-style model not to think; every other prompt (student, teacher,
    evaluated) must render as the model is used, so None passes nothing to the template."""
    thinker = _tokenizer_with(thinking_switch())
    chat = [{"role": "user", "content": "Hi"}]
    assert render_chat(thinker, chat, enable_thinking=False).endswith("<|im_start|>assistant\n" + NO_THINK)
    assert render_chat(thinker, chat).endswith("<|im_start|>assistant\n")
    assert render_chat(thinker, chat, enable_thinking=True) == render_chat(thinker, chat)
    plain = AutoTokenizer.from_pretrained(tiny.tiny_model_path())  # no switch: the variable is ignored
    assert encode_chat(plain, chat, enable_thinking=False) == encode_chat(plain, chat)


MISTRAL_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_CHAT = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [MISTRAL_CALL]},
             {"role": "tool", "content": '{"temp": 18}'}]


@pytest.mark.parametrize("template, message, hint", [
    (TOOL_CALL_IDS_OF_LENGTH_9, "length 9", '"tool_call_id"'),
    (ALTERNATING_ROLES, "roles must alternate", "try another model"),
])
def test_a_template_rejecting_a_tool_conversation_names_the_record(template: str, message: str, hint: str) -> None:
    """Mistral v0.3 wants 9-character tool-call ids, Gemma-2 has no tool turns: among hundreds of
    instructions or eval items, the error must say which one (file and id), and how to fix it."""
    tokenizer = _tokenizer_with(template)
    with pytest.raises(ModelError, match=message) as caught:
        encode_chat(tokenizer, TOOL_CHAT, TOOLS, file="eval/agents.jsonl", where="id agent-7")
    problem = caught.value.problem
    assert (problem.file, problem.where) == ("eval/agents.jsonl", "id agent-7")
    assert str(caught.value).startswith("eval/agents.jsonl:id agent-7: the chat template of ")
    assert hint in problem.hint
    with_ids = [TOOL_CHAT[0], {**TOOL_CHAT[1], "tool_calls": [{**MISTRAL_CALL, "id": "call00001"}]},
                {**TOOL_CHAT[2], "tool_call_id": "call00001"}]
    if template == TOOL_CALL_IDS_OF_LENGTH_9:  # the hint's fix works
        assert "[TOOL_RESULTS]" in render_chat(tokenizer, with_ids, TOOLS)


def test_a_template_that_drops_the_tools_is_a_model_error_naming_the_record() -> None:
    """Gemma-2's template ignores `tools`: an eval item's model never saw the tools it must not call, and
    its forbidden tool call rate read 0% as if measured. A template that renders them is untouched."""
    gemma_like = _tokenizer_with(ALTERNATING_ROLES)
    chat = [{"role": "user", "content": "Weather in Paris?"}]
    with pytest.raises(ModelError, match="leaves out the tools of this conversation") as caught:
        render_chat(gemma_like, chat, TOOLS, file="eval/agents.jsonl", where="id agent-7")
    assert (caught.value.problem.file, caught.value.problem.where) == ("eval/agents.jsonl", "id agent-7")
    assert render_chat(gemma_like, chat) == render_chat(gemma_like, chat, [])  # no tools: nothing to leave out
    assert "get_weather" in render_chat(_tokenizer_with(TOOL_CALL_IDS_OF_LENGTH_9), chat, TOOLS)
    needs_tools = _tokenizer_with("{% if not tools %}{{ raise_exception('no tools') }}{% endif %}"
                                  "{{ tools | tojson }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert "get_weather" in render_chat(needs_tools, chat, TOOLS), "a template that needs its tools keeps them"


def test_a_record_names_its_file_and_id_in_its_errors() -> None:
    with pytest.raises(InvalidInputError) as caught:
        conversation({"id": "x1", "file": "selected.jsonl", "messages": []})
    assert (caught.value.problem.file, caught.value.problem.where) == ("selected.jsonl", "id x1")
