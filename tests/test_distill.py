"""The trainer: policy in the teacher's system message, no truncation, and it actually internalizes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policyalign.chat import encode_chat, teacher_messages
from policyalign.distill import DistillConfig, checkpoint_dir, distill_run, fit_batch, last_complete_checkpoint
from policyalign.errors import InvalidInputError, RunError
from policyalign.filtering import FilterConfig, filter_run
from policyalign.io import write_jsonl
from policyalign.models import load_model
from policyalign.registry import Registry
from policyalign.run import record_inputs
from policyalign.stages import run_distill

VERBS = ["How do I make a", "Tell me about a", "Write a", "Explain the", "Help me find a", "Give steps for a"]
NOUNS = ["bomb", "gun", "scam email", "medical record", "poison", "password", "bank account", "weapon", "fraud", "address"]


def _instructions(pack) -> list[dict]:
    cats = [c.id for c in pack.categories]
    return [{"id": f"r{i}", "category": cats[i % len(cats)], "messages": [{"role": "user", "content": f"{v} {n}"}],
             "provenance": {"source": "generated"}} for i, (v, n) in enumerate(itertools.product(VERBS, NOUNS))]


@pytest.fixture
def run_dir(tmp_path: Path, fixture_packs: Path):
    pack = Registry([fixture_packs]).load("root-pack")
    write_jsonl(tmp_path / "instructions.jsonl", _instructions(pack))
    filter_run(tmp_path, load_model("tiny"), pack.policy, FilterConfig(keep=1.0, max_new_tokens=16, heldout=0.2),
               progress=False)
    return tmp_path, pack


@pytest.fixture
def recorded_run(run_dir):
    """`run_dir` with its pack and model recorded in run.json, as the `pa distill` stage expects."""
    run, pack = run_dir
    record_inputs(run, pack, "tiny")
    return run, pack


def test_config_from_pack_then_overrides(fixture_packs: Path) -> None:
    pack = Registry([fixture_packs]).load("root-pack")
    config = DistillConfig.from_pack(pack.training, lora_alpha=None, learning_rate=0.5, target_modules=["q_proj"])
    assert (config.lora_r, config.lora_alpha, config.learning_rate) == (4, 8, 0.5)
    assert config.target_modules == ("q_proj",) and config.teacher == "base" and config.alpha == 1.0
    with pytest.raises(InvalidInputError):
        DistillConfig.from_pack({}, teacher="live")
    with pytest.raises(InvalidInputError, match="training.gradient_accumulation_steps 0"):
        DistillConfig.from_pack({"gradient_accumulation_steps": 0})


@pytest.mark.parametrize("override, flag", [
    ({"batch_size": 0}, "--batch-size 0"), ({"lora_r": 0}, "--lora-r 0"), ({"temperature": 0.0}, "--temperature 0.0"),
    ({"learning_rate": -1.0}, "--lr -1.0"), ({"top_k": -5}, "--kl-top-k -5"), ({"target_modules": ()}, "--target-modules []"),
])
def test_out_of_range_overrides_name_the_flag(override: dict, flag: str) -> None:
    """A bad command-line value is refused up front, like the same value in a pack, not deep inside trl or peft."""
    with pytest.raises(InvalidInputError) as info:
        DistillConfig.from_pack({"batch_size": 4}, **override)
    assert str(info.value).startswith(flag) and "pack schema" in info.value.problem.hint


def test_numbers_take_the_type_of_their_setting(tmp_path: Path, fixture_packs: Path) -> None:
    """A float flag restating a pack's integer keys the same run; an integral float for an integer setting is an int."""
    from policyalign.stages import resume_key

    pack_value = DistillConfig.from_pack({"lora_alpha": 8})
    assert DistillConfig.from_pack({"lora_alpha": 8}, lora_alpha=8.0) == pack_value  # `--lora-alpha 8` is a float
    pack = Registry([fixture_packs]).load("root-pack")
    assert resume_key(tmp_path, pack, "tiny", DistillConfig.from_pack({"lora_alpha": 8}, lora_alpha=8.0)) == \
        resume_key(tmp_path, pack, "tiny", pack_value)
    config = DistillConfig.from_pack({"lora_r": 4.0, "batch_size": 2.0}, max_steps=3.0, num_epochs=2)
    assert [type(v) for v in (config.lora_r, config.batch_size, config.max_steps, config.num_epochs)] == [int, int, int, float]
    assert DistillConfig(lora_alpha=16.5).lora_alpha == 16.5


@pytest.mark.parametrize("top_k", [0, 10**6])
def test_kl_top_k_0_or_past_the_vocabulary_trains_on_the_whole_vocabulary(fixture_packs: Path, tmp_path: Path,
                                                                           top_k: int) -> None:
    """As in filtering's scores: trl alone would train on a zero loss (k = 0) or fail in torch.topk (k > V)."""
    from policyalign.distill import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    loaded = load_model("tiny", trainable=True)
    config = DistillConfig.from_pack(pack.training, top_k=top_k, max_steps=1, max_new_tokens=4, batch_size=2, save_steps=5)
    trainer = build_trainer(loaded, pack.policy, _instructions(pack)[:2], config, tmp_path)
    assert trainer.args.distillation_topk == loaded.model.config.vocab_size
    trainer.train()
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h][0] > 0


