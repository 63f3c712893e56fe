"""On-policy self-distillation of the policy into a LoRA adapter, on top of trl's SDFTTrainer.

The student (no policy in context) samples a response; the teacher (the same base model with
the policy as its system message) scores the same tokens; the loss is the per-token reverse
KL(student || teacher) on the student's top-k support (both renormalised there, both sides' logits
divided by the rollout temperature), each response's mean over its tokens averaged over the
responses of an optimizer step, as trl computes it. trl 1.16's `SDFTTrainer` does the
rollouts, the loss, PEFT, EMA teachers, vLLM and accelerate; `PolicySDFTTrainer` changes
three things (see the design notes):

* the policy goes in the teacher's **system** message (trl appends context to the user turn),
  through `chat.teacher_messages`, with tools passed to the chat template;
* prompts are never truncated: a policy plus prompt that does not fit fails before training;
* the teacher forward continues from the policy prefix KV cache of `scoring.py`, computed
  once per teacher version, instead of re-reading the policy for every sample.

`build_trainer` configures it from `DistillConfig` (trl's SDFTConfig, LoRA, the dataset, our
callbacks); trl, peft and transformers are imported only when a trainer is built.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chat import encode_chat, student_messages, teacher_messages
from .checkpoints import save_error
from .errors import InvalidInputError, did_you_mean
from .filtering import instruction_conversation
from .io import make_files_ordinary

if TYPE_CHECKING:
    from .distill_settings import DistillConfig
    from .models import LoadedModel


def _silence_trl_experimental() -> None:
    """Call before importing trl.experimental: its import warns that its APIs may change, which `pa`'s
    users cannot act on (pyproject.toml pins the trl version whose API this module uses)."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@lru_cache(maxsize=1)
def _teacher_context_builder_class() -> type:
    """`PolicyTeacherContextBuilder`, built lazily so that importing this module does not import trl."""
    _silence_trl_experimental()
    import torch
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder
    from trl.trainer.utils import pad

    class PolicyTeacherContextBuilder(DemonstrationTeacherContextBuilder):
        """Teacher prompt = the policy as system message + the instruction's own turns (and tools)."""

        def _compose_teacher_prompt(self, prompt: Any, privileged_context: Any) -> Any:
            conv = json.loads(prompt)
            return json.dumps({**conv, "messages": teacher_messages(self.trainer.policy, conv["messages"])})

        def build(self, prompts, privileged_contexts, completion_ids, completion_mask):  # type: ignore[no-untyped-def]
            teacher = [self._compose_teacher_prompt(p, None) for p in prompts]
            ids = [torch.tensor(x) for x in self.trainer._tokenize_prompts(
                teacher, what="the policy plus instruction", with_policy=True)]
            pad_id = self.trainer._tokenizer.pad_token_id
            device = completion_ids.device
            prompt_ids = pad(ids, padding_value=pad_id, padding_side="left").to(device)
            prompt_mask = pad([torch.ones_like(x) for x in ids], padding_value=0, padding_side="left").to(device)
            return {"teacher_input_ids": torch.cat([prompt_ids, completion_ids], 1),
                    "teacher_attention_mask": torch.cat([prompt_mask, completion_mask], 1)}

    return PolicyTeacherContextBuilder


@lru_cache(maxsize=1)
def _epoch_repeat_sampler_class() -> type:
    """`EpochRepeatSampler`, built lazily so that importing this module does not import trl."""
    import torch
    from trl.trainer.utils import RepeatSampler

    class EpochRepeatSampler(RepeatSampler):
        """trl's RepeatSampler, whose shuffle depends on the epoch rather than on how many epochs this process ran.

        Stock draws each epoch's order from one generator seeded once, and the Trainer resumes
        by calling `set_epoch` (which stock lacks) instead of replaying the finished epochs: a
        run resumed after its first epoch would repeat the first epoch's order. Replaying the
        earlier epochs' draws here gives exactly the order an uninterrupted run sees.
        """

        def set_epoch(self, epoch: int) -> None:
            if not self.shuffle or self.seed is None:
                return
            self.generator.manual_seed(self.seed)
            for _ in range(epoch):
                torch.randperm(self.num_samples, generator=self.generator)

    return EpochRepeatSampler


