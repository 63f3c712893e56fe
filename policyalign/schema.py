"""The JSON Schemas shipped with the package, loaded once, and their errors worded as problems with hints."""

from __future__ import annotations

import json
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


@lru_cache(maxsize=None)
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads(schema_text(name))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def manifest_validator() -> Any:
    return _validator("pack.schema.json")


def eval_item_validator() -> Any:
    return _validator("eval-item.schema.json")


def schema_message(error: Any) -> str:
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown field(s)")
    if error.validator == "required":
        return f"missing required field {error.message.split(' ')[0]}"
    if error.validator == "not":  # jsonschema's "0 should not be valid under {'const': 0}" says nothing useful
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        return f"{error.instance!r} is not allowed" + (f": {description}" if description else "")
    return error.message


def schema_hint(error: Any) -> str:
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
        suggestions = [did_you_mean(str(k), allowed) for k in extra]  # YAML keys may be numbers or null
        hint = "; ".join(s for s in suggestions if s)
        return hint or f"allowed fields: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"use one of: {', '.join(map(str, error.validator_value))}"
    if error.validator == "not":  # schema_message gives the description already
        return ""
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    return description or ""
