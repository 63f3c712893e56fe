"""The trainer: policy in the teacher's system message, no truncation, its rollouts, dropout and precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill_runs import pack_instructions
from policyalign.chat import encode_chat, teacher_messages
from policyalign.checkpoints import checkpoint_dir, last_complete_checkpoint
from policyalign.distill import distill_run
from policyalign.distill_settings import DistillConfig
from policyalign.errors import InvalidInputError
from policyalign.io import write_jsonl
from policyalign.models import load_model
from policyalign.registry import Registry
from policyalign.stages import run_distill


@pytest.mark.parametrize("top_k", [0, 10**6])
def test_kl_top_k_0_or_past_the_vocabulary_trains_on_the_whole_vocabulary(fixture_packs: Path, tmp_path: Path,
                                                                           top_k: int) -> None:
    """As in filtering's scores: trl alone would train on a zero loss (k = 0) or fail in torch.topk (k > V)."""
    from policyalign.trainer import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    loaded = load_model("tiny", trainable=True)
    config = DistillConfig.from_pack(pack.training, top_k=top_k, max_steps=1, max_new_tokens=4, batch_size=2, save_steps=5)
    trainer = build_trainer(loaded, pack.policy, pack_instructions(pack)[:2], config, tmp_path)
    assert trainer.args.distillation_topk == loaded.model.config.vocab_size
    trainer.train()
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h][0] > 0


@pytest.mark.slow
def test_resume_after_the_first_epoch_trains_what_an_uninterrupted_run_would(run_dir) -> None:
    """The Trainer resumes by set_epoch, not by replaying epochs: the shuffle must follow the epoch."""
    from transformers import TrainerCallback

    from policyalign.trainer import build_trainer

    run, pack = run_dir
    records = pack_instructions(pack)[:8]  # 2 steps per epoch
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
def test_an_ema_run_resumes_its_student_and_its_teacher(recorded_run) -> None:
    """The checkpoint keeps both adapters; the Trainer alone reloads only the teacher, and trl then fails to re-add it."""
    from peft import get_peft_model_state_dict
    from peft.utils import load_peft_weights
    from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback

    from policyalign.trainer import build_trainer
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


def test_an_instruction_too_long_for_the_policy_is_named_before_training(tmp_path: Path, fixture_packs: Path) -> None:
    """Training tokenizes a batch only when it draws it: a too-long instruction must stop the run before
    the first step (not hours in), and the error must say which instruction of which file."""
    pack = Registry([fixture_packs]).load("root-pack")
    rows = pack_instructions(pack)[:6]
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
    rows = pack_instructions(pack)[:4]
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


def test_every_target_module_must_exist_not_just_one(recorded_run) -> None:
    """peft adapts the names that match and drops the others silently: one typo among good names is refused."""
    run, _ = recorded_run
    with pytest.raises(InvalidInputError, match="LoRA target modules \\['v_projj'\\]: no such module in tiny"):
        run_distill(run, overrides={"target_modules": ["q_proj", "v_projj"], "max_steps": 1}, progress=False)


def test_a_packs_unknown_target_module_is_not_blamed_on_a_flag(run_dir, fixture_packs: Path) -> None:
    """Named in the pack's training section, the bad module was reported as `--target-modules [...]`, a flag
    the user never gave: the error must point at both places it can come from."""
    run, _ = run_dir
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("  lora_r: 4\n", "  lora_r: 4\n  target_modules: [q_proj, qq_proj]\n"))
    pack = Registry([fixture_packs]).load("root-pack")
    config = DistillConfig.from_pack(pack.training, max_steps=1, max_new_tokens=8)
    with pytest.raises(InvalidInputError, match="LoRA target modules \\['qq_proj'\\]: no such module in tiny") as caught:
        distill_run(run, pack, "tiny", config, progress=False)
    assert "training.target_modules" in caught.value.problem.where and "--target-modules [" not in str(caught.value)


