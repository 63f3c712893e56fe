"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

PacksPath = typer.Option(
    None, "--packs-path", help="Extra directory to search for packs (repeatable; also PA_PACKS_PATH).",
)
License = typer.Option(
    None, "--license", help="License id for the model card, e.g. apache-2.0 (default: the base model's, "
    "from its README.md when at hand offline, else 'other').",
)


# Training options `pa apply` and `pa distill` share (the pack's `training:` values are their defaults).
LoraR = typer.Option(None, "--lora-r", help="LoRA rank (default: the pack's).")
LoraAlpha = typer.Option(None, "--lora-alpha", help="LoRA alpha (default: the pack's).")
LoraDropout = typer.Option(None, "--lora-dropout", help="LoRA dropout (default: the pack's).")
LearningRate = typer.Option(None, "--lr", help="Learning rate (default: the pack's).")
Epochs = typer.Option(None, "--epochs", help="Passes over the selected instructions (default: the pack's); "
                      "given without --max-steps, it sets the length.")
MaxSteps = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps (default: the pack's, else --epochs).")
BatchSize = typer.Option(None, "--batch-size", help="Rollouts per device per step (default: the pack's).")
GradAccum = typer.Option(None, "--grad-accum", help="Gradient accumulation steps (default: the pack's).")
TargetModules = typer.Option(None, "--target-modules", help="LoRA target modules: comma-separated module names, "
                             "or all-linear (default: the pack's).")
KlTopK = typer.Option(None, "--kl-top-k", help="Top-k support of the reverse KL (default: the pack's; paper: 256).")
Teacher = typer.Option(None, "--teacher", help="base (adapter disabled) or ema (default: the pack's).")
SaveSteps = typer.Option(None, "--save-steps", help="Checkpoint every N optimizer steps, for resuming (default 50).")
PrefixCache = typer.Option(None, "--prefix-cache/--no-prefix-cache", help="Encode the teacher's policy prefix once "
                           "and reuse it (default), or recompute it every step.")
Device = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available). Training runs on the "
                      "first visible GPU: choose it with CUDA_VISIBLE_DEVICES.")
# Sampling of the student's on-policy responses: `pa filter` scores them, `pa distill` trains on them, and the
# two must agree (`stages.filter_config`), so the three commands share one flag.
Temperature = typer.Option(None, "--temperature", help="Sampling temperature of the student's on-policy responses: "
                           "the filter's samples and the trainer's rollouts, and the temperature of both "
                           "distributions the training loss compares (default: the pack's; paper: 1.0).")
EmaDecay = typer.Option(None, "--ema-decay", help="With --teacher ema: the share of the student "
                        "mixed into the teacher each step (default: the pack's, else 0.05).")
# Every command that draws progress bars takes it: only `pa apply` did, so a CI job could not quiet the
# stage commands or `pa eval`. Stage lines, notes and errors still go to stderr.
Quiet = typer.Option(False, "--quiet", help="No progress bars.")
ReportTo = typer.Option(None, "--report-to", help="Send training logs live to tensorboard (into RUN_DIR/tensorboard), "
                        "wandb, mlflow, trackio, ... (repeatable or comma-separated; the package must be installed). "
                        "Default: none.")


def registry(packs_path: Optional[list[Path]] = None):  # type: ignore[no-untyped-def]
    from ..registry import Registry

    return Registry.default(packs_path=packs_path or [])


def load(spec: str, packs_path: Optional[list[Path]] = None):  # type: ignore[no-untyped-def]
    """Resolve and load a pack by name, name@range or path."""
    return registry(packs_path).load(spec)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# The width of the console on a stdout that is no terminal and has no COLUMNS: as wide as the content.
UNBOUNDED = 1_000_000
# rich's width for a stdout that is no terminal: what a rule (`pa show`'s) spans there.
PIPE_WIDTH = 80


def console():  # type: ignore[no-untyped-def]
    """The console tables and text are printed on (stdout).

    On a terminal, as wide as the terminal. Into a pipe, a file or a CI log, COLUMNS if set, else as wide as the
    content: rich gave them 80 columns (or, piped from a terminal, the terminal's), so `pa list | cat` wrapped
    each title over three lines and cut the 12-character digests to "aefe0fdb2a…", and `pa runs | grep` found
    a run's path split over lines."""
    from ..progress import piped_console
    from . import exit_closed_pipe

    out = piped_console(exit_closed_pipe, highlight=False, soft_wrap=True)  # `pa list | head -1`: 141
    if not out.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        out.width = UNBOUNDED
    return out


def print_rule(out: Any, title: str) -> None:
    """A rule across `out` (a `console()`) headed `title`: on an unbounded console, the 80 columns rich gives a pipe,
    not a million."""
    from rich.rule import Rule

    out.print(Rule(title), width=PIPE_WIDTH if out.width == UNBOUNDED else None)


def fold_table(*headers: str, fold: tuple[str, ...], **options: Any):  # type: ignore[no-untyped-def]
    """A rich Table whose `fold` columns (the names a user types back: run directory, pack, category id)
    wrap and never end in "…": at 80 columns (or in a log) the default cut `pa runs` to
    "/tmp/j… electi… comple…" (which run, which status?) and `pa show`'s category ids to
    "fraud-impersonati…", the id that `--category` needs."""
    from rich.table import Column, Table

    return Table(*(Column(h, overflow="fold" if h in fold else "ellipsis") for h in headers), **options)
