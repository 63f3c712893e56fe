"""Model commands: `pa models` lists the names `--model` accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import app
from .common import console, fold_table, print_json


@app.command("models")
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the model aliases (and the built-in `tiny`), with whether each is in the local Hub cache.

    Any Hub id (org/name\\[@revision]) or local model directory works too.
    """
    rows = model_rows()
    if as_json:
        print_json(rows)
        return

    table = fold_table("name", "model", "cached", fold=("name", "model"))
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


_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _in_hub_cache(hub_id: str, cache_dir: str | None = None) -> bool:
    """Whether the model can load from the local Hugging Face cache (no network): its config.json
    and every weights file, all shards of a sharded checkpoint included.

    config.json alone is what a `from_pretrained` interrupted mid-download (or an `AutoConfig`
    call) leaves behind; the list said "yes" for it, and loading then failed offline."""
    import json

    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> str | None:
        found = try_to_load_from_cache(hub_id, name, cache_dir=cache_dir)
        return found if isinstance(found, str) else None

    if cached("config.json") is None:
        return False
    for weights in _WEIGHTS:
        if cached(weights):
            return True
        index = cached(f"{weights}.index.json")
        if index:
            try:
                shards = set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all(cached(shard) for shard in shards)
    return False