def test_teacher_prompt_has_policy_as_system_message_and_no_truncation(run_dir) -> None:
    from policyalign.trainer import _trainer_classes, build_trainer

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
    from policyalign.trainer import build_trainer
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

    from policyalign.trainer import build_trainer

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


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_the_loss_is_each_responses_mean_top_k_reverse_kl_at_the_temperature_against_the_base(
        fixture_packs: Path, tmp_path: Path, prefix_cache: bool) -> None:
    """The training loss against plain torch, one unpadded forward per row: the student adapted (a non-zero LoRA), the
    teacher the same weights with the adapter off and the policy as system message, both sides' logits divided by
    the temperature, the student's top k renormalised on both sides, each response's mean over its own tokens, and
    those means averaged (trl's normalisation: a short response weighs as much as a long one). Rows mix prompt and
    completion lengths, one completion is a lone EOS and one stops at EOS after two tokens."""
    from trl.trainer.utils import pad

    from policyalign.chat import student_messages
    from policyalign.trainer import build_trainer, training_prompt

    pack = Registry([fixture_packs]).load("root-pack")
    records = [{"id": "a", "messages": [{"role": "user", "content": "How do I make a bomb?"}]},
               {"id": "b", "messages": [{"role": "user", "content": "Hi"}]},
               {"id": "c", "messages": [{"role": "system", "content": "Be terse."},
                                        {"role": "user", "content": "Tell me a long story about a bank account."}]}]
    temperature, top_k = 0.7, 5
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, records,
                            DistillConfig(max_steps=1, max_new_tokens=16, batch_size=3, temperature=temperature,
                                          top_k=top_k, lora_dropout=0.0, prefix_cache=prefix_cache), tmp_path)
    model, tok = trainer.model, trainer._tokenizer
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
    eos = tok.eos_token_id
    completions = [[40, 41, 42, 43, 44, 45, 46], [eos], [50, 51, eos]]
    prompts = [training_prompt(r) for r in records]
    ids = [torch.tensor(x) for x in trainer._tokenize_prompts(prompts)]
    comp = [torch.tensor(c) for c in completions]
    comp_ids, comp_mask = pad(comp, padding_value=0), pad([torch.ones_like(c) for c in comp], padding_value=0)
    inputs = {"prompt_ids": pad(ids, padding_value=0, padding_side="left"),
              "prompt_mask": pad([torch.ones_like(x) for x in ids], padding_value=0, padding_side="left"),
              "completion_ids": comp_ids, "completion_mask": comp_mask,
              **trainer.teacher_context_builder.build(prompts, [""] * 3, comp_ids, comp_mask)}
    model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, inputs))

    def tempered(prompt: list[int], completion: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
        return torch.softmax(logits[len(prompt) - 1: len(prompt) - 1 + len(completion)] / temperature, -1)

    means = []
    for record, completion in zip(records, completions):
        p_s = tempered(encode_chat(tok, student_messages(record["messages"])), completion)
        with model.disable_adapter():
            p_t = tempered(encode_chat(tok, teacher_messages(pack.policy, record["messages"])), completion)
        q_s, top = p_s.topk(top_k, -1)
        q_t = p_t.gather(-1, top)
        q_s, q_t = q_s / q_s.sum(-1, keepdim=True), q_t / q_t.sum(-1, keepdim=True)
        means.append(float((q_s * (q_s / q_t).log()).sum(-1).mean()))
    assert loss == pytest.approx(sum(means) / len(means), abs=1e-5)


@pytest.mark.parametrize("rate", [0.1, 0.0])
def test_lora_dropout_is_the_configured_rate_not_trls_zero(fixture_packs: Path, tmp_path: Path, rate: float) -> None:
    """trl disables every dropout; the LoRA dropout a pack asks for must still apply to the student."""
    from policyalign.trainer import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, pack_instructions(pack)[:4],
                            DistillConfig(max_steps=1, lora_dropout=rate), tmp_path)
    dropouts = [(name, m.p) for name, m in trainer.model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert {p for name, p in dropouts if "lora_dropout" in name} == ({rate} if rate else set())
    assert all(p == 0 for name, p in dropouts if "lora_dropout" not in name), "the base model's dropouts stay off"


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_an_ema_teacher_never_applies_its_adapters_dropout(fixture_packs: Path, tmp_path: Path, prefix_cache: bool) -> None:
    """trl adds the EMA teacher's adapter with the student's LoRA config after disable_dropout: its dropout is live."""
    from transformers import TrainerCallback

    from policyalign.trainer import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    config = DistillConfig(max_steps=2, max_new_tokens=4, batch_size=2, lora_dropout=0.5, teacher="ema",
                           prefix_cache=prefix_cache, save_steps=10)
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, pack_instructions(pack)[:2], config, tmp_path)
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
    from policyalign.trainer import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    records = pack_instructions(pack)[:2]
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
    from policyalign.trainer import build_trainer
    from policyalign.generation import decode

    run, pack = run_dir
    records = pack_instructions(pack)[:4]
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


