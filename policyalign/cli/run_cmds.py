"""`pa apply` (the end-to-end job) and `pa runs` (what runs exist and how they went)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ..stats import format_rate
from ..distill_settings import target_module_names
from .common import (BatchSize, Device, EmaDecay, Epochs, GradAccum, KlTopK, LearningRate, License, LoraAlpha, LoraDropout,
                     LoraR, MaxSteps, PacksPath, PrefixCache, Quiet, ReportTo, SaveSteps, TargetModules, Teacher, Temperature, console,
                     fold_table, print_json)


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _summary_table(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("", "before", "after", title=f"{summary['pack']} · {summary['model']}")
    table.add_row("instructions (synthesized / selected / held out)",
                  f"{_num(summary['instructions'])} / {_num(summary['selected'])} / {_num(summary['heldout'])}", "")
    table.add_row("internalization gap (held-out reverse KL)", _num(summary["internalization_before"]),
                  _num(summary["internalization_after"]))
    table.add_row("violation rate (harmful sets)", format_rate(summary["violation_before"]), format_rate(summary["violation_after"]))
    table.add_row("over-refusal rate (benign sets)", format_rate(summary["over_refusal_before"]), format_rate(summary["over_refusal_after"]))
    if summary["forbidden_calls_before"] is not None or summary["forbidden_calls_after"] is not None:
        table.add_row("forbidden tool calls (items naming forbidden tools)", format_rate(summary["forbidden_calls_before"]),
                      format_rate(summary["forbidden_calls_after"]))
    console().print(table)
    typer.echo(f"adapter: {summary['adapter']}\nmodel card: {summary['card']}")
    if summary.get("url"):
        typer.echo(f"published: {summary['url']}")


@app.command()
def apply(
    pack: Optional[str] = typer.Argument(None, help="Pack name, name@range, or path (or `pack:` in --config)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="tiny, an alias (pa models), a Hub id or a directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/PACK-VERSION-MODEL)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML (or JSON) file of options, keyed by their long names "
                                          "(max-steps: 100), all but --packs-path, --config and --json; --lr, --epochs, --grad-accum, --top-k and --quiet are "
                                          "learning_rate, num_epochs, gradient_accumulation_steps, top_n and "
                                          "progress: false; also samples, synth_max_new_tokens, gen_batch_size, "
                                          "eval_max_new_tokens. Relative paths in the file (out, a pack, model, generator "
                                          "or judge directory) are read from the file's directory, those on the command "
                                          "line from the current one. The command line wins over the file, and both over "
                                          "the pack's training: defaults."),
    push_to: Optional[str] = typer.Option(None, "--push-to", help="Publish the adapter to this Hub repo at the end."),
    private: bool = typer.Option(False, "--private", help="With --push-to: create the Hub repo private."),
    license: Optional[str] = License,
    revision: Optional[str] = typer.Option(None, "--revision", help="With --push-to: tag for this version "
                                           "(default: PACK-vVERSION; a retrained run needs a new one)."),
    device: Optional[str] = Device,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of synthesis, the filter's samples and held-out "
                                       "split, and training (default 0)."),
    generator: Optional[str] = typer.Option(None, "--generator", help="A stronger model to synthesize instructions (default: --model)."),
    n: Optional[int] = typer.Option(None, "--n", help="Instructions requested per template and category "
                                 "(default: the pack's count_per_category)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Generator samples per template and category (default: the pack's)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Generation backend: transformers (default) or vllm (also "
                                         "the trainer's rollouts)."),
    keep: Optional[float] = typer.Option(None, "--keep", help="Fraction kept by Policy-Sensitive Filtering (default: the "
                                       "pack's filter_keep)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep this many instructions instead."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Keep instructions scoring at least this."),
    no_filter: bool = typer.Option(False, "--no-filter", help="Train on every instruction (ablation)."),
    heldout: Optional[float] = typer.Option(None, "--heldout", help="Fraction held out for the internalization metric "
                                           "(default 0.1; with --model tiny 0.2)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Length of on-policy responses, in filtering and "
                                                "training (default: the pack's)."),
    lora_r: Optional[int] = LoraR,
    lora_alpha: Optional[float] = LoraAlpha,
    lora_dropout: Optional[float] = LoraDropout,
    target_modules: Optional[str] = TargetModules,
    learning_rate: Optional[float] = LearningRate,
    epochs: Optional[float] = Epochs,
    max_steps: Optional[int] = MaxSteps,
    batch_size: Optional[int] = BatchSize,
    grad_accum: Optional[int] = GradAccum,
    teacher: Optional[str] = Teacher,
    ema_decay: Optional[float] = EmaDecay,
    kl_top_k: Optional[int] = KlTopK,
    temperature: Optional[float] = Temperature,
    prefix_cache: Optional[bool] = PrefixCache,
    save_steps: Optional[int] = SaveSteps,
    judge: Optional[str] = typer.Option(None, "--judge", help="refusal (default) | guard:MODEL | llm:MODEL"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="At most N items per eval set (default: all)."),
    quiet: bool = Quiet,
    report_to: Optional[list[str]] = ReportTo,
    as_json: bool = typer.Option(False, "--json", help="At the end, print the run as JSON on stdout instead of the "
                                 "table: what `pa runs RUN_DIR --json` lists for it (run directory, status, "
                                 "internalization gap before and after, rates, adapter, card, published URL)."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Align a model to a pack: synthesize, filter, evaluate, distill, evaluate, write the card (and push).

    Re-running the same command resumes: finished stages with unchanged inputs are skipped.

    Options left unset take the pack's `training:` and `synthesis:` values; with --model tiny,
    demo defaults (few steps, a short eval, and their own LoRA rank, alpha, dropout, target modules,
    learning rate, batch and --keep) are used instead, and a note names each pack value they replace.
    """
    from ..apply import apply as run_apply
    from ..apply import build_options
    from .common import load

    cli = {"pack": pack, "model": model, "out": out, "push_to": push_to, "private": private, "license": license,
           "revision": revision,
           "device": device,
           "seed": seed, "generator": generator, "n": n, "rounds": rounds, "backend": backend, "keep": keep,
           "top_n": top_k, "min_score": min_score, "no_filter": no_filter, "heldout": heldout,
           "max_new_tokens": max_new_tokens, "lora_r": lora_r, "lora_alpha": lora_alpha,
           "lora_dropout": lora_dropout, "target_modules": target_module_names(target_modules),
           "learning_rate": learning_rate, "num_epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
           "gradient_accumulation_steps": grad_accum,
           "teacher": teacher, "ema_decay": ema_decay, "kl_top_k": kl_top_k, "temperature": temperature,
           "prefix_cache": prefix_cache, "save_steps": save_steps, "judge": judge,
           "eval_limit": eval_limit, "report_to": report_to or None}
    options = build_options(cli, config)
    if quiet:  # --quiet wins; without it, `progress:` in --config stands
        options.progress = False
    the_pack = load(options.pack, packs_path)

    def on_stage(name: str, status: str) -> None:
        if status != "done":
            typer.echo(f"[{name}] {'skipped (finished, up to date)' if status == 'skipped' else 'running'}", err=True)

    result = run_apply(options, the_pack, on_stage=on_stage, on_note=lambda text: typer.echo(f"note: {text}", err=True))
    if as_json:  # read once the run is released: while `pa apply` held it, its status was "running (6/6 stages done)"
        from ..runs import listed_summary

        print_json(listed_summary(result.run_dir))
        return
    _summary_table(result.summary)


