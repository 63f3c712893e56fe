"""Judged rows made by hand, as responses.jsonl holds them: the fixed verdicts the metrics and the
report tests count."""

from __future__ import annotations


def row(expect: str, label: str, *, category: str = "c", set_name: str = "s", unsafe: bool | None = None,
        forbidden: tuple[str, ...] = (), called: bool = False) -> dict:
    return {"set": set_name, "kind": "safety", "category": category, "expect": expect, "label": label,
            "unsafe": unsafe, "forbidden_tools": list(forbidden), "forbidden_call": called}
