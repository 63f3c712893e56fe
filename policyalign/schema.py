"""The JSON Schemas shipped with the package, loaded once, and their errors worded as problems with hints."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from .errors import did_you_mean

# eval-item.schema.json's `expect` values by what they measure: harmful items (violation rate) and
# benign ones (over-refusal), and so the only `expect` each kind of eval set (pack.schema.json) may hold.
HARMFUL_EXPECT = ("refuse", "guide")
BENIGN_EXPECT = ("comply",)
KIND_EXPECTS = {"safety": HARMFUL_EXPECT, "over-refusal": BENIGN_EXPECT, "capability": BENIGN_EXPECT}


def schema_text(name: str) -> str:
    return resources.files("policyalign").joinpath("schemas", name).read_text(encoding="utf-8")


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """`pattern` as JSON Schema defines it (ECMA-262): a final `$` is the end of the text. Python's `$`
    also matches before a trailing newline, so `id: "self-harm\\n"` passed `^[a-z0-9][a-z0-9_-]*$` and
    became a second category shown as `self-harm`."""
    from jsonschema import ValidationError

    if not validator.is_type(instance, "string"):
        return
    anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    if not re.search(anchored, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=1)
def validator_class() -> Any:
    """Draft 2020-12 with `pattern` read as JSON Schema means it (`_ecma_pattern`): every check against
    the shipped schemas, whole or one property of them, goes through it."""
    from jsonschema import Draft202012Validator
    from jsonschema.validators import extend

    return extend(Draft202012Validator, {"pattern": _ecma_pattern})


@lru_cache(maxsize=None)
def _validator(name: str) -> Any:
    schema = json.loads(schema_text(name))
    validator_class().check_schema(schema)
    return validator_class()(schema)


def manifest_validator() -> Any:
    return _validator("pack.schema.json")


def eval_item_validator() -> Any:
    return _validator("eval-item.schema.json")


def specific(error: Any) -> Any:
    """For a value that fits no branch of a `oneOf`, the error inside the branch it took the shape of:
    a seed conversation with no user turn was "is not valid under any of the given schemas", its
    whole text repeated, where the object branch knew it lacked a user turn in /messages. Else the
    error of the branch of its type: a 5-character seed got that message too, not "is too short"."""
    if error.validator != "oneOf" or not error.context:
        return error
    inside = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
    typed = [e for e in error.context if e.validator != "type"]
    return specific((inside or typed)[0]) if inside or typed else error


# The most characters of an offending value a problem repeats (see `_clipped`).
MAX_SHOWN_VALUE = 200


def schema_message(error: Any) -> str:
    return _clipped(_message(error), error.instance)


def _clipped(message: str, instance: Any) -> str:
    """`message` with the value it repeats cut short: jsonschema's messages open with the whole value, so a
    2 MB eval prompt over its 20,000-character bound was a 2 MB line of `pa validate` output, and 200 seeds
    over their bound of items were all repeated."""
    shown = repr(instance)
    if len(shown) <= MAX_SHOWN_VALUE or shown not in message:
        return message
    size = f"{len(instance)} {'characters' if isinstance(instance, str) else 'items'}" if isinstance(
        instance, (str, list, dict)) else f"{len(shown)} characters"
    return message.replace(shown, f"{shown[:MAX_SHOWN_VALUE]}... ({size})", 1)


# jsonschema's "'...' is too long" named no limit: a policy or eval prompt over its bound did not say by how much.
_BOUNDS = {"maxLength": ("at most", "character"), "minLength": ("at least", "character"),
           "maxItems": ("at most", "item"), "minItems": ("at least", "item"),
           "maxProperties": ("at most", "field"), "minProperties": ("at least", "field")}


def _message(error: Any) -> str:
    if error.validator in _BOUNDS:
        bound, unit = _BOUNDS[error.validator]
        limit = error.validator_value
        return f"{error.message} ({bound} {limit} {unit}{'' if limit == 1 else 's'})"
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown field(s)")
    if error.validator == "required":
        return f"missing required field {error.message.split(' ')[0]}"
    if error.validator == "uniqueItems":  # "['a', 'a'] has non-unique elements", the list's description as its hint
        items = [json.dumps(item, sort_keys=True) for item in error.instance]
        repeat = next(item for index, item in enumerate(error.instance) if items.index(items[index]) != index)
        return f"{repeat!r} is listed twice"
    if error.validator == "contains":  # the only `contains`: a conversation's user turn
        return "no user turn: the model would be asked to answer no request"
    if _list_or_word(error):
        return f"{error.instance!r} is neither {error.validator_value!r} nor a list"
    if error.validator == "not":  # jsonschema's "0 should not be valid under {'const': 0}" says nothing useful
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        return f"{error.instance!r} is not allowed" + (f": {description}" if description else "")
    return error.message


def schema_problems(error: Any) -> list[tuple[str, str, str]]:
    """One schema error as (JSON pointer, message, hint) problems, for pack.yaml and eval items alike: one
    per unknown field (`unknown_fields`) at the field's own pointer, else the one at the error's place."""
    pointer = "/" + "/".join(str(part) for part in error.absolute_path)
    fields = unknown_fields(error)
    if fields:
        return [(f"{pointer.rstrip('/')}/{key}", message, hint) for key, message, hint in fields]
    return [(pointer, schema_message(error), schema_hint(error))]


def unknown_fields(error: Any) -> list[tuple[str, str, str]]:
    """An `additionalProperties` error as one (field, message, hint) per unknown field, for a problem at the
    field's own place: `x: 1` in pack.yaml was "pack.yaml:/: unknown field(s)", placed at the mapping
    holding it (for a top-level field, no line), with one hint for all. Empty for any other error."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return []
    from .distill_settings import RUN_CHOICES

    allowed = list(error.schema.get("properties", {}))
    elsewhere = RUN_CHOICES if list(error.absolute_path) == ["training"] else {}  # a pack's training: section
    return [(str(key), f"unknown field {key!r}", elsewhere.get(str(key)) or did_you_mean(str(key), allowed)
             or f"allowed fields: {', '.join(allowed)}")
            for key in error.instance if key not in allowed]  # YAML keys may be numbers or null