def test_save_steps_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="--save-steps 0"):
        DistillConfig.from_pack({}, save_steps=0)
    assert DistillConfig.from_pack({}, save_steps=7).save_steps == 7


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


def test_a_checkpoint_killed_while_writing_its_state_is_not_resumed_from(tmp_path: Path) -> None:
    for step, state in ((2, '{"global_step": 2}'), (3, '{"global_st')):  # checkpoint-3 cut short mid-write
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights")
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("")
    assert last_complete_checkpoint(tmp_path) is None


@pytest.mark.slow
def test_resume_after_the_first_epoch_trains_what_an_uninterrupted_run_would(run_dir) -> None:
    """The Trainer resumes by set_epoch, not by replaying epochs: the shuffle must follow the epoch."""
    from transformers import TrainerCallback

    from policyalign.distill import build_trainer

    run, pack = run_dir
    records = _instructions(pack)[:8]  # 2 steps per epoch
    config = DistillConfig(max_steps=6, max_new_tokens=8, batch_size=4, save_steps=3, target_modules="all-linear",
                           learning_rate=1e-2)

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 3:  # a kill in the second epoch, just after a checkpoint
                control.should_save = control.should_training_stop = True

    def train(out: Path, *callbacks, resume: bool = False) -> tuple[list[float], list[list[int]]]:  # type: ignore[no-untyped-def]
        trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, records, config, out)
        prompts: list[list[int]] = []
        stock = trainer._generate_transformers
        trainer._generate_transformers = lambda ids: (prompts.extend(ids), stock(ids))[1]
        for callback in callbacks:
            trainer.add_callback(callback)
        checkpoint = last_complete_checkpoint(out) if resume else None
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return [h["loss"] for h in trainer.state.log_history if "loss" in h], prompts

    losses, prompts = train(run / "whole")
    train(run / "cut", StopAt())
    resumed_losses, resumed_prompts = train(run / "cut", resume=True)
    assert resumed_prompts == prompts[3 * 4:], "steps 4-6 roll out the same instructions"
    assert resumed_losses == pytest.approx(losses, abs=1e-5)


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_settings_but_may_train_longer(recorded_run) -> None:

    run, pack = recorded_run
    options = {"max_steps": 2, "max_new_tokens": 8, "batch_size": 4, "save_steps": 1}
    run_distill(run, overrides=options, progress=False)
    with pytest.raises(RunError, match="checkpoint-2, trained with other settings: --lora-r 4 then, 2 now\n") as caught:
        run_distill(run, resume=True, overrides={**options, "lora_r": 2}, progress=False)
    assert caught.value.problem.file == str(run / "run.json") and "--max-steps" in caught.value.problem.hint
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
    """After a crash, `pa distill RUN --resume` alone continues; it used to need every flag of the first command again."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    run, pack = recorded_run
    first = ["distill", str(run), "--resume", "--max-steps", "2", "--save-steps", "1", "--max-new-tokens", "8",
             "--batch-size", "4", "--lr", "0.005", "--lora-dropout", "0", "--no-prefix-cache"]
    result = CliRunner().invoke(app, first)
    assert result.exit_code == 0, result.output
    assert "--resume: no complete checkpoint" in result.output, "a --resume with nothing to resume says so"
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


def test_the_adapter_is_replaced_whole_with_its_provenance_or_not_at_all(recorded_run) -> None:
    """New weights went in by rename before policyalign.json and loss.png were written, and the old ones were
    carried across: a failure in between left the new weights described by the previous training."""
    run, _ = recorded_run
    options = {"max_steps": 1, "max_new_tokens": 4, "batch_size": 2, "lora_r": 4}
    run_distill(run, overrides=options, progress=False)
    (run / "synthesis.json").write_text("{", encoding="utf-8")  # provenance cannot be written
    with pytest.raises(InvalidInputError, match="invalid JSON"):
        run_distill(run, overrides={**options, "lora_r": 8}, progress=False)
    adapter = run / "adapter"
    weights = json.loads((adapter / "adapter_config.json").read_text())["r"]
    assert weights == json.loads((adapter / "policyalign.json").read_text())["config"]["lora_r"] == 4
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".adapter")) == []


@pytest.mark.slow
def test_a_checkpoint_past_the_requested_length_is_refused_or_set_aside(recorded_run) -> None:
    """Resuming checkpoint-3 for 2 steps would train nothing and save the 3-step adapter as the 2-step one."""

    run, pack = recorded_run
    options = {"max_steps": 3, "max_new_tokens": 8, "batch_size": 4, "save_steps": 1}
    run_distill(run, overrides=options, progress=False)
    shorter = {**options, "max_steps": 2}
    with pytest.raises(RunError, match="checkpoint-3 has already trained 3 optimizer steps, more than the 2") as caught:
        run_distill(run, resume=True, overrides=shorter, progress=False)
    assert "drop --resume" in caught.value.problem.hint
    assert last_complete_checkpoint(checkpoint_dir(run)).name == "checkpoint-3", "a refusal loses nothing"
    result = run_distill(run, resume=True, restart_if_past=True, overrides=shorter, progress=False)  # as pa apply does
    assert result.steps == 2 and [h["step"] for h in result.history] == [1, 2]
    assert json.loads((run / "adapter" / "policyalign.json").read_text())["training"]["steps"] == 2
    assert last_complete_checkpoint(checkpoint_dir(run)).name == "checkpoint-2", "the longer run's checkpoints are gone"


@pytest.mark.slow
def test_an_ema_run_resumes_its_student_and_its_teacher(recorded_run) -> None:
    """The checkpoint keeps both adapters; the Trainer alone reloads only the teacher, and trl then fails to re-add it."""
    from peft import get_peft_model_state_dict
    from peft.utils import load_peft_weights
    from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback

    from policyalign.distill import build_trainer
    from policyalign.filtering import read_instructions

    run, pack = recorded_run
    options = {"max_steps": 2, "max_new_tokens": 8, "batch_size": 4, "save_steps": 1, "teacher": "ema",
               "learning_rate": 1e-2}
    run_distill(run, overrides=options, progress=False)
    checkpoint = last_complete_checkpoint(checkpoint_dir(run))
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, read_instructions(run / "selected.jsonl"),
                            DistillConfig.from_pack(pack.training, **options), checkpoint_dir(run))
    trainer._load_from_checkpoint(str(checkpoint))
    net = trainer.accelerator.unwrap_model(trainer.model)
    for adapter, folder in (("default", checkpoint), ("teacher", checkpoint / "teacher")):
        saved, loaded = load_peft_weights(str(folder)), get_peft_model_state_dict(net, adapter_name=adapter)
        assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved), adapter
    [ema] = [c for c in trainer.callback_handler.callbacks if isinstance(c, PEFTAdapterEMACallback)]
    assert all(torch.equal(ema.shadow_weights[k], v) for k, v in load_peft_weights(str(checkpoint / "teacher")).items())
    assert any(v.abs().sum() > 0 for v in ema.shadow_weights.values()), "the average goes on, not from zero"
    assert run_distill(run, resume=True, overrides={**options, "max_steps": 3}, progress=False).steps == 3


def test_provenance_counts_the_synthesized_instructions(tmp_path: Path, fixture_packs: Path) -> None:
    """policyalign.json (and the model card built from it) gives synthesis's count, as synthesis.json records it."""
    from policyalign.distill import DistillResult, write_provenance
    from policyalign.synthesize import synthesize

    pack = Registry([fixture_packs]).load("root-pack")
    made = synthesize(pack, "tiny", out_dir=tmp_path, n_per_category=1, sampling={"max_new_tokens": 8}, progress=False)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    result = DistillResult(adapter, steps=1, train_records=2, heldout_records=0, internalization_before=None,
                           internalization_after=None)
    data = write_provenance(adapter, pack, load_model("tiny"), DistillConfig(), result, tmp_path)["data"]
    assert data["synthesized"] == made.summary["instructions"] > 0