@lru_cache(maxsize=1)
def _trainer_classes() -> tuple[type, type]:
    """(PolicySDFTTrainer, PolicyTeacherContextBuilder), built lazily: importing this module imports no trl."""
    _silence_trl_experimental()
    import torch
    from trl.experimental.sdft import SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DistillationLogits

    from .generation import RowSampler, decode, request_seed
    from .models import merged_adapter
    from .scoring import PrefixCache, eval_mode, teacher_completion_logits

    PolicyTeacherContextBuilder, EpochRepeatSampler = _teacher_context_builder_class(), _epoch_repeat_sampler_class()

    class PolicySDFTTrainer(SDFTTrainer):
        """SDFTTrainer with the policy as system message, no truncation and a teacher prefix cache."""

        def __init__(self, *args: Any, policy: str, context_limit: int, prefix_cache: bool = True, **kwargs: Any):
            self.policy = policy
            self.context_limit = context_limit
            super().__init__(*args, **kwargs)
            self.teacher_context_builder = PolicyTeacherContextBuilder(self)
            self.prefix = PrefixCache.for_policy(self._tokenizer, policy) if prefix_cache else None
            self._prefix_version = self._teacher_version()
            self._restore_lora_dropout()

        def _restore_lora_dropout(self) -> None:
            """Give the student's LoRA dropout back the rate its config asks for.

            trl's `disable_dropout` (on by default, as the method wants for the base model) zeroes
            every dropout, the LoRA ones included, which made a pack's `lora_dropout` a silent no-op.
            Rollouts and teacher forwards run in eval mode, so only the training forward uses it.
            """
            config = getattr(self.model, "peft_config", {}).get("default")
            if config is None or not config.lora_dropout:
                return
            for module in self.model.modules():
                layers = getattr(module, "lora_dropout", None)
                if isinstance(layers, torch.nn.ModuleDict) and "default" in layers \
                        and isinstance(layers["default"], torch.nn.Dropout):
                    layers["default"].p = config.lora_dropout

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            """A checkpoint the disk refuses is a RunError naming it: torch.save on a full disk raised a
            bare `RuntimeError: [enforce fail at inline_container.cc] unexpected pos` from mid-training."""
            try:
                super()._save_checkpoint(model, trial)
            except Exception as exc:  # torch, safetensors and tokenizers each raise their own on a full disk
                raise save_error(exc, Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}") from exc

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            self._restore_ema_teacher(Path(resume_from_checkpoint))

        def restore_finished(self, checkpoint: Path) -> None:
            """Take the weights and state of a checkpoint that has trained every planned step, instead
            of training on from it: resumed at its last step, the Trainer runs one step past
            max_steps (it checks the limit after a step), so a run stopped after its final
            checkpoint (while measuring or saving) came back one step longer than its settings."""
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights
            from transformers import TrainerState

            # The student is at the checkpoint's root (an EMA run's teacher, in a subfolder, is not needed
            # any more): loaded directly, as the Trainer given a subfolder would load only that.
            set_peft_model_state_dict(self.accelerator.unwrap_model(self.model),
                                      load_peft_weights(str(checkpoint), device=str(self.accelerator.device)),
                                      adapter_name="default")
            self.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if checkpoint is not None and self._on_indexed_cpu():
                self._load_optimizer_and_scheduler_on_cpu(Path(checkpoint))
            else:
                super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                follow_schedule(self.optimizer, self.lr_scheduler)

        def _on_indexed_cpu(self) -> bool:
            """Whether this process trains on the CPU as one of several (`cpu:RANK`), not sharded (FSDP, DeepSpeed)."""
            device = self.args.device
            return (device.type == "cpu" and device.index is not None and self.args.world_size > 1
                    and not (self.is_fsdp_enabled or self.is_deepspeed_enabled))

        def _load_optimizer_and_scheduler_on_cpu(self, checkpoint: Path) -> None:
            """The Trainer's own loading, onto the plain CPU: with several processes it maps the optimizer
            state onto `args.device`, there `cpu:RANK`, which torch.load cannot restore to, so `--resume`
            under torchrun on the CPU ended in "don't know how to restore data location ... (tagged with cpu:0)"."""
            from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

            self.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(checkpoint / SCHEDULER_NAME, map_location="cpu",
                                                         weights_only=True))

        def _restore_ema_teacher(self, checkpoint: Path) -> None:
            """Take an EMA run's two adapters back from its checkpoint.

            The checkpoint keeps the student at its root and trl's `teacher` adapter in a
            subfolder. Given a subfolder, the Trainer loads only that, so the student would go on
            from its initial weights; and trl's EMA callback would add `teacher` a second time at
            train begin (a ValueError) and restart its average from zero.
            """
            from peft import get_peft_model_state_dict, set_peft_model_state_dict
            from peft.utils import load_peft_weights
            from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback

            ema = next((c for c in self.callback_handler.callbacks if isinstance(c, PEFTAdapterEMACallback)), None)
            net = self.accelerator.unwrap_model(self.model)
            if ema is None or ema.teacher_adapter_name not in getattr(net, "peft_config", {}):
                return
            set_peft_model_state_dict(net, load_peft_weights(str(checkpoint), device=str(self.accelerator.device)),
                                      adapter_name="default")
            teacher = get_peft_model_state_dict(net, adapter_name=ema.teacher_adapter_name)
            ema.teacher_adapter_config = net.peft_config[ema.teacher_adapter_name]
            ema.shadow_weights = {k: v.detach().clone() for k, v in teacher.items()}
            ema._initialized = True

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            stock = super()._get_train_sampler(dataset)
            stock.__class__ = EpochRepeatSampler  # same state, plus set_epoch
            return stock

        def _tokenize_prompts(self, prompts: list[Any], what: str = "instruction", file: Path | None = None,
                              where: str = "", with_policy: bool = False) -> list[list[int]]:
            out = []
            for prompt in prompts:
                conv = json.loads(prompt)
                ids = encode_chat(self._tokenizer, student_messages(conv["messages"]), conv.get("tools") or None,
                                  file=str(file) if file else "", where=where)
                need = len(ids) + (self.max_completion_length or 0)
                if need > self.context_limit:
                    # The student's prompt holds no policy: "shorten the policy" sent its user to the wrong file.
                    shorten = "shorten the policy, " if with_policy else ""
                    raise InvalidInputError(
                        f"{what} needs {need} tokens (prompt + max_new_tokens) but the model fits {self.context_limit}",
                        file=str(file) if file else "", where=where,
                        hint=f"{shorten}drop long instructions, lower --max-new-tokens, or use a longer-context model")
                out.append(ids)
            return out

        def check_prompts_fit(self, records: list[dict[str, Any]], file: Path) -> None:
            """Fail before training, naming the instruction, when a prompt leaves no room for its rollout.

            Training tokenizes each batch only when it draws it, so an instruction too long for
            the policy plus --max-new-tokens (filtering checked a shorter response, or none for
            a hand-made selected.jsonl) would stop the run at whatever step reached it, without
            saying which one.
            """
            for record in records:
                prompt = training_prompt(record)
                name, where = f"instruction {record['id']!r}", f"id {record['id']}"
                self._tokenize_prompts([prompt], what=name, file=file, where=where)
                self._tokenize_prompts([self.teacher_context_builder._compose_teacher_prompt(prompt, None)],
                                       what=f"the policy plus {name}", file=file, where=where, with_policy=True)

        def _generate_transformers(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
            """Rollouts from the student as it is, decoded fast: eval mode, adapter merged, `generation.decode`.

            Stock decodes with `model.generate` through the unmerged, train-mode PEFT model, and
            rollouts are most of a training step (83-94% measured). Each row samples from its own
            stream (`_rollout_sampler`), so a resumed run draws what an uninterrupted one would have. Sampling settings our loop does not implement, and FSDP or DeepSpeed
            (sharded weights), go to stock's path.
            """
            args = self.args
            sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
            if sharded or args.generation_kwargs or args.cache_implementation or (args.top_k or 0) > 0 \
                    or args.min_p is not None or args.repetition_penalty != 1.0:
                with eval_mode(self.model):  # trl samples in train mode, with the LoRA dropout we keep on
                    return super()._generate_transformers(prompt_ids)
            from trl.models import unwrap_model_for_generation

            sampler = self._rollout_sampler(len(prompt_ids))
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                             gather_deepspeed3_params=args.ds3_gather_for_generation) as net, \
                    eval_mode(net), merged_adapter(net) as merged, torch.inference_mode():
                decoder = net.get_base_model() if merged else net  # merged, the PEFT wrapper only forwards calls
                completions = decode(decoder, prompt_ids, max_new_tokens=self.max_completion_length,
                                     eos_ids=self.eos_token_ids, pad_id=self._tokenizer.pad_token_id, sampler=sampler)
            return prompt_ids, completions

        def _rollout_sampler(self, rows: int) -> RowSampler | None:
            """This step's per-row sampler (None = greedy), seeded by (seed, optimizer step, the row's place in
            the step's whole batch over all processes).

            Each rank rolls out its block of that batch (rank r: rows r x `rows` on), so an instruction
            samples the same whether 1 process draws 8 rows a step or 2 draw 4 each: seeded by (step, rank,
            row), the same run launched on 2 processes trained on other rollouts, and ended with another
            adapter, than on 1 process with the same batch per step. A single process seeds as it did.
            """
            if self.temperature <= 0:
                return None
            step = request_seed(self.args.seed, self.state.global_step)
            first = self.accelerator.process_index * rows
            return RowSampler([request_seed(step, first + i) for i in range(rows)], self.temperature,
                              self.args.top_p, self.accelerator.device)

        def _teacher_version(self) -> int:
            """Changes whenever the teacher's weights may have changed (never for a frozen base teacher)."""
            return 0 if self.args.teacher_model_kind == "base" else self.state.global_step

        def _compute_teacher_student_logits(self, model, teacher_model, inputs):  # type: ignore[no-untyped-def]
            # Without the prefix cache too: stock forwards the teacher in train mode, and an EMA
            # teacher's adapter (added by trl after disable_dropout) has the configured LoRA dropout.
            # Both in float32, as scoring.py computes the same divergence: trl computes the loss in the
            # logits' dtype, and bf16 log-probs (3 significant digits; a bf16 model on a GPU, whose
            # teacher forward autocast does not convert) turned the KL of a student close to its
            # teacher into noise, negative on some tokens, just where training converges.
            completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
            steps = completion_ids.size(1)
            student = self._forward_logits(model, torch.cat([inputs["prompt_ids"], completion_ids], 1),
                                           torch.cat([inputs["prompt_mask"], completion_mask], 1), steps).float()
            with torch.no_grad(), self._get_teacher_context_for_self_distillation():
                teacher = self._teacher_logits(teacher_model, inputs, steps)
            loss_mask = completion_mask
            if self.num_loss_tokens_to_skip > 0:
                positions = torch.arange(steps, device=completion_mask.device).unsqueeze(0)
                loss_mask = completion_mask * (positions >= self.num_loss_tokens_to_skip).long()
            return DistillationLogits(completion_ids, loss_mask, student, teacher)

        def _teacher_logits(self, teacher_model: Any, inputs: dict[str, Any], steps: int) -> Any:
            version = self._teacher_version()
            if self.prefix is not None and version != self._prefix_version:
                self.prefix.invalidate()
                self._prefix_version = version
            net = self.accelerator.unwrap_model(teacher_model)
            width = inputs["teacher_input_ids"].size(1) - steps
            rows = inputs["teacher_input_ids"][:, :width].tolist()
            masks = inputs["teacher_attention_mask"][:, :width].tolist()
            prompts = [[t for t, m in zip(r, mk) if m] for r, mk in zip(rows, masks)]
            completions = [ids[:n] for ids, n in zip(inputs["completion_ids"].tolist(),
                                                     inputs["completion_mask"].sum(1).tolist())]
            completions = [c if c else [self._tokenizer.pad_token_id] for c in completions]
            logits = teacher_completion_logits(net, prompts, completions, pad_id=self._tokenizer.pad_token_id,
                                               prefix=self.prefix).logits
            if logits.size(1) < steps:
                logits = torch.nn.functional.pad(logits, (0, 0, 0, steps - logits.size(1)))
            return logits[:, :steps].float() / self.temperature  # float32: see _compute_teacher_student_logits

    return PolicySDFTTrainer, PolicyTeacherContextBuilder


