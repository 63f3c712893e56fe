"""The distill stage: it internalizes the policy, and resumes, refuses or restarts from checkpoints as asked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from policyalign.checkpoints import checkpoint_dir, last_complete_checkpoint
from policyalign.distill import distill_run
from policyalign.distill_settings import DistillConfig
from policyalign.errors import InvalidInputError, RunError
from policyalign.models import load_model
from policyalign.stages import run_distill


@pytest.mark.slow
def test_distillation_internalizes_the_policy(run_dir) -> None:
    run, pack = run_dir
    base = {k: v.clone() for k, v in load_model("tiny").model.state_dict().items()}
    config = DistillConfig(max_steps=80, max_new_tokens=16, batch_size=8, learning_rate=1e-2, lora_r=16,
                           lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", save_steps=40)
    result = distill_run(run, pack, "tiny", config)
    print(f"internalization {result.internalization_before:.4f} -> {result.internalization_after:.4f}")
    assert result.internalization_drop >= 0.30
    # The adapter changed, the base did not.
    from safetensors.torch import load_file

    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; training must move it"
    reloaded = load_model("tiny").model.state_dict()
    assert all(torch.equal(base[k], reloaded[k]) for k in base)
    # Provenance, loss curve, checkpoints for --resume.
    meta = json.loads((result.adapter_dir / "policyalign.json").read_text())
    assert meta["pack"]["digest"] == pack.digest and meta["base_model"]["name"] == "tiny"
    assert meta["data"]["selected"] == result.train_records and meta["internalization"]["after"] < meta["internalization"]["before"]
    assert (result.adapter_dir / "loss.png").is_file()
    assert last_complete_checkpoint(checkpoint_dir(run)) is not None
    assert not (result.adapter_dir / "checkpoints").exists(), "the adapter directory holds only what is published"
    mask = os.umask(0)
    os.umask(mask)
    assert {f.stat().st_mode & 0o777 for f in result.adapter_dir.iterdir()} == {0o666 & ~mask}, "ordinary files"
    checkpoint_files = [f for f in checkpoint_dir(run).rglob("*") if f.is_file()]
    assert checkpoint_files and {f.stat().st_mode & 0o777 for f in checkpoint_files} == {0o666 & ~mask}


@pytest.mark.slow
def test_resume_continues_from_checkpoint(run_dir) -> None:
    run, pack = run_dir
    config = DistillConfig(max_steps=4, max_new_tokens=8, batch_size=4, save_steps=2, target_modules="all-linear")
    first = distill_run(run, pack, "tiny", config)
    longer = DistillConfig(max_steps=6, max_new_tokens=8, batch_size=4, save_steps=2, target_modules="all-linear")
    result = distill_run(run, pack, "tiny", longer, resume=True)
    assert result.steps == 6
    # The first four steps come from the checkpoint's state, not from training again.
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in result.history[:4]] == [h["loss"] for h in first.history]
    # Steps 5 and 6 follow the 6-step linear schedule. Step 5 used to train at the rate the 4-step
    # schedule left in the checkpoint, 0: resuming to 5 steps changed nothing.
    rate = longer.learning_rate
    assert [h["learning_rate"] for h in result.history[4:]] == pytest.approx([rate * 2 / 6, rate * 1 / 6])


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_settings_but_may_train_longer(recorded_run, capsys) -> None:

    run, pack = recorded_run
    options = {"max_steps": 2, "max_new_tokens": 8, "batch_size": 4, "save_steps": 1}
    run_distill(run, resume=True, overrides=options, progress=False)  # nothing to resume yet: it says so
    assert f"resume: no complete checkpoint in {checkpoint_dir(run)}; training from the start" in capsys.readouterr().err
    with pytest.raises(RunError, match="checkpoint-2, trained with other settings: --lora-r 4 then, 2 now\n") as caught:
        run_distill(run, resume=True, overrides={**options, "lora_r": 2}, progress=False)
    # The record the settings were read from: the checkpoints' own, not run.json (which named them wrongly).
    assert caught.value.problem.file == str(checkpoint_dir(run) / "trained_with.json")
    assert "--max-steps" in caught.value.problem.hint
    # How often it checkpoints, or whether the prefix cache is on, is not what it trains.
    longer = {**options, "max_steps": 3, "save_steps": 5, "prefix_cache": False}
    assert run_distill(run, resume=True, overrides=longer, progress=False).steps == 3
    # A run from before checkpoints moved out of adapter/ resumes from where it kept them.
    state = last_complete_checkpoint(checkpoint_dir(run)) / "trainer_state.json"
    marked = json.loads(state.read_text())
    marked["log_history"].append({"step": 3, "marker": "old place"})
    state.write_text(json.dumps(marked))
    checkpoint_dir(run).rename(run / "adapter" / "checkpoints")
    with pytest.raises(RunError, match="checkpoint-3, trained with other"):  # checked there too
        run_distill(run, resume=True, overrides={**options, "max_steps": 4, "lora_r": 2}, progress=False)
    assert run_distill(run, resume=True, overrides={**options, "max_steps": 4}, progress=False).steps == 4
    resumed = json.loads((last_complete_checkpoint(checkpoint_dir(run)) / "trainer_state.json").read_text())
    assert {"step": 3, "marker": "old place"} in resumed["log_history"], "continued from the moved checkpoint"


@pytest.mark.slow
def test_pa_distill_resume_continues_with_the_settings_the_run_was_trained_with(recorded_run) -> None:
    """After a crash, `pa distill RUN --resume` alone continues; it used to need every flag of the first command again.
    With nothing to resume it says so, once."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    run, pack = recorded_run
    first = ["distill", str(run), "--resume", "--max-steps", "2", "--save-steps", "1", "--max-new-tokens", "8",
             "--batch-size", "4", "--lr", "0.005", "--lora-dropout", "0", "--no-prefix-cache"]
    result = CliRunner().invoke(app, first)
    assert result.exit_code == 0, result.output
    assert "resume: no complete checkpoint" in result.output, "a --resume with nothing to resume says so"
    # once: the command said it, then the training it started said it again
    assert result.output.count("training from the start") == 1, result.output
    # A switch recorded as off can be turned back on when resuming (it used to have only its --no- form).
    result = CliRunner().invoke(app, ["distill", str(run), "--resume", "--max-steps", "3", "--prefix-cache"])
    assert result.exit_code == 0, result.output
    assert "no complete checkpoint" not in result.output
    config = json.loads((run / "adapter" / "policyalign.json").read_text())["config"]
    assert (config["learning_rate"], config["lora_dropout"], config["max_new_tokens"], config["max_steps"]) == \
        (0.005, 0.0, 8, 3)
    assert config["prefix_cache"] is True
    state = json.loads((last_complete_checkpoint(checkpoint_dir(run)) / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]


def test_a_run_that_failed_before_training_does_not_disown_the_checkpoints_it_kept(recorded_run) -> None:
    """An attempt with other settings that fails before training keeps the checkpoints (nothing was trained);
    it must not take their place as what they were trained with, or they could never be resumed."""
    from policyalign.stages import recorded_distill_config

    run, _ = recorded_run
    options = {"max_steps": 2, "max_new_tokens": 8, "batch_size": 4, "save_steps": 1, "lora_r": 4}
    run_distill(run, overrides=options, progress=False)
    with pytest.raises(InvalidInputError, match="no such module"):
        run_distill(run, overrides={**options, "lora_r": 8, "target_modules": ["q_prj"]}, progress=False)
    assert recorded_distill_config(run)["lora_r"] == 4, "`pa distill --resume` continues with the checkpoint's settings"
    assert run_distill(run, resume=True, overrides={**options, "max_steps": 3}, progress=False).steps == 3
    with pytest.raises(RunError, match="--lora-r 4 then, 8 now"):
        run_distill(run, resume=True, overrides={**options, "lora_r": 8, "max_steps": 4}, progress=False)


@pytest.mark.slow
def test_a_checkpoint_past_the_requested_length_is_refused_or_set_aside(recorded_run, capsys) -> None:
    """Resuming checkpoint-3 for 2 steps would train nothing and save the 3-step adapter as the 2-step one.
    Set aside (`pa apply` going back to a shorter --max-steps), it is replaced: that was done without a word."""

    run, pack = recorded_run
    options = {"max_steps": 3, "max_new_tokens": 8, "batch_size": 4, "save_steps": 1}
    run_distill(run, overrides=options, progress=False)
    shorter = {**options, "max_steps": 2}
    with pytest.raises(RunError, match="checkpoint-3 has already trained 3 optimizer steps, more than the 2") as caught:
        run_distill(run, resume=True, overrides=shorter, progress=False)
    assert "drop --resume" in caught.value.problem.hint
    assert last_complete_checkpoint(checkpoint_dir(run)).name == "checkpoint-3", "a refusal loses nothing"
    capsys.readouterr()
    result = run_distill(run, resume=True, restart_if_past=True, overrides=shorter, progress=False)  # as pa apply does
    assert ("checkpoint-3 has already trained 3 optimizer steps, more than the 2 these settings train; training afresh"
            in capsys.readouterr().err)
    assert result.steps == 2 and [h["step"] for h in result.history] == [1, 2]
    assert json.loads((run / "adapter" / "policyalign.json").read_text())["training"]["steps"] == 2
    assert last_complete_checkpoint(checkpoint_dir(run)).name == "checkpoint-2", "the longer run's checkpoints are gone"


def test_unknown_target_modules_are_named_before_any_checkpoint_is_removed(recorded_run) -> None:

    run, pack = recorded_run
    kept = checkpoint_dir(run) / "checkpoint-5"
    kept.mkdir(parents=True)
    (kept / "trainer_state.json").write_text('{"global_step": 5}')
    with pytest.raises(InvalidInputError, match="LoRA target modules \\['q_projj'\\]: no such module in tiny") as caught:
        run_distill(run, overrides={"target_modules": ["q_projj"], "max_steps": 1}, progress=False)
    assert "q_proj" in caught.value.problem.hint and "all-linear" in caught.value.problem.hint
    assert kept.is_dir(), "a rejected setting must not cost the previous run's checkpoints"


def test_pa_distill_target_modules_may_have_spaces_after_the_commas(recorded_run) -> None:
    """`--target-modules "q_proj, v_proj"` adapts both (it adapted q_proj alone)."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    run, _ = recorded_run
    result = CliRunner().invoke(app, ["distill", str(run), "--target-modules", "q_proj, v_proj", "--max-steps", "1",
                                      "--max-new-tokens", "4", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_pa_distill_refuses_an_ema_decay_without_the_ema_teacher(recorded_run) -> None:
    """`pa distill RUN --ema-decay 0.5` trained against the base teacher, the rate silently unused."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    run, _ = recorded_run
    result = CliRunner().invoke(app, ["distill", str(run), "--ema-decay", "0.5", "--max-steps", "1"])
    assert result.exit_code == 2 and "--ema-decay applies only with --teacher ema" in result.output
    assert not (run / "adapter").exists()


def test_resuming_a_checkpoint_that_trained_every_step_trains_no_more(recorded_run) -> None:
    """A run stopped after its final checkpoint (while measuring or saving the adapter) came back one
    step longer than its --max-steps: the Trainer, resumed at its last step, checks the limit only
    after taking another one. Now the checkpoint's adapter is the result, as if never stopped."""
    run, _ = recorded_run
    options = {"max_steps": 2, "max_new_tokens": 8, "batch_size": 4, "save_steps": 2}
    run_distill(run, overrides=options, progress=False)
    trained = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    result = run_distill(run, resume=True, overrides=options, progress=False)
    assert result.steps == 2 and [c.name for c in checkpoint_dir(run).glob("checkpoint-*")] == ["checkpoint-2"]
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == trained
    assert [h["step"] for h in result.history] == [1, 2]


@pytest.mark.parametrize(("setting", "trained", "now"), [("prefix_cache", True, False), ("save_steps", 2, 5)])
def test_a_restored_checkpoint_records_the_switches_and_bookkeeping_it_was_trained_with(recorded_run, setting: str,
                                                                                         trained: Any, now: Any) -> None:
    """A finished run re-run with `--no-prefix-cache` (a speed switch: it may change on resume) restores its
    last checkpoint and trains 0 steps, yet policyalign.json, the card, trained_with.json and run.json then
    said the adapter was trained without the prefix cache; re-run with `--save-steps 5`, that it checkpointed
    every 5 steps. They keep what it was trained with."""
    from policyalign.run import read_manifest

    run, _ = recorded_run
    options = {"max_steps": 2, "max_new_tokens": 8, "batch_size": 4, "save_steps": 2}
    run_distill(run, overrides=options, progress=False)
    result = run_distill(run, resume=True, overrides={**options, setting: now}, progress=False)
    assert result.steps == 2
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    assert provenance["config"][setting] == trained
    assert json.loads((checkpoint_dir(run) / "trained_with.json").read_text())["config"][setting] == trained
    assert read_manifest(run)["stages"]["distill"]["config"][setting] == trained


def test_checkpoints_record_the_training_that_wrote_them_and_a_resume_keeps_it(recorded_run) -> None:
    """`pa distill` stopped before its first step told an earlier training's checkpoints from its own by their
    modification time; each training now records an id beside them (`checkpoints.training_id`), which a training
    resumed from them keeps (it is the same training) and a fresh one replaces."""
    run, _ = recorded_run
    options = {"max_steps": 2, "max_new_tokens": 4, "batch_size": 4, "save_steps": 2}
    run_distill(run, overrides=options, progress=False)
    record = checkpoint_dir(run) / "trained_with.json"
    first = json.loads(record.read_text())["training"]
    run_distill(run, resume=True, overrides={**options, "max_steps": 3}, progress=False)
    assert json.loads(record.read_text())["training"] == first
    assert json.loads(record.read_text())["resume_key"]  # beside the settings, not instead of them


def test_a_packs_misspelt_target_module_names_the_pack_file_and_entry(run_dir, fixture_packs: Path) -> None:
    """`pa distill` blamed "--target-modules, else the pack's training.target_modules" for a pack's typo, naming
    no file and no entry: it names the pack's pack.yaml, the entry, and the module meant."""
    from policyalign.registry import Registry

    run, _ = run_dir
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("  lora_r: 4\n", "  lora_r: 4\n  target_modules: [q_prj]\n"))
    pack = Registry([fixture_packs]).load("root-pack")
    with pytest.raises(InvalidInputError, match="\\['q_prj'\\]: no such module in tiny") as caught:
        distill_run(run, pack, "tiny", DistillConfig.from_pack(pack.training, max_steps=1), progress=False)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(manifest), "training.target_modules[0]")
    assert caught.value.problem.hint.startswith("did you mean 'q_proj'?")
    with pytest.raises(InvalidInputError, match="\\['o_prj'\\]") as caught:  # a flag's typo is the flag's
        distill_run(run, pack, "tiny", DistillConfig.from_pack(pack.training, max_steps=1, target_modules=["o_prj"]),
                    progress=False)
    assert (caught.value.problem.file, caught.value.problem.where) == ("", "--target-modules")