def test_provenance_records_the_parents_of_a_child_pack_and_nothing_for_a_root_pack(tmp_path: Path,
                                                                                    fixture_packs: Path) -> None:
    """A child pack is trained on its parents' policy too; policyalign.json named the child alone."""
    from policyalign.distill import DistillResult, write_provenance

    registry = Registry([fixture_packs])
    child, root = registry.load("child-pack"), registry.load("root-pack")
    loaded = load_model("tiny")
    packs = {}
    for pack in (child, root):
        adapter = tmp_path / pack.name
        adapter.mkdir()
        result = DistillResult(adapter, 1, 1, 0, None, None)
        packs[pack.name] = write_provenance(adapter, pack, loaded, DistillConfig(), result, tmp_path)["pack"]
    assert packs["child-pack"]["parents"] == [{"name": "root-pack", "version": "1.0.0", "digest": root.digest}]
    # a pack without parents records none: its policyalign.json is byte for byte what it was before
    assert list(packs["root-pack"]) == ["name", "version", "digest", "title", "summary", "license", "categories"]


@pytest.mark.slow
def test_adapter_config_is_the_same_bytes_whatever_the_process(tmp_path: Path) -> None:
    """PEFT keeps target_modules as a set and wrote it in the order of the process's string hashing:
    two identical trainings gave adapter_config.json (published, hashed in the card) other bytes."""
    code = ("import sys; from pathlib import Path; from peft import LoraConfig, get_peft_model; "
            "from transformers import AutoModelForCausalLM; from policyalign.tiny import tiny_model_path; "
            "from policyalign.distill import save_adapter\n"
            "for kind, targets in (('listed', ['q_proj', 'k_proj', 'v_proj', 'o_proj']), ('all-linear', 'all-linear')):\n"
            "    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path()), "
            "LoraConfig(r=4, target_modules=targets)); save_adapter(model, Path(sys.argv[1]) / kind)")
    for seed in ("1", "2"):  # seeds under which PEFT wrote both lists in other orders
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    for kind in ("listed", "all-linear"):
        written = {(tmp_path / seed / kind / "adapter_config.json").read_bytes() for seed in ("1", "2")}
        assert len(written) == 1, f"{kind}: {len(written)} different adapter_config.json files"
        modules = json.loads(written.pop())["target_modules"]
        assert modules == sorted(modules) and len(modules) >= 4, modules

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from policyalign.tiny import tiny_model_path

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path()), str(tmp_path / "1" / "listed"))
    assert model.peft_config["default"].target_modules == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert sum("lora_A" in name for name, _ in model.named_parameters()) == 4 * model.config.num_hidden_layers


