"""The distill stage: train the policy into a LoRA adapter on a run's selected instructions
(`trainer.py`), measure internalization before and after on the held-out ones, and write the
adapter with its provenance, resuming from a checkpoint when asked.

Under torchrun / `accelerate launch` every rank trains; rank 0 alone measures and writes.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .adapter_save import loss_label, plot_loss, save_adapter
from .checkpoints import CHECKPOINT_RECORD, TRAINING, checkpoint_dir, resume_point, training_id
from .distill_settings import RUN_ONLY_SETTINGS, target_modules_origin
from .errors import RunError
from .internalization import internalization
from .io import read_json, write_json
from .launch import check_vllm_rollouts, fit_batch, launch_rank, training_device
from .provenance import name_base_model, write_provenance
from .tracking import attach_reports
from .trainer import build_trainer, stop_callback

if TYPE_CHECKING:
    from .distill_settings import DistillConfig
    from .models import LoadedModel
    from .pack import Pack


@dataclass
class DistillResult:
    """What a training produced, for the CLI's summary and policyalign.json (only rank 0 measures)."""

    adapter_dir: Path
    steps: int
    train_records: int
    heldout_records: int
    internalization_before: float | None
    internalization_after: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    processes: int = 1
    main: bool = True  # False on the other ranks of a multi-process run: they train, rank 0 writes

    @property
    def internalization_drop(self) -> float | None:
        before, after = self.internalization_before, self.internalization_after
        if before is None or after is None or before == 0:
            return None
        return 1 - after / before


def distill_run(run_dir: Path, pack: "Pack", model_name: str, config: DistillConfig, *,
                device: str | None = None, resume: bool = False, restart_if_past: bool = False,
                progress: bool = True, record: Mapping[str, Any] | None = None,
                report_to: tuple[str, ...] = ()) -> DistillResult:
    """Train the adapter on selected.jsonl; measure internalization on heldout.jsonl; save everything.

    `resume` continues the last checkpoint. One that has already trained more steps than
    `config` asks for is refused, or with `restart_if_past` (what `pa apply` wants) set aside
    for a fresh run. `record` (what the checkpoints are trained with) is written beside them
    once training starts, not before: a failure before then leaves the old checkpoints theirs. It carries
    the id of the training (kept when resuming, new when training afresh), by which a `pa distill` stopped
    before its first step tells an earlier training's checkpoints from its own (`cli._checkpoint_kept`).
    `report_to` sends the training logs live to those integrations (`tracking`).
    """
    from .models import cpu_threads, load_model

    run_dir = Path(run_dir)
    records, heldout = _training_records(run_dir)
    rank, local_rank, processes = launch_rank()
    main = rank == 0
    device = training_device(device, local_rank, processes)
    if config.use_vllm:
        check_vllm_rollouts(device)
    config = fit_batch(config, len(records), processes)
    adapter_dir = run_dir / "adapter"
    checkpoints = checkpoint_dir(run_dir)
    loaded = load_model(model_name, device=device, trainable=True)
    with cpu_threads(loaded):
        # Built before any checkpoint is removed: a setting the trainer rejects loses nothing.
        trainer = build_trainer(loaded, pack.policy, records, config, checkpoints, progress=progress and main,
                                report_to=report_to, targets_from=target_modules_origin(pack, config.target_modules))
        for line in attach_reports(trainer, run_dir) if main else []:
            print(f"training logs: {line}", file=sys.stderr)
        _check_trainable(trainer, records, heldout, run_dir, processes)
        resume_from, finished = _checkpoint_to_continue(trainer, run_dir, resume, restart_if_past)
        if resume_from is None and main:
            shutil.rmtree(checkpoints, ignore_errors=True)
        if finished and resume_from is not None:  # no step is trained: the checkpoint's switches made this adapter
            config, record = _as_trained(config, record, checkpoints)
        if record is not None and main:  # with the id of the training writing them, for `cli._checkpoint_kept`
            write_json(checkpoints / CHECKPOINT_RECORD,
                       {**record, TRAINING: training_id(checkpoints, continuing=resume_from is not None)})
        before = _measure(trainer, loaded, pack.policy, heldout, config, adapter_on=False) if main else None
        if finished and resume_from is not None:
            trainer.restore_finished(resume_from)
        else:
            _train(trainer, resume_from)
        if trainer.state.global_step == 0:
            raise RunError("training ran no optimizer step", file=str(run_dir / "selected.jsonl"),
                           hint="check --max-steps/--epochs, or select more instructions (--keep, --no-filter)")
        after = _measure(trainer, loaded, pack.policy, heldout, config, adapter_on=True) if main else None
    history = [h for h in trainer.state.log_history if "loss" in h]
    result = DistillResult(adapter_dir, trainer.state.global_step, len(records), len(heldout), before, after, history,
                           processes=processes, main=main)
    if main:
        _write_adapter(trainer, adapter_dir, pack, loaded, config, result, run_dir)
    _leave_process_group(trainer)
    return result