def kl_support(top_k: int, vocab_size: int | None) -> int:
    """trl's `distillation_topk` for our `top_k`: 0, or more than the vocabulary, means the whole vocabulary.

    That is what `scoring.reverse_kl_topk` (filtering, internalization) does; trl instead takes
    k literally, so 0 trains on a zero loss and k > vocabulary fails inside torch.topk.
    """
    if vocab_size is None:
        return top_k
    return min(top_k, vocab_size) if top_k > 0 else vocab_size


def follow_schedule(optimizer: Any, scheduler: Any) -> None:
    """Set the learning rate a resumed run trains its next step with from this run's schedule.

    A checkpoint stores the rate its own schedule set for the step after it. Continued with a
    larger --max-steps, that is the old schedule's: after 2 of 2 steps of linear decay it is 0,
    so resuming to 3 steps trained step 3 at rate 0 and changed nothing, and every longer
    continuation lost its first step. The rest of the continuation already followed the new
    schedule; now its first step does too. After a crash (same settings) the rate is the same.
    """
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, if any
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or len(lambdas) != len(optimizer.param_groups):
        return  # not a LambdaLR (all of transformers' named schedules are): leave it as loaded
    rates = [base * rate(scheduler.last_epoch) for base, rate in zip(scheduler.base_lrs, lambdas)]
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr
    scheduler._last_lr = rates


