"""The method's stages as commands: `pa filter` (Policy-Sensitive Filtering) and `pa distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from ..distill_settings import target_module_names
from .common import (BatchSize, Device, EmaDecay, Epochs, GradAccum, KlTopK, LearningRate, LoraAlpha, LoraDropout, LoraR,
                     MaxSteps, PacksPath, PrefixCache, Quiet, ReportTo, SaveSteps, Teacher, TargetModules, Temperature)

RunDir = typer.Argument(..., help="Run directory (from `pa synthesize` or `pa apply`).")
ModelOpt = typer.Option(None, "--model", help="Model (default: the run's; a run with stages keeps its model). tiny, an "
                        "alias, a Hub id or a path.")
PackOpt = typer.Option(None, "--pack", help="Pack (default: the run's): another version or path of the run's pack, "
                       "never another pack; the run records it as its pack.")


@app.command("filter")
def filter_cmd(
    run_dir: Path = RunDir,
    model: Optional[str] = ModelOpt,
    pack: Optional[str] = PackOpt,
    keep: Optional[float] = typer.Option(None, "--keep", help="Fraction kept per category (default: the pack's filter_keep)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep this many instructions, balanced per category."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Keep instructions scoring at least this."),
    no_filter: bool = typer.Option(False, "--no-filter", help="Keep everything (ablation)."),
    samples: int = typer.Option(1, "--samples", help="On-policy responses sampled per instruction."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Length of sampled responses (default: the pack's training max_new_tokens)."),
    temperature: Optional[float] = Temperature,
    heldout: float = typer.Option(0.1, "--heldout", help="Fraction held out (never trained on) for the internalization metric."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled responses and the held-out split."),
    batch_size: int = typer.Option(8, "--batch-size", help="Instructions sampled and scored together."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available)."),
    quiet: bool = Quiet,
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Score each instruction's policy sensitivity and select the training set."""
    from ..stages import run_filter

    result = run_filter(run_dir, model=model, pack=pack, packs_path=packs_path, keep=keep, top_n=top_k, min_score=min_score,
                        no_filter=no_filter, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, heldout=heldout,
                        seed=seed, batch_size=batch_size, device=device, progress=not quiet)
    before = result.internalization_before
    typer.echo(f"scored {result.scored}, selected {result.selected}, held out {result.heldout}"
               + (f"; mean held-out sensitivity {before:.4f}" if before is not None else ""))
    typer.echo(f"wrote {run_dir}/scored.jsonl, selected.jsonl, heldout.jsonl, filter_hist.png")


@app.command()
def distill(
    run_dir: Path = RunDir,
    model: Optional[str] = ModelOpt,
    pack: Optional[str] = PackOpt,
    lora_r: Optional[int] = LoraR,
    lora_alpha: Optional[float] = LoraAlpha,
    lora_dropout: Optional[float] = LoraDropout,
    target_modules: Optional[str] = TargetModules,
    learning_rate: Optional[float] = LearningRate,
    epochs: Optional[float] = Epochs,
    max_steps: Optional[int] = MaxSteps,
    batch_size: Optional[int] = BatchSize,
    grad_accum: Optional[int] = GradAccum,
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Length of the student's rollouts (default: the pack's)."),
    top_k: Optional[int] = KlTopK,
    temperature: Optional[float] = Temperature,
    teacher: Optional[str] = Teacher,
    ema_decay: Optional[float] = EmaDecay,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the rollouts, data order and LoRA init (default 0)."),
    prefix_cache: Optional[bool] = PrefixCache,
    vllm: Optional[bool] = typer.Option(None, "--vllm/--no-vllm",
                                        help="Roll out with vLLM (GPU, needs the \\[vllm] extra) or transformers (default)."),
    save_steps: Optional[int] = SaveSteps,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last complete checkpoint, with the "
                                "settings it was trained with (flags given now override them)."),
    device: Optional[str] = Device,
    report_to: Optional[list[str]] = ReportTo,
    quiet: bool = Quiet,
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Distill the policy into a LoRA adapter (on-policy, reverse KL to the policy-prompted teacher).

    Settings left unset take the pack's `training:` values (with --resume, the checkpoint's).
    """
    from ..distill_settings import under_given
    from ..stages import recorded_distill_config, run_distill
    from ..tracking import report_targets

    targets = target_module_names(target_modules)
    given = {k: v for k, v in dict(
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
        learning_rate=learning_rate, num_epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        gradient_accumulation_steps=grad_accum, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        teacher=teacher, ema_decay=ema_decay, seed=seed, prefix_cache=prefix_cache, use_vllm=vllm,
        save_steps=save_steps).items() if v is not None}
    reports = report_targets(report_to)
    # --resume continues the interrupted training as it was set up; flags given now still win.
    overrides = under_given(recorded_distill_config(run_dir), given) if resume else given
    result = run_distill(run_dir, model=model, pack=pack, packs_path=packs_path, device=device, resume=resume,
                         overrides=overrides, report_to=reports, progress=not quiet,
                         ema_decay_given_as="--ema-decay" if ema_decay is not None else None)
    if not result.main:
        return  # rank 0 of a multi-process run reports
    steps, records = result.steps, result.train_records
    typer.echo(f"trained {steps} step{'' if steps == 1 else 's'} on {records} instruction{'' if records == 1 else 's'}; "
               f"adapter in {result.adapter_dir}")
    if result.internalization_before is not None:
        drop = result.internalization_drop
        typer.echo(f"internalization (held-out teacher-student reverse KL): {result.internalization_before:.4f} -> "
                   f"{result.internalization_after:.4f}" + (f" ({drop:+.0%} closed)" if drop is not None else ""))