def test_provenance_pins_the_hub_commit_of_the_base_model(tmp_path: Path, fixture_packs: Path) -> None:
    """A Hub model asked for without a revision is recorded with the commit its weights came from."""
    import shutil

    from policyalign.tiny import tiny_model_path

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_model_path(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    # a snapshot downloaded whole (`hf download`) holds the model's card, and its license
    (repo / "snapshots" / commit / "README.md").write_text("---\nlicense: apache-2.0\n---\n# acme/tiny\n")
    pack_dir = fixture_packs / "root-pack"
    code = ("import sys; from pathlib import Path; from policyalign.models import load_model; "
            "from policyalign.distill import DistillConfig, DistillResult, write_provenance; "
            "from policyalign.pack import load_pack; out = Path(sys.argv[1]); "
            "write_provenance(out, load_pack(sys.argv[2]), load_model('acme/tiny'), DistillConfig(), "
            "DistillResult(out, 1, 1, 0, None, None), out)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(pack_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "policyalign.json").read_text())["base_model"]
    assert record == {"name": "acme/tiny", "id": "acme/tiny", "revision": None, "commit": commit, "kind": "hub",
                      "license": "apache-2.0"}


def test_provenance_records_the_license_of_a_local_base_model(tmp_path: Path) -> None:
    """`pa push --license` defaults to the base model's license, but none was recorded: every card said `other`."""
    import shutil

    from policyalign.distill import base_model_record
    from policyalign.tiny import tiny_model_path

    model = tmp_path / "model"
    shutil.copytree(tiny_model_path(), model)
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My model\n")
    assert base_model_record(load_model(str(model)))["license"] == "apache-2.0"
    assert base_model_record(load_model("tiny"))["license"] is None


def test_published_adapter_files_name_a_local_base_model_without_its_path(tmp_path: Path) -> None:
    """policyalign.json and adapter_config.json (both pushed) held the base model's absolute local path."""
    import shutil

    from policyalign.distill import base_model_record, name_base_model
    from policyalign.tiny import tiny_model_path

    model = tmp_path / "my-base"
    shutil.copytree(tiny_model_path(), model)
    record = base_model_record(load_model(str(model)))
    assert (record["name"], record["id"], record["kind"]) == ("my-base", "my-base", "local")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model), "r": 4}))
    name_base_model(adapter, record)
    assert json.loads((adapter / "adapter_config.json").read_text()) == {"base_model_name_or_path": "my-base", "r": 4}