def sdft_config(config: DistillConfig, output_dir: Path, *, device: str, dtype: Any, report_to: str | list[str] = "none",
                vocab_size: int | None = None) -> Any:
    """The trl SDFTConfig for our settings (the paper's reverse-KL top-k objective), on the model's device."""
    _silence_trl_experimental()
    from trl.experimental.sdft import SDFTConfig

    args = SDFTConfig(
        output_dir=str(output_dir), learning_rate=config.learning_rate, num_train_epochs=config.num_epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, num_generations=1,
        max_completion_length=config.max_new_tokens, max_prompt_length=None, temperature=config.temperature,
        top_p=1.0, top_k=0, distillation_mode="topk_logits", distillation_topk=kl_support(config.top_k, vocab_size),
        distillation_alpha=config.alpha, teacher_model_kind=config.teacher,
        teacher_update_rate=config.ema_decay, seed=config.seed, logging_steps=config.logging_steps,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=1, report_to=report_to,
        use_vllm=config.use_vllm, vllm_mode="colocate", **device_flags(device, dtype),
        remove_unused_columns=False, shuffle_dataset=True, disable_tqdm=True, dataloader_num_workers=0,
        # With several processes, the others wait in a collective while rank 0 measures
        # internalization before and after training: allow that longer than the 30-minute default.
        ddp_timeout=4 * 3600,
    )
    if args.n_gpu > 1:
        # One process sees several GPUs: the Trainer would wrap the model in nn.DataParallel (and
        # multiply the batch), which our teacher forward and rollouts do not go through. Several
        # GPUs train through torchrun/accelerate (one process each); transformers forces the same
        # for model-parallel models.
        args._n_gpu = 1
    return args