def test_a_selection_cut_short_mid_line_is_named_with_how_to_write_it_anew(recorded_run) -> None:
    """selected.jsonl cut mid-JSON was named by file and line, the hint not saying that `pa filter` writes it anew."""
    run, _ = recorded_run
    selected = run / "selected.jsonl"
    selected.write_bytes(selected.read_bytes()[:-20])
    with pytest.raises(InvalidInputError, match="malformed JSON line") as caught:
        run_distill(run, overrides={"max_steps": 1}, progress=False)
    assert caught.value.problem.file == str(selected)
    assert "delete selected.jsonl and run `pa filter RUN_DIR`" in caught.value.problem.hint


def test_a_heldout_instruction_too_long_is_named_before_any_checkpoint_is_removed(recorded_run) -> None:
    """A held-out instruction that leaves no room for its response failed at the first internalization
    measurement, after the previous run's checkpoints were removed, naming no file: it fails before, naming
    heldout.jsonl and the instruction, as one in selected.jsonl does."""
    from policyalign.filtering import read_instructions
    from policyalign.io import write_jsonl

    run, _ = recorded_run
    kept = checkpoint_dir(run) / "checkpoint-5"
    kept.mkdir(parents=True)
    (kept / "trainer_state.json").write_text('{"global_step": 5}')
    heldout = read_instructions(run / "heldout.jsonl")
    heldout[0]["messages"][-1]["content"] += " " + " ".join(f"w{i}x{i * 7919 % 1000}" for i in range(2000))
    write_jsonl(run / "heldout.jsonl", heldout)
    with pytest.raises(InvalidInputError, match="needs .* tokens") as caught:
        run_distill(run, overrides={"max_steps": 1, "max_new_tokens": 8}, progress=False)
    assert caught.value.problem.file == str(run / "heldout.jsonl")
    assert caught.value.problem.where == f"id {heldout[0]['id']}"
    assert kept.is_dir(), "a held-out instruction too long must not cost the previous run's checkpoints"


