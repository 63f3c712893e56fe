"""Synthesis command: `pa synthesize PACK --model M --out RUN_DIR` writes instructions.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from .common import PacksPath, Quiet


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    requests = summary["requests"]
    typer.echo(f"{summary['pack']['name']}@{summary['pack']['version']} · generator {summary['generator']} · "
               f"{requests['total']} requests ({requests['generated']} generated, {requests['cached']} cached)")
    for category, row in summary["per_category"].items():
        typer.echo(f"  {category}: {row['total']} ({row['seed']} seed, {row['generated']} generated)")
    if summary["dropped"]:
        typer.echo("  dropped: " + ", ".join(f"{reason} {count}" for reason, count in summary["dropped"].items()))
    typer.echo(f"  wrote {out_dir}/instructions.jsonl ({summary['instructions']} instructions) and synthesis.json")


@app.command("synthesize")
def synthesize_command(
    pack: str = typer.Argument(..., help="Pack name, name@range, or path."),
    model: str = typer.Option(..., "--model", "-m", help="The model being aligned (tiny, an alias, a Hub id or a directory)."),
    generator: Optional[str] = typer.Option(None, "--generator", "-g",
                                            help="A (stronger) model to generate instructions with; default: --model."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; instructions.jsonl and generations/ go here."),
    n: Optional[int] = typer.Option(None, "--n", help="Instructions requested per template and category (default: the pack's)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Samples per template and category (default: the pack's)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    batch_size: int = typer.Option(16, "--batch-size", help="Generation batch size."),
    max_per_category: Optional[int] = typer.Option(None, "--max-per-category",
                                                   help="Cap per category (default: twice the smallest category, "
                                                   "at least --n); the pack's seeds count first and are always "
                                                   "kept, even past it."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="Longest generator output (default: the pack's sampling setting)."),
    backend: str = typer.Option("transformers", "--backend", help="Generation backend: transformers or vllm."),
    quiet: bool = Quiet,
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Generate policy-violating instructions from a pack's templates.

    Each is parsed, deduplicated, checked against the pack's eval sets (decontaminated) and
    balanced over categories; the pack's seeds are included.

    Re-running reuses cached generations in RUN_DIR/generations/ and only samples what changed.
    """
    from ..stages import run_synthesize
    from .common import load

    result = run_synthesize(
        out, load(pack, packs_path), model, generator=generator, n=n, rounds=rounds, seed=seed,
        max_per_category=max_per_category, batch_size=batch_size, device=device, backend=backend,
        max_new_tokens=max_new_tokens, progress=not quiet,
    )
    _print_summary(result.summary, out)