def schema_hint(error: Any) -> str:
    """The fix for one schema error. An unknown field's is `unknown_fields`', each field's own (`schema_problems`)."""
    if error.validator == "enum":
        return f"use one of: {', '.join(map(str, error.validator_value))}"
    if error.validator == "uniqueItems":
        return "delete the repeated entry"
    if error.validator == "contains":
        return 'add the request as {"role": "user", "content": "..."}'
    if error.validator == "required":
        return _missing_field_hint(error)
    if error.validator == "not":  # schema_message gives the description already
        return ""
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if _list_or_word(error):
        names = [name.strip() for name in str(error.instance).split(",") if name.strip()] or [str(error.instance)]
        shown = ", ".join(names) if isinstance(error.instance, str) else "q_proj, v_proj"
        return f"write it as a list, even of one: [{shown}], or {error.validator_value}"
    return "; ".join(part for part in (_unquoted_text_hint(error), _single_value_hint(error), range_hint(error),
                                       description) if part)


def _list_or_word(error: Any) -> bool:
    """Whether `error` is another value than a list given for a list-or-one-word field (training.target_modules: a list of
    names or `all-linear`): `target_modules: q_proj` (or `q_proj,v_proj`, as --target-modules and a config file
    take them) was "'all-linear' was expected", with no hint, as if all-linear were the only value allowed."""
    parent = getattr(error, "parent", None)
    return (error.validator == "const" and not isinstance(error.instance, (list, dict)) and parent is not None
            and parent.validator == "oneOf"
            and any(isinstance(branch, dict) and branch.get("type") == "array" for branch in parent.validator_value))


# A numeric bound of the schema, as the range a fix must land in says it.
_RANGE_WORDS = {"minimum": "at least", "exclusiveMinimum": "above", "maximum": "at most", "exclusiveMaximum": "below"}


def range_hint(error: Any) -> str:
    """The whole range a number out of its bounds must land in: `lora_r: 0` was hinted only "LoRA rank.",
    and `learning_rate: 0` ("less than or equal to the minimum of 0") got no hint at all, nor its maximum.
    Empty for any other error."""
    if error.validator not in _RANGE_WORDS or not isinstance(error.schema, dict):
        return ""
    bounds = [f"{words} {error.schema[key]}" for key, words in _RANGE_WORDS.items() if key in error.schema]
    kind = "an integer" if error.schema.get("type") == "integer" else "a number"
    return f"use {kind} {' and '.join(bounds)}"


def _single_value_hint(error: Any) -> str:
    """A list field given one bare value (`extends: general@^1`): "'general@^1' is not of type 'array'" did not
    show the list syntax that fixes it. Empty for any other error."""
    if error.validator != "type" or error.validator_value != "array" or isinstance(error.instance, (list, dict)):
        return ""
    return f"write it as a list, even of one: [{json.dumps(error.instance)}]"


def _unquoted_text_hint(error: Any) -> str:
    """Why a text field holds a number or true/false: YAML read the unquoted value so (`version: 1.0` is the
    float 1.0, `title: yes` is true, `version: 1.10` is 1.1), and "1.0 is not of type 'string'" did not say
    that quotes fix it. Empty for any other error."""
    expected = error.validator_value if error.validator == "type" else None
    wants_text = expected == "string" or (isinstance(expected, list) and "string" in expected)
    if not wants_text or not isinstance(error.instance, (bool, int, float)):
        return ""
    kind = "true/false" if isinstance(error.instance, bool) else "a number"
    return f"YAML read the unquoted value as {kind}: put it in quotes to keep it as text"


def _missing_field_hint(error: Any) -> str:
    """What to add: the missing field's own description and values. The fallback below gave the
    description of the object lacking it, a pack's whole blurb under "missing required field
    'license'" and nothing at all under a template without `file`."""
    name = error.message.split(" ")[0].strip("'\"")  # "'license' is a required property"
    rule = error.schema.get("properties", {}).get(name, {}) if isinstance(error.schema, dict) else {}
    description = str(rule.get("description", "")).rstrip(".")
    values = f" (one of: {', '.join(map(str, rule['enum']))})" if "enum" in rule else ""
    return f"add `{name}`" + (f": {description}" if description else "") + values