def device_flags(device: str, dtype: Any) -> dict[str, Any]:
    """The Trainer's device and precision settings from where and how the model was loaded.

    Not from "is CUDA available": `--device cpu` on a GPU machine would have been moved to the
    GPU, and bf16 autocast asked of a GPU without bf16 (where models load in fp16) fails.
    """
    import torch

    on_gpu = str(device).startswith("cuda")
    return {"use_cpu": not on_gpu, "bf16": on_gpu and dtype == torch.bfloat16,
            "fp16": on_gpu and dtype == torch.float16, "gradient_checkpointing": on_gpu}


def lora_config(config: DistillConfig, model: Any = None) -> Any:
    """The student's LoRA: no bias terms, so the base weights stay untouched and the adapter is the
    whole difference (the `base` teacher is the same model with the adapter disabled).

    Given the `model`, only its language model is adapted (`beside_language_model`): a multimodal one
    (Gemma 3 4B and up loads as Gemma3ForConditionalGeneration) also holds a vision tower whose attention
    is named `q_proj` too, and peft, matching names by suffix, adapted it as well, with no image ever seen.
    There `all-linear` is resolved here, to the language model's linear layers: peft's own resolution
    recorded the vision tower's `fc1`, `fc2` and `out_proj` as targets in adapter_config.json (and the card),
    names vLLM does not know for the language model."""
    from peft import LoraConfig

    from .models import unwrapped

    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    beside = beside_language_model(unwrapped(model)) if model is not None else []
    if beside and isinstance(targets, str):
        targets = linear_module_names(unwrapped(model))
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none", exclude_modules=outside_pattern(beside))