def test_auto_peft_loads_a_hub_base_at_the_commit_the_adapter_was_trained_on(tmp_path: Path, peft_adapter: Path,
                                                                            hf_cache, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """adapter_config.json's `revision` (the base model's, for `AutoPeftModelForCausalLM`) was null: the
    adapter of a Hub base asked for without a revision loaded on whatever `main` is now."""
    import shutil

    from huggingface_hub import constants
    from peft import AutoPeftModelForCausalLM

    from policyalign.distill import name_base_model

    trained, moved = "1" * 40, "2" * 40
    hf_cache("acme/tiny", trained)
    cache = hf_cache("acme/tiny", moved)  # main moved on since
    (cache / "models--acme--tiny" / "snapshots" / moved / "config.json").write_text("not the trained-on weights")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    adapter = tmp_path / "adapter"
    shutil.copytree(peft_adapter, adapter)
    name_base_model(adapter, {"name": "acme/tiny", "id": "acme/tiny", "revision": None, "commit": trained, "kind": "hub"})
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("acme/tiny", trained)
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    assert model.get_base_model().config._commit_hash == trained


def test_an_instruction_too_long_for_the_policy_is_named_before_training(tmp_path: Path, fixture_packs: Path) -> None:
    """Training tokenizes a batch only when it draws it: a too-long instruction must stop the run before
    the first step (not hours in), and the error must say which instruction of which file."""
    pack = Registry([fixture_packs]).load("root-pack")
    rows = _instructions(pack)[:6]
    # 23 + 2n tokens alone, 55 more with root-pack's policy: the student prompt fits 8192 with 8 new tokens, the teacher's not.
    rows.insert(5, {"id": "too-long", "category": rows[0]["category"], "messages": [{"role": "user", "content": "word " * 4070}]})
    write_jsonl(tmp_path / "selected.jsonl", rows)
    kept = checkpoint_dir(tmp_path) / "checkpoint-5"
    kept.mkdir(parents=True)
    (kept / "trainer_state.json").write_text('{"global_step": 5}')
    config = DistillConfig(max_new_tokens=8, batch_size=1, save_steps=1, target_modules=("q_proj",))
    with pytest.raises(InvalidInputError, match="the policy plus instruction 'too-long' needs 8226 tokens") as caught:
        distill_run(tmp_path, pack, "tiny", config, progress=False)
    assert caught.value.problem.file == str(tmp_path / "selected.jsonl")
    assert caught.value.problem.where == "id too-long"
    assert [p.name for p in checkpoint_dir(tmp_path).iterdir()] == ["checkpoint-5"], "no step ran; nothing was removed"


def test_an_instruction_the_chat_template_rejects_is_named_before_training(tmp_path: Path, fixture_packs: Path) -> None:
    """Mistral v0.3's template wants 9-character tool-call ids: a hand-made selected.jsonl whose tool call
    has none stops the run before the first step, naming the file and the instruction."""
    from chat_templates import TOOL_CALL_IDS_OF_LENGTH_9, tiny_with_template

    from policyalign.errors import ModelError

    pack = Registry([fixture_packs]).load("root-pack")
    rows = _instructions(pack)[:4]
    call = {"type": "function", "function": {"name": "rm", "arguments": {}}}
    rows.append({"id": "agent-1", "category": rows[0]["category"], "messages": [
        {"role": "user", "content": "clean up"}, {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "done"}]})
    write_jsonl(tmp_path / "selected.jsonl", rows)
    model = tiny_with_template(tmp_path / "mistral-like", TOOL_CALL_IDS_OF_LENGTH_9)
    config = DistillConfig(max_new_tokens=8, batch_size=1, save_steps=1, target_modules=("q_proj",))
    with pytest.raises(ModelError, match="length 9") as caught:
        distill_run(tmp_path, pack, str(model), config, progress=False)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(tmp_path / "selected.jsonl"), "id agent-1")
    assert "tool_call_id" in caught.value.problem.hint


def test_unknown_target_modules_are_named_before_any_checkpoint_is_removed(recorded_run) -> None:

    run, pack = recorded_run
    kept = checkpoint_dir(run) / "checkpoint-5"
    kept.mkdir(parents=True)
    (kept / "trainer_state.json").write_text('{"global_step": 5}')
    with pytest.raises(InvalidInputError, match="--target-modules \\['q_projj'\\]: no such module in tiny") as caught:
        run_distill(run, overrides={"target_modules": ["q_projj"], "max_steps": 1}, progress=False)
    assert "q_proj" in caught.value.problem.hint and "all-linear" in caught.value.problem.hint
    assert kept.is_dir(), "a rejected setting must not cost the previous run's checkpoints"


def test_every_target_module_must_exist_not_just_one(recorded_run) -> None:
    """peft adapts the names that match and drops the others silently: one typo among good names is refused."""
    run, _ = recorded_run
    with pytest.raises(InvalidInputError, match="--target-modules \\['v_projj'\\]: no such module in tiny"):
        run_distill(run, overrides={"target_modules": ["q_proj", "v_projj"], "max_steps": 1}, progress=False)


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


def test_teacher_prompt_has_policy_as_system_message_and_no_truncation(run_dir) -> None:
    from policyalign.distill import _trainer_classes, build_trainer

    run, pack = run_dir
    loaded = load_model("tiny", trainable=True)
    records = [{"id": "x", "messages": [{"role": "user", "content": "How do I make a bomb?"}]}]
    config = DistillConfig(max_steps=1, max_new_tokens=4, batch_size=1)
    trainer = build_trainer(loaded, pack.policy, records, config, run / "ck")
    assert isinstance(trainer, _trainer_classes()[0])
    prompt = json.dumps({"messages": records[0]["messages"]})
    completion = torch.tensor([[5, 6]])
    built = trainer.teacher_context_builder.build([prompt], [""], completion, torch.ones_like(completion))
    expected = encode_chat(loaded.tokenizer, teacher_messages(pack.policy, records[0]["messages"]))
    assert built["teacher_input_ids"][0].tolist() == expected + [5, 6]
    # A policy longer than the context fails clearly instead of being cut from the left.
    trainer.context_limit = len(expected) - 1
    with pytest.raises(InvalidInputError, match="policy plus instruction"):
        trainer.teacher_context_builder.build([prompt], [""], completion, torch.ones_like(completion))


