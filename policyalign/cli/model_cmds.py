"""Model commands: `pa models` lists the names `--model` accepts."""

from __future__ import annotations

from typing import Any

import typer

from . import app
from .common import console, print_json


@app.command("models")
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the model aliases (and the built-in `tiny`), with whether each is in the local Hub cache.

    Any Hub id (org/name[@revision]) or local model directory works too.
    """
    rows = model_rows()
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("name", "model", "cached")
    for row in rows:
        cached = {True: "yes", False: "no", None: "-"}[row["cached"]]
        table.add_row(row["name"], row["model"], cached)
    out = console()
    out.print(table)
    out.print("Also accepted: any Hub id (org/name[@revision]) or a local model directory.", markup=False)


def model_rows() -> list[dict[str, Any]]:
    """One row per name: `tiny` first (always available), then the aliases."""
    from ..models import MODEL_ALIASES, TINY

    rows: list[dict[str, Any]] = [
        {"name": TINY, "kind": "tiny", "model": "built-in Qwen2 test model (CPU, offline)", "cached": None},
    ]
    for alias, hub_id in MODEL_ALIASES.items():
        rows.append({"name": alias, "kind": "hub", "model": hub_id, "cached": _in_hub_cache(hub_id)})
    return rows


def _in_hub_cache(hub_id: str) -> bool:
    """Whether the model's config.json is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json")
    return isinstance(found, str)