def beside_language_model(model: Any) -> list[str]:
    """The modules of `model` that hold linear layers and are no part of its language model (a vision
    tower, an audio tower, a projector), by name, outermost only; none for a text-only model.

    The language model is what `get_decoder` finds (`model.language_model` in a multimodal model,
    `model` in a text-only one); the output head is the language model's own."""
    import torch

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    names = {id(module): name for name, module in model.named_modules()}
    inside = names.get(id(decoder))
    if not inside:  # not found, or the model is its own decoder
        return []
    ancestors = {inside.rsplit(".", i)[0] for i in range(inside.count(".") + 1)}
    roots = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or name.startswith(inside + "."):
            continue
        parts = name.split(".")
        roots.add(next(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in ancestors))
    return sorted(roots)


def outside_pattern(roots: list[str]) -> str | None:
    """peft's `exclude_modules` for the modules under `roots` (a regex it matches against whole module
    names); None where there are none, so a text-only model's adapter_config.json is as it was."""
    import re

    return f"(?:{'|'.join(re.escape(root) for root in roots)})\\..*" if roots else None


def training_dataset(records: list[dict[str, Any]]) -> Any:
    """trl's rows: the conversation as a JSON string (Arrow cannot hold arbitrary tool schemas)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": training_prompt(r), "privileged_context": ""} for r in records])


def training_prompt(record: dict[str, Any]) -> str:
    """One instruction as the trainer's prompt column holds it: its conversation (and tools) as JSON."""
    return json.dumps(instruction_conversation(record))


# Where LoRA targets come from when the caller does not say: a flag, or else the pack.
TARGETS_FROM = ("", "--target-modules, else the pack's training.target_modules")