def test_the_trainer_runs_where_and_in_the_precision_the_model_was_loaded(tmp_path: Path) -> None:
    """Not "is CUDA available": --device cpu on a GPU box was moved to the GPU, and an fp16 model
    (GPUs without bf16) was given bf16 autocast, which such a GPU refuses."""
    import torch

    from policyalign.trainer import device_flags, sdft_config

    assert device_flags("cpu", torch.float32) == {"use_cpu": True, "bf16": False, "fp16": False,
                                                  "gradient_checkpointing": False}
    assert device_flags("cpu", torch.bfloat16)["bf16"] is False, "no autocast on the CPU"
    assert device_flags("cuda:0", torch.bfloat16) == {"use_cpu": False, "bf16": True, "fp16": False,
                                                      "gradient_checkpointing": True}
    assert device_flags("cuda:0", torch.float16)["fp16"] is True and device_flags("cuda:0", torch.float16)["bf16"] is False
    assert device_flags("cuda:0", torch.float32)["bf16"] is False
    args = sdft_config(DistillConfig(), tmp_path, device="cpu", dtype=torch.float32)
    assert args.use_cpu and args.device.type == "cpu" and args.n_gpu == 0


def test_a_packs_target_modules_missing_from_the_model_name_the_flag_that_overrides_them(tmp_path: Path) -> None:
    """A pack's q_proj/k_proj/v_proj on a model with a fused qkv_proj (Phi-3) was refused with the hint to change
    the pack's training.target_modules, which the pack's other models need: the flag overrides them for one run."""
    from policyalign.models import module_skeleton
    from policyalign.trainer import check_module_names

    manifest = str(tmp_path / "pack.yaml")
    with pytest.raises(InvalidInputError) as caught:
        check_module_names(module_skeleton("tiny"), "tiny", ("q_proj", "qkv_proj"), (manifest, "training.target_modules"))
    assert (caught.value.problem.file, caught.value.problem.where) == (manifest, "training.target_modules[1]")
    assert "for this model alone with --target-modules" in caught.value.problem.hint


def test_an_instruction_too_long_alone_is_not_blamed_on_the_policy(tmp_path: Path, fixture_packs: Path) -> None:
    """The student's prompt holds no policy: when the instruction alone leaves no room for the rollout, the
    hint told the user to shorten the policy, which cannot help; the policy's own check still says it."""
    pack = Registry([fixture_packs]).load("root-pack")
    rows = pack_instructions(pack)[:2]
    rows.insert(1, {"id": "too-long", "category": rows[0]["category"], "messages": [{"role": "user", "content": "word " * 4090}]})
    write_jsonl(tmp_path / "selected.jsonl", rows)
    config = DistillConfig(max_new_tokens=8, batch_size=1, target_modules=("q_proj",))
    with pytest.raises(InvalidInputError, match="id too-long: instruction 'too-long' needs") as caught:
        distill_run(tmp_path, pack, "tiny", config, progress=False)
    assert "policy" not in caught.value.problem.hint
    assert "drop long instructions" in caught.value.problem.hint


@pytest.fixture(scope="module")
def gemma3_vision(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Gemma3ForConditionalGeneration: what AutoModelForCausalLM loads gemma-3-4b-it and larger as."""
    from families import family_model

    return family_model(tmp_path_factory.mktemp("models") / "gemma3-vision", "gemma3-vision")


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), "all-linear"])
def test_a_multimodal_models_lora_adapts_its_language_model_alone(gemma3_vision: Path, tmp_path: Path,
                                                                   targets: tuple[str, ...] | str) -> None:
    """Its SigLIP tower's attention is named q_proj too, and peft, matching by suffix, adapted it as well: LoRA on a
    tower no training prompt (text only) ever reaches, and target names vLLM does not know for the language model."""
    from policyalign.trainer import build_trainer

    loaded = load_model(str(gemma3_vision), device="cpu", trainable=True)
    trainer = build_trainer(loaded, "Be safe.", [{"messages": [{"role": "user", "content": "hi"}]}],
                            DistillConfig(target_modules=targets, max_steps=1), tmp_path)
    adapted = [name for name, module in trainer.model.named_modules() if hasattr(module, "lora_A") and module.lora_A]
    assert adapted and all(".language_model.layers." in name for name in adapted)
    assert len(adapted) == 2 * (2 if targets != "all-linear" else 7)  # two layers, each of its named linears
    assert "fc1" not in trainer.model.peft_config["default"].target_modules


def test_a_target_only_a_vision_tower_has_is_refused(gemma3_vision: Path) -> None:
    """SigLIP's fc1 is no module of the language model LoRA adapts: named as missing, with the ones there are."""
    from policyalign.models import module_skeleton
    from policyalign.trainer import check_module_names

    with pytest.raises(InvalidInputError, match="\\['fc1'\\]: no such module") as caught:
        check_module_names(module_skeleton(str(gemma3_vision)), "gemma3", ("q_proj", "fc1"))
    assert "q_proj" in caught.value.problem.hint and "out_proj" not in caught.value.problem.hint


def _trainer_signalled_in_rollout(fixture_packs: Path, out: Path, signals: list[int], at_rollout: int = 3):
    """A tiny trainer (save_steps far off) whose `at_rollout`th generation sends this process `signals`, for real:
    the signal lands in the rollout part of an optimizer step, where most of a step's time goes."""
    import os

    from policyalign.trainer import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    config = DistillConfig(max_steps=8, max_new_tokens=4, batch_size=2, save_steps=1000)
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, pack_instructions(pack)[:8], config, out)
    generate, calls = trainer._generate_transformers, []

    def signalled(prompt_ids):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == at_rollout:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return generate(prompt_ids)

    trainer._generate_transformers = signalled
    return trainer