def _training_records(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(selected, held out) instructions of the run, refusing an empty selection before the model loads.

    heldout.jsonl is optional (`--heldout 0` writes none): without it nothing is measured.
    """
    from .filtering import read_instructions
    from .run import require

    remake = "`pa filter RUN_DIR` (or the run's `pa apply`)"
    records = read_instructions(require(run_dir, "selected.jsonl", "pa filter RUN_DIR"), remake)
    heldout = read_instructions(run_dir / "heldout.jsonl", remake) if (run_dir / "heldout.jsonl").is_file() else []
    if not records:
        raise RunError("selected.jsonl is empty: nothing to train on", file=str(run_dir / "selected.jsonl"),
                       hint="keep more with `pa filter RUN_DIR --keep 0.8` or `--no-filter`")
    return records, heldout


def _check_trainable(trainer: Any, records: list[dict[str, Any]], heldout: list[dict[str, Any]], run_dir: Path,
                     processes: int) -> None:
    """Refuse, before any checkpoint is removed, what would otherwise fail mid-training or mid-measurement."""
    trainer.check_prompts_fit(records, run_dir / "selected.jsonl")
    # The held-out ones are measured before and after training: one too long failed only at the first
    # measurement, after the previous run's checkpoints were removed, naming neither file nor instruction.
    trainer.check_prompts_fit(heldout, run_dir / "heldout.jsonl")
    if processes > 1 and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        raise RunError("multi-process training supports data parallelism (DDP) only, not FSDP or DeepSpeed",
                       hint="launch with `torchrun --nproc_per_node N` or `accelerate launch --multi_gpu` "
                            "without an FSDP/DeepSpeed config: rank 0 alone measures and saves the adapter")


def _write_adapter(trainer: Any, adapter_dir: Path, pack: "Pack", loaded: "LoadedModel", config: "DistillConfig",
                   result: DistillResult, run_dir: Path) -> None:
    """Save the trained adapter with its provenance and loss plot (rank 0 only), staged and swapped in whole
    by `save_adapter`, so an interrupted save never leaves a half-described adapter in place."""
    def describe(staged: Path) -> None:
        provenance = write_provenance(staged, pack, loaded, config, result, run_dir)
        name_base_model(staged, provenance["base_model"])
        plot_loss(result.history, staged / "loss.png", loss_label(config.alpha, config.top_k))

    save_adapter(trainer.accelerator.unwrap_model(trainer.model), adapter_dir, describe)


def _as_trained(config: "DistillConfig", record: Mapping[str, Any] | None,
                checkpoints: Path) -> tuple["DistillConfig", Mapping[str, Any] | None]:
    """`config` and the checkpoint `record` with the speed switches and bookkeeping the restored checkpoint was
    trained with.

    A finished run re-run with `--no-prefix-cache` restores its last checkpoint and trains 0 steps, yet
    policyalign.json, the card and trained_with.json said the adapter was trained without the prefix cache; and
    re-run with `--save-steps 10` (`pa apply` re-runs distill for it), that it checkpointed every 10 steps."""
    recorded = checkpoints / CHECKPOINT_RECORD
    data = read_json(recorded) if recorded.is_file() else None
    old = data.get("config") if isinstance(data, dict) else None
    kept = {k: old[k] for k in RUN_ONLY_SETTINGS if isinstance(old, dict)
            and type(old.get(k)) is type(getattr(config, k))}  # a bool is no count, a count no bool
    if not kept:
        return config, record
    if record is not None and isinstance(record.get("config"), dict):
        record = {**record, "config": {**record["config"], **kept}}
    return replace(config, **kept), record


def _checkpoint_to_continue(trainer: Any, run_dir: Path, resume: bool,
                            restart_if_past: bool) -> tuple[Path | None, bool]:
    """The checkpoint to train on from (None: train afresh), and whether it has trained every planned step.

    A checkpoint already past the steps these settings train would end training at once, and
    the longer-trained adapter would be saved as the one these settings made.
    """
    checkpoint = resume_point(run_dir) if resume else None
    if checkpoint is None:
        # --resume trained from step 0 without a word; said here only (not by `pa distill` too, which said it twice)
        if resume and trainer.is_world_process_zero():
            print(f"resume: no complete checkpoint in {checkpoint_dir(run_dir)}; training from the start", file=sys.stderr)
        return None, False
    done = int(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", 0))
    planned = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    if done <= planned:
        return checkpoint, done == planned
    if restart_if_past:  # said, as `apply._fresh_training_note` says it of other settings: its checkpoints go
        if trainer.is_world_process_zero():
            print(f"distill: {checkpoint.name} has already trained {done} optimizer steps, more than the {planned} "
                  "these settings train; training afresh, replacing its checkpoints", file=sys.stderr)
        return None, False
    raise RunError(f"{checkpoint.name} has already trained {done} optimizer steps, more than the {planned} "
                   "these settings train", file=str(checkpoint / "trainer_state.json"),
                   hint=f"drop --resume to train {planned} steps afresh, or resume with a larger --max-steps or --epochs")


def _train(trainer: Any, resume_from: Path | None) -> None:
    """Train (on from `resume_from`); a stop signal during training ends the step, saves a checkpoint
    (`trainer.StopAfterStep`) and is raised here, once every rank has left the process group."""
    stop = stop_callback(trainer)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stop.restore()
    stopped = stop.stopped()
    if stopped is not None:
        _leave_process_group(trainer)
        raise stopped


def _leave_process_group(trainer: Any) -> None:
    """Wait for rank 0 to finish writing, then shut the process group down on every rank.

    A rank that exits while the group is alive aborts in the collective library's threads, and
    the launcher then kills rank 0 mid-write (seen with gloo on CPU).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()


def _measure(trainer: Any, loaded: "LoadedModel", policy: str, heldout: list[dict[str, Any]],
             config: DistillConfig, *, adapter_on: bool) -> float | None:
    """Internalization of the model as it is now (rank 0 only), with or without the adapter: eval mode, as the
    trainer leaves the model in train mode and LoRA dropout would make the measurement noisy."""
    from .scoring import eval_mode

    model = trainer.accelerator.unwrap_model(trainer.model)
    with eval_mode(model):
        return internalization(replace(loaded, model=model), policy, heldout, adapter_on=adapter_on,
                               max_new_tokens=config.max_new_tokens, top_k=config.top_k, seed=config.seed + 1)