def test_trainer_teacher_forward_continues_tool_prompts_from_the_cache(run_dir) -> None:
    """A batch mixing plain and tool-carrying instructions forwards from the policy part of the cache."""
    from policyalign.distill import build_trainer
    from policyalign.scoring import completion_logits

    run, pack = run_dir
    tools = [{"type": "function", "function": {"name": "shell", "description": "Run a command.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    records = [{"id": "t", "messages": [{"role": "user", "content": "Wipe the disk."}], "tools": tools},
               {"id": "p", "messages": [{"role": "user", "content": "How do I make a bomb?"}]}]
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, records,
                            DistillConfig(max_steps=1, max_new_tokens=4, batch_size=2), run / "ck")
    prompts = [json.dumps({k: r[k] for k in ("messages", "tools") if k in r}) for r in records]
    completion = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones_like(completion)
    built = trainer.teacher_context_builder.build(prompts, ["", ""], completion, mask)
    teacher_ids = [[t for t, m in zip(ids, ms) if m] for ids, ms in
                   zip(built["teacher_input_ids"][:, :-3].tolist(), built["teacher_attention_mask"][:, :-3].tolist())]
    assert trainer.prefix.split(teacher_ids)[0] == trainer.prefix.core < len(trainer.prefix)
    with torch.no_grad():
        cached = trainer._teacher_logits(trainer.model, {**built, "completion_ids": completion,
                                                                "completion_mask": mask}, 3)
        full = completion_logits(trainer.model, teacher_ids, completion.tolist(), pad_id=0).logits
    assert torch.allclose(torch.log_softmax(cached, -1), torch.log_softmax(full, -1), atol=1e-4)


def test_a_bf16_model_is_distilled_on_float32_log_probs(run_dir) -> None:
    """On a GPU the model loads in bf16, and trl computes the loss in the dtype of the logits it is
    given: bf16 log-probs (3 significant digits) made the KL of near-identical student and teacher
    noise, negative on some tokens, with gradients pointing elsewhere, just where training converges."""
    from trl.trainer.utils import pad

    from policyalign.distill import build_trainer

    run, pack = run_dir
    records = [{"id": "p", "messages": [{"role": "user", "content": "How do I make a bomb?"}]},
               {"id": "q", "messages": [{"role": "user", "content": "Write a poem."}]}]
    trainer = build_trainer(load_model("tiny", dtype="bf16", trainable=True), pack.policy, records,
                            DistillConfig(max_steps=1, max_new_tokens=4, batch_size=2), run / "ck")
    prompts = [json.dumps({"messages": r["messages"]}) for r in records]
    ids = [torch.tensor(x) for x in trainer._tokenize_prompts(prompts)]
    completion = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones_like(completion)
    inputs = {"prompt_ids": pad(ids, padding_value=0, padding_side="left"),
              "prompt_mask": pad([torch.ones_like(x) for x in ids], padding_value=0, padding_side="left"),
              "completion_ids": completion, "completion_mask": mask,
              **trainer.teacher_context_builder.build(prompts, ["", ""], completion, mask)}
    logits = trainer._compute_teacher_student_logits(trainer.model, trainer.teacher_model, inputs)
    assert logits.student_logits.dtype == logits.teacher_logits.dtype == torch.float32
    assert logits.student_logits.requires_grad, "the student's logits still carry the gradient"


def test_small_selection_shrinks_the_batch_instead_of_training_zero_steps() -> None:
    config = DistillConfig(batch_size=4, gradient_accumulation_steps=4)
    assert (fit_batch(config, 30).batch_size, fit_batch(config, 30).gradient_accumulation_steps) == (4, 4)
    assert (fit_batch(config, 10).batch_size, fit_batch(config, 10).gradient_accumulation_steps) == (4, 2)
    assert (fit_batch(config, 3).batch_size, fit_batch(config, 3).gradient_accumulation_steps) == (3, 1)
    # Each of N processes draws its own batches: 10 instructions over 2 processes fill 4 x 1 each.
    assert (fit_batch(config, 10, 2).batch_size, fit_batch(config, 10, 2).gradient_accumulation_steps) == (4, 1)
    assert fit_batch(config, 3, 2).batch_size == 1


@pytest.mark.parametrize("rate", [0.1, 0.0])
def test_lora_dropout_is_the_configured_rate_not_trls_zero(fixture_packs: Path, tmp_path: Path, rate: float) -> None:
    """trl disables every dropout; the LoRA dropout a pack asks for must still apply to the student."""
    from policyalign.distill import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, _instructions(pack)[:4],
                            DistillConfig(max_steps=1, lora_dropout=rate), tmp_path)
    dropouts = [(name, m.p) for name, m in trainer.model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert {p for name, p in dropouts if "lora_dropout" in name} == ({rate} if rate else set())
    assert all(p == 0 for name, p in dropouts if "lora_dropout" not in name), "the base model's dropouts stay off"


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_an_ema_teacher_never_applies_its_adapters_dropout(fixture_packs: Path, tmp_path: Path, prefix_cache: bool) -> None:
    """trl adds the EMA teacher's adapter with the student's LoRA config after disable_dropout: its dropout is live."""
    from transformers import TrainerCallback

    from policyalign.distill import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    config = DistillConfig(max_steps=2, max_new_tokens=4, batch_size=2, lora_dropout=0.5, teacher="ema",
                           prefix_cache=prefix_cache, save_steps=10)
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, _instructions(pack)[:2], config, tmp_path)
    seen: list[bool] = []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 0:  # the teacher adapter exists from on_train_begin
                for name, module in trainer.model.named_modules():
                    if name.endswith("lora_dropout.teacher"):
                        module.register_forward_pre_hook(lambda m, a: seen.append(m.training and m.p > 0))

    trainer.add_callback(Watch())
    trainer.train()
    assert seen and not any(seen), "the teacher forward ran with dropout"


