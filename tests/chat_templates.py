"""Chat templates for tests of models whose template differs from tiny's ChatML."""

from __future__ import annotations

from pathlib import Path

# Gemma's templates have no system role: they raise on one.
NO_SYSTEM_ROLE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
                  "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# Mistral v0.3's template writes the system message into the *last* user turn only: a conversation
# that ends with a tool result renders without it, and without an error. Its tools it does render.
SYSTEM_IN_LAST_USER_TURN = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set turns = messages %}{% endif %}"
    "{% if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for m in turns %}{% if m['role'] == 'user' %}[INST] "
    "{% if loop.last and system is defined %}{{ system }}\n\n{% endif %}{{ m['content'] }}[/INST]"
    "{% elif m['role'] == 'tool' %}[TOOL_RESULTS] {{ m['content'] }}[/TOOL_RESULTS]"
    "{% elif m['tool_calls'] %}[TOOL_CALLS] {{ m['tool_calls'] | tojson }}</s>{% else %} {{ m['content'] }}</s>{% endif %}"
    "{% endfor %}")

# Mistral v0.3's template requires a 9-character id on every tool call and the tool turn answering it.
TOOL_CALL_IDS_OF_LENGTH_9 = (
    "{% if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}[/INST]"
    "{% elif m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'tool' %}{% if m.tool_call_id is not defined or m.tool_call_id | length != 9 %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{% endif %}"
    "[TOOL_RESULTS] {{ m['content'] }}[/TOOL_RESULTS]"
    "{% elif m.tool_calls %}{% for c in m.tool_calls %}{% if c.id is not defined or c.id | length != 9 %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{% endif %}{% endfor %}"
    "[TOOL_CALLS] {{ m.tool_calls | tojson }}</s>{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}")

# Gemma-2's template: no system role, and roles must alternate user/model (a tool turn breaks it).
ALTERNATING_ROLES = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# Qwen3's template: the model thinks in <think>...</think> before answering unless the caller passes
# enable_thinking=False, which closes an empty block in the generation prompt.
NO_THINK = "<think>\n\n</think>\n\n"


def thinking_switch() -> str:
    """tiny's ChatML template with Qwen3's `enable_thinking` switch on the generation prompt."""
    from policyalign.tiny import CHAT_TEMPLATE

    head, _, tail = CHAT_TEMPLATE.rpartition("{%- endif -%}")
    switch = "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '" + NO_THINK.replace("\n", "\\n") + "' -}}{%- endif -%}"
    return head + switch + "{%- endif -%}" + tail


def tiny_with_template(dest: Path, template: str) -> Path:
    """A copy of `tiny` in `dest` whose tokenizer carries `template`: a local model with another family's chat format."""
    import shutil

    from transformers import AutoTokenizer

    from policyalign.tiny import tiny_model_path

    shutil.copytree(tiny_model_path(), dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(dest)
    return dest