def build_trainer(loaded: "LoadedModel", policy: str, records: list[dict[str, Any]], config: DistillConfig,
                  output_dir: Path, *, trainer_cls: type | None = None, progress: bool = False,
                  report_to: tuple[str, ...] = (), targets_from: tuple[str, str] = TARGETS_FROM) -> Any:
    """Our trainer on `loaded` (or `trainer_cls`, stock trl for the benchmark, given the same model,
    data and settings), with the target modules checked before trl wraps the model in PEFT, where a
    misspelt module would surface as an error far from the option that named it. `report_to` names
    the reporting integrations (`tracking.report_targets`), none by default; `targets_from` (file, place)
    where the target modules were written, for the error naming a misspelt one."""
    from .models import max_context

    from transformers.trainer_callback import PrinterCallback

    cls = trainer_cls or _trainer_classes()[0]
    kwargs: dict[str, Any] = {}
    if trainer_cls is None:
        kwargs = {"policy": policy, "context_limit": max_context(loaded), "prefix_cache": config.prefix_cache}
    head = loaded.model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else loaded.model.config.get_text_config().vocab_size
    check_target_modules(loaded, config.target_modules, targets_from)
    args = sdft_config(config, output_dir, device=loaded.device, dtype=loaded.dtype,
                       report_to=list(report_to) or "none", vocab_size=vocab)
    trainer = cls(model=loaded.model, args=args,
                  train_dataset=training_dataset(records), processing_class=loaded.tokenizer,
                  peft_config=lora_config(config, loaded.model), **kwargs)
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; progress has its own bar
    trainer.add_callback(_ordinary_checkpoints_callback())
    trainer.add_callback(_stop_after_step_callback())
    if progress:
        trainer.add_callback(_progress_callback())
    return trainer


def check_target_modules(loaded: "LoadedModel", targets: tuple[str, ...] | str,
                         named_in: tuple[str, str] = TARGETS_FROM) -> None:
    """Every named LoRA target must be a module of the model, as peft matches it (the name, or a dotted suffix).

    peft adapts whatever matches and drops the other names without a word, failing only when
    none matches: `--target-modules q_proj,v_projj` trained q_proj alone.
    """
    check_module_names(loaded.model, loaded.ref.name, targets, named_in)


def check_module_names(model: Any, model_name: str, targets: tuple[str, ...] | str,
                       named_in: tuple[str, str] = TARGETS_FROM) -> None:
    """`check_target_modules` on any model, a weightless one included (`models.module_skeleton`), the error
    naming `named_in` (file, place: a pack's `training.target_modules`, a flag) with the first bad entry's index:
    `pa validate` cannot know the model's modules, so this is where a pack's typo is first caught."""
    if isinstance(targets, str):  # all-linear
        return
    names = adaptable_module_names(model)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        file, where = named_in
        if file:  # a list in a file: point at the entry, as `pa validate` does
            where = f"{where}[{list(targets).index(missing[0])}]"
        # A pack's targets suit the models it was written for; one whose modules are named otherwise (Phi-3's
        # fused qkv_proj) needs them overridden for this run, not the pack (shared, installed) edited for all.
        place = f"in {named_in[1]}, or for this model alone with --target-modules" if file \
            else "on the command line or in the pack"
        linear = linear_module_names(model)
        close = did_you_mean(missing[0], linear)
        raise InvalidInputError(f"LoRA target modules {missing!r}: no such module in {model_name}",
                                file=file, where=where,
                                hint=(f"{close} " if close else "") + f"adapt some of {', '.join(linear)} "
                                     f"(or all-linear), {place}")


def linear_module_names(model: Any) -> list[str]:
    """The names LoRA can target in `model`: its linear layers, the output head aside."""
    import torch

    head = model.get_output_embeddings()
    adaptable = set(adaptable_module_names(model))
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head and name in adaptable})


def adaptable_module_names(model: Any) -> list[str]:
    """The names of `model`'s modules that LoRA may adapt: all but those beside its language model
    (`beside_language_model`), so a target only a vision tower has is refused as missing."""
    roots = tuple(root + "." for root in beside_language_model(model))
    return [name for name, _ in model.named_modules() if not (name + ".").startswith(roots)]