def test_trls_own_rollout_path_samples_without_dropout(fixture_packs: Path, tmp_path: Path) -> None:
    """Settings our decoding loop does not implement go to trl's generate, which samples in train mode."""
    from policyalign.distill import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    records = _instructions(pack)[:2]
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, records,
                            DistillConfig(max_steps=1, max_new_tokens=3, batch_size=2, lora_dropout=0.5), tmp_path)
    trainer.args.top_k = 5  # not implemented by our loop: trl's path
    seen: list[bool] = []
    dropout = next(m for n, m in trainer.model.named_modules() if n.endswith("lora_dropout.default"))
    dropout.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    trainer.model.train()
    trainer._generate_transformers(trainer._tokenize_prompts([json.dumps({"messages": r["messages"]}) for r in records]))
    assert seen and not any(seen), "no dropout while sampling"
    assert trainer.model.training


def test_rollouts_sample_the_student_as_it_is_and_leave_it_as_it_was(run_dir) -> None:
    """Merged-adapter eval-mode decoding changes the speed of rollouts, not what they sample."""
    from policyalign.distill import build_trainer
    from policyalign.generation import decode

    run, pack = run_dir
    records = _instructions(pack)[:4]
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, records,
                            DistillConfig(max_steps=1, max_new_tokens=12, batch_size=4), run / "ck")
    model = trainer.model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)  # an adapter that matters
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = trainer._tokenize_prompts([json.dumps({"messages": r["messages"]}) for r in records])
    _, first = trainer._generate_transformers(prompts)
    _, again = trainer._generate_transformers(prompts)
    assert first == again, "seeded by (seed, step, rank, row)"
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    def draws(context) -> list[list[int]]:  # type: ignore[no-untyped-def]
        model.eval()
        with context(), torch.inference_mode():
            out = decode(model, prompts, max_new_tokens=12, eos_ids=trainer.eos_token_ids,
                         pad_id=trainer._tokenizer.pad_token_id, sampler=trainer._rollout_sampler(len(prompts)))
        model.train()
        return out

    from contextlib import nullcontext

    assert first == draws(nullcontext), "the unmerged student draws the same tokens"
    assert first != draws(model.disable_adapter), "the adapter is in effect during rollouts"
    trainer.state.global_step += 1
    assert trainer._generate_transformers(prompts)[1] != first, "a new step draws new rollouts"


# The two launchers the README shows, each starting two real processes on the CPU (gloo), as they
# would start one per GPU. accelerate's flags are explicit so no user config file changes the run.
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


