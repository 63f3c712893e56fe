"""Freeze parsed pack data into read-only mappings and tuples, and thaw it back into plain data.

A loaded pack is handed to every stage as plain data that no stage may change; JSON and chat
templates need dicts and lists again.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping


def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Turn frozen pack data back into plain dicts and lists (for JSON and chat templates)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value