def _ordinary_checkpoints_callback() -> Any:
    """Make each checkpoint's files ordinary files: safetensors writes its weights owner-only, and
    whoever shares the run directory must be able to `--resume` from them."""
    from transformers import TrainerCallback

    class OrdinaryCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero:
                make_files_ordinary(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return OrdinaryCheckpoints()


def _progress_callback() -> Any:
    """A rich progress bar over optimizer steps showing the current distillation loss."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import TrainerCallback

    from .progress import stderr_console

    class RichProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.bar = Progress(TextColumn("distilling"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                TimeElapsedColumn(), console=stderr_console())
            self.task = self.bar.add_task("distill", total=state.max_steps, completed=state.global_step, loss="")
            self.bar.start()

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                self.bar.update(self.task, loss=f"loss {float(logs['loss']):.4f}")

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.bar.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.bar.stop()

    return RichProgress()


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _stop_after_step_callback() -> Any:
    """`StopAfterStep`: made here, as the other callbacks are, so that importing this module does not import transformers."""
    from transformers import TrainerCallback

    class StopAfterStep(TrainerCallback):
        """Ctrl-C, SIGTERM or SIGHUP during training finishes the optimizer step under way, saves a checkpoint
        and then stops as `pa` stops on them elsewhere (`stopped`).

        They stopped training where they landed, and the last checkpoint was up to `save_steps - 1` steps
        old (49 by default): a job a scheduler stopped (SIGTERM, some 30 s before SIGKILL) and requeued
        trained those again, or from the start when it had none. The signal only notes the stop; the step
        ends (its rollout included), every rank agrees on it at the step's end (`_stop_requested`) and the
        Trainer saves its ordinary checkpoint, the one `--resume` restores; one that lands while a regular checkpoint is
        saved stops on that checkpoint. A second signal stops at once:
        the checkpoint it cuts short has no trainer_state.json and `--resume` skips it. Not under torchrun
        (or `accelerate launch`): its agent passes on the signal it gets, so a worker that got one itself (Ctrl-C
        reaches the whole process group, Slurm signals every process) gets it twice; there the launcher's own
        SIGKILL, 30 s after it passed the signal on, is the stop at once. Signals ignored (SIGHUP under nohup, SIGINT in a background job) stay ignored."""

        def __init__(self) -> None:
            self.signum = 0
            self.main = self.at_once = True
            self._previous: dict[int, Any] = {}

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            import os
            import signal
            import threading

            from .cli import say

            self.signum, self.main, self._say = 0, state.is_world_process_zero, say
            self.at_once = "TORCHELASTIC_RUN_ID" not in os.environ  # a second signal is not the launcher's echo
            if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
                return
            for name in STOP_SIGNALS:
                signum = getattr(signal, name)
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._note)

        def _note(self, signum: int, frame: Any) -> None:
            import signal

            from .errors import stop_exception

            if self.signum:
                if self.at_once:
                    raise stop_exception(signum)
                return
            self.signum = signum
            if self.main:
                again = "send it again to stop at once" if self.at_once else "the launcher stops it at once 30 s on"
                self._say(f"\n{signal.Signals(signum).name}: finishing this training step and saving a checkpoint; "
                          f"{again}\n")

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self._agreed(args):
                control.should_save = control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            """A signal that landed while a regular checkpoint was saved stops on it: it came after the step's
            `on_step_end` had asked, and training went on a step more and saved that one too."""
            if self._agreed(args):
                control.should_training_stop = True

        def _agreed(self, args: Any) -> bool:
            """Whether any rank was told to stop (`_stop_requested`: every rank stops, whichever was told)."""
            agreed = _stop_requested(self.signum, args.device)
            if agreed:  # not written back otherwise: a signal landing after the read would be lost
                self.signum = self.signum or agreed
            return bool(agreed)

        def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.restore()

        def restore(self) -> None:
            """Give the signals back their handlers: the stop is raised once training has returned (`stopped`)."""
            import signal

            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous = {}

        def stopped(self) -> KeyboardInterrupt | None:
            """The KeyboardInterrupt (or `Stopped`) to raise for the stop noted during training, if any."""
            from .errors import stop_exception

            return stop_exception(self.signum) if self.signum else None

    return StopAfterStep()


def _stop_requested(signum: int, device: Any) -> int:
    """The stop signal any rank was told (0: none): under torchrun a signal may reach one rank only (or each at a different
    step), and a rank saving alone waits forever in the save's collectives. One all-reduced scalar a step (and a save)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return signum
    import torch

    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def stop_callback(trainer: Any) -> Any:
    """The trainer's `StopAfterStep` (`build_trainer` adds one to every trainer)."""
    return next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "StopAfterStep")