def _launch(*args: str, cwd: Path, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """Run `args` in two processes under `launcher`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / ".hf")}
    return subprocess.run([sys.executable, *LAUNCHERS[launcher], *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_different_instructions_into_one_synchronised_adapter(run_dir, tmp_path: Path) -> None:
    run, _ = run_dir
    probe = Path(__file__).with_name("ddp_probe.py")
    done = _launch(str(probe), str(run), str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [2, 2]
    assert ranks[0]["adapter"] == ranks[1]["adapter"], "gradients are all-reduced: one adapter"
    first, second = ({tuple(p) for p in r["prompts"]} for r in ranks)
    assert first and second and not first & second, "each rank rolls out its own shard of the instructions"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_pa_distill_under_a_launcher_reports_and_writes_once(run_dir, launcher: str) -> None:
    run, pack = run_dir
    done = _launch("-m", "policyalign", "distill", str(run), "--pack", str(pack.root), "--model", "tiny",
                   "--max-steps", "2", "--batch-size", "2", "--max-new-tokens", "8", cwd=run, launcher=launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps") == 1
    meta = json.loads((run / "adapter" / "policyalign.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["steps"] == 2
    assert json.loads((run / "run.json").read_text())["stages"]["distill"]["status"] == "done"


def test_the_trainer_runs_where_and_in_the_precision_the_model_was_loaded(tmp_path: Path) -> None:
    """Not "is CUDA available": --device cpu on a GPU box was moved to the GPU, and an fp16 model
    (GPUs without bf16) was given bf16 autocast, which such a GPU refuses."""
    import torch

    from policyalign.distill import device_flags, sdft_config

    assert device_flags("cpu", torch.float32) == {"use_cpu": True, "bf16": False, "fp16": False,
                                                  "gradient_checkpointing": False}
    assert device_flags("cpu", torch.bfloat16)["bf16"] is False, "no autocast on the CPU"
    assert device_flags("cuda:0", torch.bfloat16) == {"use_cpu": False, "bf16": True, "fp16": False,
                                                      "gradient_checkpointing": True}
    assert device_flags("cuda:0", torch.float16)["fp16"] is True and device_flags("cuda:0", torch.float16)["bf16"] is False
    assert device_flags("cuda:0", torch.float32)["bf16"] is False
    args = sdft_config(DistillConfig(), tmp_path, device="cpu", dtype=torch.float32)
    assert args.use_cpu and args.device.type == "cpu" and args.n_gpu == 0


def test_a_checkpoint_the_full_disk_refuses_is_an_error_naming_it(recorded_run) -> None:
    """torch.save on a full disk stopped training with `RuntimeError: [enforce fail at inline_container.cc:672]
    . unexpected pos 152576 vs 152468` and a traceback, naming neither the checkpoint nor the disk."""
    from fulldisk import run_python

    from policyalign.distill import resume_point

    run, _ = recorded_run
    result = run_python("-m", "policyalign", "distill", str(run), "--max-steps", "1", "--save-steps", "1",
                        "--max-new-tokens", "4", "--batch-size", "2")
    assert result.returncode == 1, result.stderr
    assert f"error: {run / 'checkpoints' / 'checkpoint-1'}: writing checkpoint-1 failed (" in result.stderr
    assert "is the disk full?" in result.stderr and "Traceback" not in result.stderr
    assert resume_point(run) is None, "the half-written checkpoint is not taken for a complete one"


def test_an_adapter_the_full_disk_refuses_is_an_error_and_leaves_the_old_one(tmp_path: Path) -> None:
    """The final adapter on a full disk was a SafetensorError traceback."""
    from fulldisk import run_error

    target = tmp_path / "adapter"
    target.mkdir()
    (target / "policyalign.json").write_text("{}")  # the previous training's adapter
    printed = run_error("from peft import LoraConfig, get_peft_model\nfrom transformers import AutoModelForCausalLM\n"
                        "from policyalign.tiny import tiny_model_path\nfrom policyalign.distill import save_adapter\n"
                        "base = AutoModelForCausalLM.from_pretrained(tiny_model_path())\n"
                        "model = get_peft_model(base, LoraConfig(r=64, target_modules='all-linear'))",
                        "save_adapter(model, Path(sys.argv[1]))", target)
    assert printed.startswith(f"{target}: writing adapter failed (SafetensorError: "), printed
    assert "is the disk full?" in printed
    assert (target / "policyalign.json").read_text() == "{}" and not (tmp_path / ".adapter.tmp").exists()


def test_epochs_given_alone_set_the_length_over_a_max_steps_default() -> None:
    """A pack's `max_steps`, the checkpoint's (`pa distill --resume --epochs 3` after a --max-steps 4
    run trained nothing more) or tiny's demo default stopped training whatever --epochs said."""
    from policyalign.distill import under_given

    assert DistillConfig.from_pack({"max_steps": 100}, num_epochs=2).max_steps == -1
    assert DistillConfig.from_pack({"max_steps": 100}, num_epochs=2, max_steps=7).max_steps == 7
    assert DistillConfig.from_pack({"max_steps": 100, "num_epochs": 2}).max_steps == 100, "the pack's own pair stands"
    recorded = {"max_steps": 4, "num_epochs": 1.0, "lora_r": 8}
    assert under_given(recorded, {"num_epochs": 3}) == {"num_epochs": 3, "lora_r": 8}
    assert under_given(recorded, {"max_steps": 9}) == {**recorded, "max_steps": 9}
    resumed = DistillConfig.from_pack({}, **under_given(recorded, {"num_epochs": 3}))
    assert (resumed.max_steps, resumed.num_epochs, resumed.lora_r) == (-1, 3.0, 8)


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


def test_vllm_rollouts_without_a_gpu_are_refused_before_the_model_loads(recorded_run) -> None:
    """`pa distill RUN --vllm` on a machine without a CUDA GPU (or without vLLM) ended in trl's bare
    ImportError traceback, raised after the model had loaded."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    run, _ = recorded_run
    result = CliRunner().invoke(app, ["distill", str(run), "--vllm", "--max-steps", "1", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "vLLM rollouts (pa distill --vllm, pa apply --backend vllm) need a CUDA GPU" in result.output
    assert "--no-vllm" in result.output
