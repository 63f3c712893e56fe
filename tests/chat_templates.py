"""Chat templates for tests of models whose template differs from tiny's ChatML."""

# Gemma's templates have no system role: they raise on one.
NO_SYSTEM_ROLE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
                  "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# Mistral v0.3's template writes the system message into the *last* user turn only: a conversation
# that ends with a tool result renders without it, and without an error.
SYSTEM_IN_LAST_USER_TURN = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set turns = messages %}{% endif %}{% for m in turns %}{% if m['role'] == 'user' %}[INST] "
    "{% if loop.last and system is defined %}{{ system }}\n\n{% endif %}{{ m['content'] }}[/INST]"
    "{% elif m['role'] == 'tool' %}[TOOL_RESULTS] {{ m['content'] }}[/TOOL_RESULTS]"
    "{% elif m['tool_calls'] %}[TOOL_CALLS] {{ m['tool_calls'] | tojson }}</s>{% else %} {{ m['content'] }}</s>{% endif %}"
    "{% endfor %}")
