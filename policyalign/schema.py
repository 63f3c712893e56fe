"""The JSON Schemas shipped with the package, loaded once."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

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
