"""The JSON Schemas shipped with the package, loaded once."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


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