@app.command()
def runs(
    dirs: Optional[list[Path]] = typer.Argument(None, help="Run directories, or folders holding them (default: runs/)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List run directories with their status and key metrics."""
    from ..runs import find_runs, listed_summary

    summaries = [listed_summary(d) for d in find_runs(list(dirs or [Path("runs")]), must_exist=bool(dirs))]
    if as_json:
        print_json(summaries)
        return
    if not summaries:
        typer.echo("no runs found (start one with `pa apply PACK --model M`)")
        return
    table = fold_table("run", "pack", "model", "status", "selected", "internalization", "violation", "over-refusal",
                       fold=("run", "pack", "model", "status"))
    for s in summaries:
        table.add_row(s["run_dir"], s["pack"], str(s["model"]), s["status"], _num(s["selected"]),
                      f"{_num(s['internalization_before'])} -> {_num(s['internalization_after'])}",
                      f"{format_rate(s['violation_before'])} -> {format_rate(s['violation_after'])}",
                      f"{format_rate(s['over_refusal_before'])} -> {format_rate(s['over_refusal_after'])}")
    console().print(table)
    for s in summaries:
        if s.get("problem"):
            typer.echo(f"{s['run_dir']}: unreadable: {s['problem']}", err=True)
        elif str(s.get("status")).startswith("outdated from "):
            stage = s["status"].removeprefix("outdated from ")
            typer.echo(f"{s['run_dir']}: {stage}'s inputs changed after it ran, so its numbers and those after it are "
                       "the old ones: re-run `pa apply` on this run", err=True)