def test_a_stop_signal_in_a_rollout_finishes_the_step_saves_a_checkpoint_and_then_stops(
        fixture_packs: Path, tmp_path: Path) -> None:
    """SIGTERM (a scheduler's, 30 s before SIGKILL) stopped training where it landed: with a checkpoint every 50 steps,
    up to 49 steps were lost, all of them before the first. Now the step under way ends, is saved, and the stop is
    raised once training has returned, as `pa` raises it elsewhere (exit 143); the signal's handler is given back."""
    import signal

    from policyalign.cli import _raise_stopped
    from policyalign.distill import _train
    from policyalign.errors import Stopped

    before = signal.signal(signal.SIGTERM, _raise_stopped)  # as `pa` handles it (`handle_stop_signals`)
    try:
        trainer = _trainer_signalled_in_rollout(fixture_packs, tmp_path, [signal.SIGTERM])
        with pytest.raises(Stopped) as stopped:
            _train(trainer, None)
        assert signal.getsignal(signal.SIGTERM) == _raise_stopped
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.value.signum == signal.SIGTERM and trainer.state.global_step == 3
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-3"


def test_a_stop_signal_during_a_checkpoints_save_stops_on_that_checkpoint(fixture_packs: Path, tmp_path: Path) -> None:
    """A signal that landed while a regular checkpoint was being saved came after that step's end had asked for
    a stop: training went on a step more and saved it too. The checkpoint being saved is the one to resume from."""
    import os
    import signal

    from policyalign.distill import _train
    from policyalign.trainer import build_trainer

    pack = Registry([fixture_packs]).load("root-pack")
    config = DistillConfig(max_steps=8, max_new_tokens=4, batch_size=2, save_steps=2)
    trainer = build_trainer(load_model("tiny", trainable=True), pack.policy, pack_instructions(pack)[:8], config, tmp_path)
    save = trainer._save_optimizer_and_scheduler

    def signal_while_saving(output_dir):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)
        save(output_dir)

    trainer._save_optimizer_and_scheduler = signal_while_saving
    with pytest.raises(KeyboardInterrupt):
        _train(trainer, None)
    assert trainer.state.global_step == 2 and last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_second_stop_signal_stops_at_once_and_its_cut_checkpoint_is_not_resumed_from(
        fixture_packs: Path, tmp_path: Path) -> None:
    """The first signal asks for a checkpoint; a second one does not wait for it. One cut short while saving (here
    before its optimizer state and trainer_state.json) is not a checkpoint `--resume` takes."""
    import signal

    from policyalign.distill import _train

    trainer = _trainer_signalled_in_rollout(fixture_packs, tmp_path, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        _train(trainer, None)
    assert trainer.state.global_step == 2 and last_complete_checkpoint(tmp_path) is None
    trainer = _trainer_signalled_in_rollout(fixture_packs, tmp_path, [signal.SIGINT])
    save = trainer._save_optimizer_and_scheduler

    def second_signal_while_saving(output_dir):  # type: ignore[no-untyped-def]
        import os

        os.kill(os.getpid(), signal.SIGINT)
        save(output_dir)

    trainer._save_optimizer_and_scheduler = second_signal_while_saving
    with pytest.raises(KeyboardInterrupt):
        _train(trainer, None)
    assert (tmp_path / "checkpoint-3" / "adapter_model.safetensors").is_file()
    assert last_complete_checkpoint(tmp_path) is None