@pytest.mark.slow
def test_sigterm_during_training_keeps_the_step_under_way_and_resumes_as_if_never_stopped(recorded_run,
                                                                                          tmp_path: Path) -> None:
    """SIGTERM (a scheduler's, some 30 s before SIGKILL) a moment into `pa distill` left no checkpoint (one
    every 50 steps by default): the requeued job, with --resume, trained from step 0 again. Now the step under
    way ends and is saved, `pa` stops as before (143, the stage interrupted), and the resumed run ends with the
    adapter an uninterrupted one makes, byte for byte."""
    import shlex
    import shutil
    import signal
    import subprocess
    import sys
    import time

    run, _ = recorded_run
    # No held-out set: training starts as the checkpoint record is written, so the stop below lands in a step
    # however slowly a loaded machine measures internalization (it stopped before step 1, keeping nothing).
    (run / "heldout.jsonl").unlink(missing_ok=True)
    twin = shutil.copytree(run, tmp_path / "twin")
    options = {"max_steps": 60, "max_new_tokens": 8, "batch_size": 4}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    proc = subprocess.Popen([sys.executable, "-m", "policyalign", "distill", str(run), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = checkpoint_dir(run) / "trained_with.json"  # written as training begins, after the model loads
    while proc.poll() is None and not record.is_file():
        time.sleep(0.05)
    time.sleep(1.0)  # some steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "SIGTERM: finishing this training step and saving a checkpoint" in err and "Traceback" not in err
    assert f"run: {shlex.join(['pa', 'distill', str(run), *flags, '--resume'])}\n" in err  # as typed, to paste
    kept = last_complete_checkpoint(checkpoint_dir(run))
    assert kept is not None, "no checkpoint: the stop landed before training or was not kept"
    stopped_at = int(kept.name.split("-")[1])
    assert 0 < stopped_at < options["max_steps"]
    assert json.loads((run / "run.json").read_text())["stages"]["distill"]["status"] == "interrupted"
    resumed = run_distill(run, resume=True, overrides=options, progress=False)
    assert [h["step"] for h in resumed.history][stopped_at - 1:stopped_at + 1] == [stopped_at, stopped_at + 1]
    run_distill(twin, overrides=options, progress=False)
    assert ((run / "adapter" / "adapter_model.safetensors").read_bytes()
            == (twin / "adapter" / "adapter_model.safetensors").read_bytes())
