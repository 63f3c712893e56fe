"""On-policy self-distillation of the policy into a LoRA adapter, on top of trl's SDFTTrainer.

The student (no policy in context) samples a response; the teacher (the same base model with
the policy as its system message) scores the same tokens; the loss is the per-token reverse
KL(student || teacher) on the student's top-k support. trl 1.16's `SDFTTrainer` does the
rollouts, the loss, PEFT, EMA teachers, vLLM and accelerate; `PolicySDFTTrainer` changes
three things (see the design notes):

* the policy goes in the teacher's **system** message (trl appends context to the user turn),
  through `chat.teacher_messages`, with tools passed to the chat template;
* prompts are never truncated: a policy plus prompt that does not fit fails before training;
* the teacher forward continues from the policy prefix KV cache of `scoring.py`, computed
  once per teacher version, instead of re-reading the policy for every sample.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .chat import encode_chat, student_messages, teacher_messages
from .errors import InvalidInputError, RunError
from .io import atomic_open, make_files_ordinary, read_json, write_json

if TYPE_CHECKING:
    from .models import LoadedModel
    from .pack import Pack

PIN_TRL = "1.16.0"


@dataclass(frozen=True)
class DistillConfig:
    """Training settings: defaults follow the paper; the pack's `training` section and the CLI override."""

    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 1e-4
    num_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 256
    alpha: float = 1.0  # 1.0 = reverse KL(student || teacher)
    teacher: str = "base"
    ema_decay: float = 0.05
    seed: int = 0
    prefix_cache: bool = True
    use_vllm: bool = False
    save_steps: int = 50
    logging_steps: int = 1

    def __post_init__(self) -> None:
        """Numbers take the type of their default: `lora_r: 4.0` (which the schema's "integer" admits) would
        crash peft, and `--lora-alpha 8` (a float) must key the same run as a pack's `lora_alpha: 8`."""
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(value, bool) or isinstance(default, bool):
                continue
            if isinstance(default, int) and isinstance(value, float) and value.is_integer():
                object.__setattr__(self, f.name, int(value))
            elif isinstance(default, float) and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def from_pack(cls, training: Mapping[str, Any], **overrides: Any) -> "DistillConfig":
        """Pack defaults, then non-None command-line overrides; unknown keys are ignored (schema-checked)."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in overrides.items() if v is not None}
        check_settings(training, from_command_line=False)
        check_settings(given, from_command_line=True)
        # --epochs given alone sets the length: the pack's max_steps would cap it (the default -1 does not)
        config = cls(**under_given(
            {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in training.items() if k in names},
            {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items()}))
        if config.teacher not in ("base", "ema"):
            raise InvalidInputError(f"unknown teacher {config.teacher!r}", hint="use base or ema")
        if config.save_steps < 1:
            raise InvalidInputError(f"--save-steps {config.save_steps}: must be at least 1",
                                    hint="checkpoint every N >= 1 optimizer steps")
        return config


def under_given(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`base` settings (a checkpoint's, a model's demo defaults) with `given` ones over them, where
    `num_epochs` given without `max_steps` also drops base's `max_steps`: trainers stop at max_steps
    whatever the epochs, so `--resume --epochs 3` after a `--max-steps 20` run trained nothing."""
    dropped = ("max_steps",) if "num_epochs" in given and "max_steps" not in given else ()
    return {**{k: v for k, v in base.items() if k not in dropped}, **given}


# Command-line flags whose name differs from the training setting they override.
FLAGS = {"learning_rate": "--lr", "num_epochs": "--epochs", "gradient_accumulation_steps": "--grad-accum",
         "top_k": "--kl-top-k"}


def check_settings(settings: Mapping[str, Any], *, from_command_line: bool) -> None:
    """Hold training settings to the bounds the pack schema sets, wherever they come from.

    Loading a pack validates its `training` section, but command-line overrides (and settings
    built in code) would otherwise get past it: a `--batch-size 0` or `--temperature 0` then
    fails deep inside trl, peft or the sampler instead of here, with the flag named.
    """
    bad = setting_error(settings)
    if bad is None:
        return
    name, plain, message = bad
    if from_command_line:
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        raise InvalidInputError(f"{flag} {plain!r}: {message}",
                                hint=f"give {flag} a value the pack schema allows for training.{name}")
    raise InvalidInputError(f"training.{name} {plain!r}: {message}",
                            hint=f"fix training.{name} in the pack (see schemas/pack.schema.json)")


def setting_error(settings: Mapping[str, Any]) -> tuple[str, Any, str] | None:
    """(setting, value, what is wrong) for the first setting outside the pack schema's bounds; the
    caller names it the way its user wrote it (a flag, a pack key, a config-file key)."""
    from jsonschema import Draft202012Validator

    from .schema import schema_text

    properties = json.loads(schema_text("pack.schema.json"))["properties"]["training"]["properties"]
    for name, value in settings.items():
        if name not in properties:
            continue
        plain = list(value) if isinstance(value, tuple) else value
        error = next(Draft202012Validator(properties[name]).iter_errors(plain), None)
        if error is not None:
            return name, plain, error.message
    return None


# --------------------------------------------------------------------------- the trainer


@lru_cache(maxsize=1)
def _trainer_classes() -> tuple[type, type]:
    """Build the trl subclasses lazily, so importing this module does not import trl."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from trl.experimental.sdft import SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder, DistillationLogits
    from trl.trainer.utils import RepeatSampler, pad

    from .generation import RowSampler, decode, request_seed
    from .models import merged_adapter
    from .scoring import PrefixCache, eval_mode, teacher_completion_logits

    class PolicyTeacherContextBuilder(DemonstrationTeacherContextBuilder):
        """Teacher prompt = the policy as system message + the instruction's own turns (and tools)."""

        def _compose_teacher_prompt(self, prompt: Any, privileged_context: Any) -> Any:
            conv = json.loads(prompt)
            return json.dumps({**conv, "messages": teacher_messages(self.trainer.policy, conv["messages"])})

        def build(self, prompts, privileged_contexts, completion_ids, completion_mask):  # type: ignore[no-untyped-def]
            teacher = [self._compose_teacher_prompt(p, None) for p in prompts]
            ids = [torch.tensor(x) for x in self.trainer._tokenize_prompts(teacher, what="the policy plus instruction")]
            pad_id = self.trainer._tokenizer.pad_token_id
            device = completion_ids.device
            prompt_ids = pad(ids, padding_value=pad_id, padding_side="left").to(device)
            prompt_mask = pad([torch.ones_like(x) for x in ids], padding_value=0, padding_side="left").to(device)
            return {"teacher_input_ids": torch.cat([prompt_ids, completion_ids], 1),
                    "teacher_attention_mask": torch.cat([prompt_mask, completion_mask], 1)}

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
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                follow_schedule(self.optimizer, self.lr_scheduler)

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

        def _tokenize_prompts(self, prompts: list[Any], what: str = "instruction",
                              file: Path | None = None, where: str = "") -> list[list[int]]:
            out = []
            for prompt in prompts:
                conv = json.loads(prompt)
                ids = encode_chat(self._tokenizer, student_messages(conv["messages"]), conv.get("tools") or None,
                                  file=str(file) if file else "", where=where)
                need = len(ids) + (self.max_completion_length or 0)
                if need > self.context_limit:
                    raise InvalidInputError(
                        f"{what} needs {need} tokens (prompt + max_new_tokens) but the model fits {self.context_limit}",
                        file=str(file) if file else "", where=where,
                        hint="shorten the policy, drop long instructions, lower --max-new-tokens, or use a longer-context model")
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
                                       what=f"the policy plus {name}", file=file, where=where)

        def _generate_transformers(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
            """Rollouts from the student as it is, decoded fast: eval mode, adapter merged, `generation.decode`.

            Stock decodes with `model.generate` through the unmerged, train-mode PEFT model, and
            rollouts are most of a training step (83-94% measured). Each row samples from its own
            stream seeded by (seed, step, rank, row), so a resumed run draws what an uninterrupted
            one would have. Sampling settings our loop does not implement, and FSDP or DeepSpeed
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
            """This step's per-row sampler (None = greedy), seeded by (seed, optimizer step, rank, row)."""
            if self.temperature <= 0:
                return None
            step = request_seed(self.args.seed, self.state.global_step * self.accelerator.num_processes
                                + self.accelerator.process_index)
            return RowSampler([request_seed(step, i) for i in range(rows)], self.temperature, self.args.top_p,
                              self.accelerator.device)

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

        def _teacher_logits(self, teacher_model: Any, inputs: dict, steps: int) -> Any:
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


def sdft_config(config: DistillConfig, output_dir: Path, *, device: str, dtype: Any, report_to: str = "none",
                vocab_size: int | None = None) -> Any:
    """The trl SDFTConfig for our settings (the paper's reverse-KL top-k objective), on the model's device."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
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


def training_device(device: str | None, local_rank: int, processes: int) -> str:
    """The device this process trains on: its own GPU under torchrun, else what `--device` names.

    The Trainer trains a lone process on the first visible GPU whatever the model was loaded on,
    so `--device cuda:1` is refused with the way to get it, rather than half the run on cuda:1.
    """
    from .models import resolve_device

    if processes > 1 and device in (None, "cuda"):
        import torch

        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"  # not every rank on cuda:0
    resolved = resolve_device(device)
    if processes == 1 and resolved.startswith("cuda:") and resolved != "cuda:0":
        index = resolved.split(":")[1]
        raise InvalidInputError(f"--device {device}: training runs on the first visible GPU",
                                hint=f"run with CUDA_VISIBLE_DEVICES={index} and --device cuda (or no --device)")
    return resolved


def check_vllm_rollouts(device: str) -> None:
    """vLLM rollouts need a CUDA GPU and vLLM: said before the model loads, not as trl's traceback after."""
    from .generation import require_vllm

    if not device.startswith("cuda"):
        raise InvalidInputError(f"vLLM rollouts (pa distill --vllm, pa apply --backend vllm) need a CUDA GPU; "
                                f"this process trains on {device}",
                                hint="use --no-vllm (pa apply: --backend transformers), or run on a machine with a CUDA GPU")
    require_vllm()


def lora_config(config: DistillConfig) -> Any:
    from peft import LoraConfig

    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")


def training_dataset(records: list[dict[str, Any]]) -> Any:
    """trl's rows: the conversation as a JSON string (Arrow cannot hold arbitrary tool schemas)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": training_prompt(r), "privileged_context": ""} for r in records])


def training_prompt(record: dict[str, Any]) -> str:
    """One instruction as the trainer's prompt column holds it: its conversation (and tools) as JSON."""
    return json.dumps({"messages": record["messages"], **({"tools": record["tools"]} if record.get("tools") else {})})


# --------------------------------------------------------------------------- checkpoints and outputs


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last)."""
    if not directory.is_dir():
        return None
    found = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        if _state_written(path / "trainer_state.json") and any(path.glob("adapter_model.*")):
            return path
    return None


def save_error(exc: Exception, folder: Path) -> RunError:
    """What to do when writing a checkpoint or the adapter into `folder` failed, most likely on a full
    disk: an incomplete checkpoint (its trainer_state.json is written last) is skipped by `--resume`,
    and the adapter is written to a temporary directory, renamed into place only when whole."""
    return RunError(f"writing {folder.name} failed ({type(exc).__name__}: {exc}); is the disk full?",
                    file=str(folder),
                    hint="make room on that disk (or checkpoint less often with a larger --save-steps), then run "
                         "`pa apply` again, or `pa distill RUN_DIR --resume`: training continues from the last complete "
                         "checkpoint")


def _state_written(path: Path) -> bool:
    """The Trainer writes trainer_state.json in place, not atomically: a kill mid-write leaves it cut short."""
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


# Beside the checkpoints: the stage settings they were trained with (see stages.checkpoint_record).
CHECKPOINT_RECORD = "trained_with.json"


def checkpoint_dir(run_dir: Path) -> Path:
    """Where `--resume` finds its checkpoints: beside the adapter, not inside it.

    The adapter directory is replaced by a rename when training ends; checkpoints inside it
    would have to move across with it, and a kill between the moves would lose them.
    """
    return Path(run_dir) / "checkpoints"


def save_adapter(model: Any, target: Path, finish: Callable[[Path], Any] = lambda staged: None) -> None:
    """Save only the student adapter (not an EMA 'teacher' adapter), atomically by directory rename.

    `finish` writes the files that describe these weights (policyalign.json, loss.png) into the
    staged directory first: the adapter directory is replaced whole or not at all, never new
    weights beside the previous training's provenance.
    """
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            model.save_pretrained(str(tmp), selected_adapters=["default"])
        except Exception as exc:  # safetensors' own error on a full disk, not an OSError
            raise save_error(exc, target) from exc
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's placeholder card; ours is RUN_DIR/README.md
        stable_adapter_config(tmp)
        finish(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    make_files_ordinary(tmp)  # safetensors writes the weights owner-only
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# adapter_config.json fields PEFT holds as sets and writes as lists in the set's order, which
# follows the process's string hashing (PYTHONHASHSEED): the same training wrote other bytes.
SET_VALUED_CONFIG = ("target_modules", "exclude_modules")


def stable_adapter_config(adapter_dir: Path) -> None:
    """Sort adapter_config.json's set-valued lists, so two identical trainings write the same bytes
    (and sha256, which the card publishes). PEFT reads them back into sets: the order means nothing
    to it."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        return
    changed = False
    for key in SET_VALUED_CONFIG:
        value = config.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value) and value != sorted(value):
            config[key], changed = sorted(value), True
    if changed:
        write_json(path, config)


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points:
        ax.plot(*zip(*points), marker="o", markersize=3, color="#4c72b0")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reverse KL(student || teacher), top-k")
    ax.set_title("Distillation loss")
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- internalization


def internalization(loaded: "LoadedModel", policy: str, records: list[dict[str, Any]], *, adapter_on: bool,
                    max_new_tokens: int, top_k: int, seed: int, batch_size: int = 8) -> float | None:
    """Mean teacher-student reverse KL on held-out instructions, with the student's own responses.

    The teacher is always the base model with the policy in context; the student is the base
    model (`adapter_on=False`, before training) or the adapted one. This is the gap distillation
    exists to close.
    """
    from .filtering import FilterConfig, sample_and_score, sampling_params
    from .models import base_weights
    from .scoring import PolicyScorer

    if not records:
        return None
    off = base_weights(loaded.model)
    student = nullcontext if adapter_on else off
    scorer = PolicyScorer(loaded, policy, top_k=top_k, batch_size=batch_size, teacher_context=off,
                          student_context=student)
    scorer.prompts(records, room=max_new_tokens)  # fail before sampling, as training and filtering do
    params = sampling_params(FilterConfig(max_new_tokens=max_new_tokens), seed)
    rows = sample_and_score(scorer, records, params, 1, batch_size=batch_size)
    return sum(r["score"] for r in rows) / len(rows)


# --------------------------------------------------------------------------- the stage


@dataclass
class DistillResult:
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
                progress: bool = True, record: Mapping[str, Any] | None = None) -> DistillResult:
    """Train the adapter on selected.jsonl; measure internalization on heldout.jsonl; save everything.

    `resume` continues the last checkpoint. One that has already trained more steps than
    `config` asks for is refused, or with `restart_if_past` (what `pa apply` wants) set aside
    for a fresh run. `record` (what the checkpoints are trained with) is written beside them
    once training starts, not before: a failure before then leaves the old checkpoints theirs.
    """
    from .filtering import read_instructions
    from .models import cpu_threads, load_model
    from .run import require

    run_dir = Path(run_dir)
    records = read_instructions(require(run_dir, "selected.jsonl", "pa filter RUN_DIR"))
    heldout = read_instructions(run_dir / "heldout.jsonl") if (run_dir / "heldout.jsonl").is_file() else []
    if not records:
        raise RunError("selected.jsonl is empty: nothing to train on", file=str(run_dir / "selected.jsonl"),
                       hint="keep more with `pa filter RUN_DIR --keep 0.8` or `--no-filter`")
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
        trainer = build_trainer(loaded, pack.policy, records, config, checkpoints, progress=progress and main)
        trainer.check_prompts_fit(records, run_dir / "selected.jsonl")
        if processes > 1 and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
            raise RunError("multi-process training supports data parallelism (DDP) only, not FSDP or DeepSpeed",
                           hint="launch with `torchrun --nproc_per_node N` or `accelerate launch --multi_gpu` "
                                "without an FSDP/DeepSpeed config: rank 0 alone measures and saves the adapter")
        resume_from, finished = _checkpoint_to_continue(trainer, run_dir, resume, restart_if_past)
        if resume_from is None and main:
            shutil.rmtree(checkpoints, ignore_errors=True)
        if record is not None and main:
            write_json(checkpoints / CHECKPOINT_RECORD, dict(record))
        before = _measure(trainer, loaded, pack.policy, heldout, config, adapter_on=False) if main else None
        if finished and resume_from is not None:
            trainer.restore_finished(resume_from)
        else:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if trainer.state.global_step == 0:
            raise RunError("training ran no optimizer step", file=str(run_dir / "selected.jsonl"),
                           hint="check --max-steps/--epochs, or select more instructions (--keep, --no-filter)")
        after = _measure(trainer, loaded, pack.policy, heldout, config, adapter_on=True) if main else None
    history = [h for h in trainer.state.log_history if "loss" in h]
    result = DistillResult(adapter_dir, trainer.state.global_step, len(records), len(heldout), before, after, history,
                           processes=processes, main=main)
    if main:
        def describe(staged: Path) -> None:
            provenance = write_provenance(staged, pack, loaded, config, result, run_dir)
            name_base_model(staged, provenance["base_model"])
            plot_loss(history, staged / "loss.png")

        save_adapter(trainer.accelerator.unwrap_model(trainer.model), adapter_dir, describe)
    _leave_process_group(trainer)
    return result


def _checkpoint_to_continue(trainer: Any, run_dir: Path, resume: bool,
                            restart_if_past: bool) -> tuple[Path | None, bool]:
    """The checkpoint to train on from (None: train afresh), and whether it has trained every planned step.

    A checkpoint already past the steps these settings train would end training at once, and
    the longer-trained adapter would be saved as the one these settings made.
    """
    checkpoint = resume_point(run_dir) if resume else None
    if checkpoint is None:
        return None, False
    done = int(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", 0))
    planned = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    if done <= planned:
        return checkpoint, done == planned
    if restart_if_past:
        return None, False
    raise RunError(f"{checkpoint.name} has already trained {done} optimizer steps, more than the {planned} "
                   "these settings train", file=str(checkpoint / "trainer_state.json"),
                   hint=f"drop --resume to train {planned} steps afresh, or resume with a larger --max-steps or --epochs")


def resume_point(run_dir: Path) -> Path | None:
    """The run's newest complete checkpoint, also where runs before 0.1.0's release kept them (adapter/checkpoints).

    Read in place rather than moved, so every rank of a multi-process run finds the same one;
    new checkpoints go to `checkpoints`, and the old ones leave with the old adapter directory.
    """
    run_dir = Path(run_dir)
    return last_complete_checkpoint(checkpoint_dir(run_dir)) or last_complete_checkpoint(run_dir / "adapter" / "checkpoints")


def _leave_process_group(trainer: Any) -> None:
    """Wait for rank 0 to finish writing, then shut the process group down on every rank.

    A rank that exits while the group is alive aborts in the collective library's threads, and
    the launcher then kills rank 0 mid-write (seen with gloo on CPU).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()


def launch_rank() -> tuple[int, int, int]:
    """(rank, local rank, processes) under torchrun / `accelerate launch`; (0, 0, 1) in a plain process.

    Read from the launcher's environment: the distributed state is created later, by the
    Trainer, and creating it earlier ourselves would fix its backend before trl configures it.
    """
    import os

    def number(*names: str, default: int) -> int:
        return next((int(os.environ[n]) for n in names if os.environ.get(n, "").isdigit()), default)

    return (number("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", default=0),
            number("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
            number("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", default=1))


def fit_batch(config: DistillConfig, records: int, processes: int = 1) -> DistillConfig:
    """Shrink batch size and gradient accumulation to what `records` instructions can fill.

    trl draws whole generation batches (batch_size x processes x gradient_accumulation_steps)
    and drops a partial one, so a small selection would otherwise train for zero steps without
    a word.
    """
    per_process = max(1, records // processes)
    batch = min(config.batch_size, per_process)
    accumulation = max(1, min(config.gradient_accumulation_steps, per_process // batch))
    if (batch, accumulation) != (config.batch_size, config.gradient_accumulation_steps):
        import sys

        where = f" over {processes} processes" if processes > 1 else ""
        print(f"note: {records} instructions cannot fill batch {config.batch_size} x accumulation "
              f"{config.gradient_accumulation_steps}{where}; training with {batch} x {accumulation}", file=sys.stderr)
    return replace(config, batch_size=batch, gradient_accumulation_steps=accumulation)


def build_trainer(loaded: "LoadedModel", policy: str, records: list[dict[str, Any]], config: DistillConfig,
                  output_dir: Path, *, trainer_cls: type | None = None, progress: bool = False) -> Any:
    from .models import max_context

    from transformers.trainer_callback import PrinterCallback

    cls = trainer_cls or _trainer_classes()[0]
    kwargs: dict[str, Any] = {}
    if trainer_cls is None:
        kwargs = {"policy": policy, "context_limit": max_context(loaded), "prefix_cache": config.prefix_cache}
    head = loaded.model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else loaded.model.config.get_text_config().vocab_size
    check_target_modules(loaded, config.target_modules)
    trainer = cls(model=loaded.model, args=sdft_config(config, output_dir, device=loaded.device, dtype=loaded.dtype,
                                                      vocab_size=vocab),
                  train_dataset=training_dataset(records), processing_class=loaded.tokenizer,
                  peft_config=lora_config(config), **kwargs)
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; progress has its own bar
    trainer.add_callback(_ordinary_checkpoints_callback())
    if progress:
        trainer.add_callback(_progress_callback())
    return trainer


def check_target_modules(loaded: "LoadedModel", targets: tuple[str, ...] | str) -> None:
    """Every named LoRA target must be a module of the model, as peft matches it (the name, or a dotted suffix).

    peft adapts whatever matches and drops the other names without a word, failing only when
    none matches: `--target-modules q_proj,v_projj` trained q_proj alone.
    """
    if isinstance(targets, str):  # all-linear
        return
    names = [name for name, _ in loaded.model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise InvalidInputError(f"--target-modules {missing!r}: no such module in {loaded.ref.name}",
                                where="training.target_modules",
                                hint=f"adapt some of {', '.join(linear_module_names(loaded.model))} "
                                     "(or all-linear), on the command line or in the pack")


def linear_module_names(model: Any) -> list[str]:
    """The names LoRA can target in `model`: its linear layers, the output head aside."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.bar = Progress(TextColumn("distilling"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                TimeElapsedColumn(), console=Console(stderr=True))
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


def _measure(trainer: Any, loaded: "LoadedModel", policy: str, heldout: list[dict[str, Any]],
             config: DistillConfig, *, adapter_on: bool) -> float | None:
    from .scoring import eval_mode

    model = trainer.accelerator.unwrap_model(trainer.model)
    with eval_mode(model):
        return internalization(replace(loaded, model=model), policy, heldout, adapter_on=adapter_on,
                               max_new_tokens=config.max_new_tokens, top_k=config.top_k, seed=config.seed + 1)


def _filter_seed(run_dir: Path) -> int | None:
    """The seed `pa filter` sampled with, as run.json recorded it (None for runs without one)."""
    from .run import stage_results

    config = stage_results(run_dir, "filter").get("config")
    seed = config.get("seed") if isinstance(config, dict) else None
    return seed if isinstance(seed, int) else None


def base_model_record(loaded: "LoadedModel") -> dict[str, Any]:
    """The base model as policyalign.json names it, with the Hub commit its weights came from.

    `revision` is what was asked for, usually nothing (the branch head at training time); the
    commit pins the weights the adapter was trained on, after the repository moves on. `license`
    is the base model's (from its README, when one is at hand offline): the card's default.
    """
    from .models import loaded_commit, model_license

    ref = loaded.ref
    commit = loaded_commit(loaded)
    found = model_license(ref, commit)
    public = ref.public()  # published with the adapter: no local paths
    return {"name": public.name, "id": public.location, "revision": ref.revision,
            "commit": commit, "kind": ref.kind, "license": found.pop("license", None), **found}


def name_base_model(adapter_dir: Path, base: Mapping[str, Any]) -> None:
    """adapter_config.json names the base model as policyalign.json (`base`) does. PEFT writes the path
    the base was loaded from: for `tiny` or a local directory an absolute local path, which would be
    published with the adapter (the user's home directory) and means nothing on another machine.
    A Hub base gets its commit as `revision` (PEFT leaves it null): `AutoPeftModelForCausalLM`
    loads the base at that revision, and otherwise loaded whatever `main` is now."""
    path = adapter_dir / "adapter_config.json"
    config = read_json(path)
    named = {"base_model_name_or_path": base["id"]}
    if base.get("kind") == "hub" and (base.get("commit") or base.get("revision")):
        named["revision"] = base.get("commit") or base.get("revision")
    if isinstance(config, dict) and any(config.get(key) != value for key, value in named.items()):
        write_json(path, {**config, **named})


def write_provenance(adapter_dir: Path, pack: "Pack", loaded: "LoadedModel", config: DistillConfig,
                     result: DistillResult, run_dir: Path) -> dict[str, Any]:
    """policyalign.json: exactly which pack, model, data and settings made this adapter."""
    from . import __version__
    from .pack import parent_records

    synthesis = read_json(run_dir / "synthesis.json") if (run_dir / "synthesis.json").is_file() else {}
    scored = sum(1 for _ in (run_dir / "scored.jsonl").open()) if (run_dir / "scored.jsonl").is_file() else None
    # each pack it extends, with its version and digest; a pack without parents records none, so
    # its policyalign.json is what it was before parents were recorded
    parents = {"parents": parent_records(pack)} if pack.parents else {}
    data = {
        "policyalign_version": __version__,
        "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest, **parents, "title": pack.title,
                 "summary": pack.summary, "license": pack.license,
                 "categories": [{"id": c.id, "title": c.title, "action": c.action, "locked": c.locked}
                                for c in pack.categories]},
        "base_model": base_model_record(loaded),
        "config": {**asdict(config), "target_modules": list(config.target_modules)
                   if not isinstance(config.target_modules, str) else config.target_modules, "trl": PIN_TRL},
        "data": {"synthesized": synthesis.get("instructions") if isinstance(synthesis, dict) else None, "scored": scored,
                 "selected": result.train_records, "heldout": result.heldout_records},
        "internalization": {"before": result.internalization_before, "after": result.internalization_after,
                            "drop": result.internalization_drop},
        "training": {"steps": result.steps, "processes": result.processes,
                     "final_loss": result.history[-1]["loss"] if result.history else None},
        "seeds": {k: v for k, v in {
            "synthesis": synthesis.get("seed") if isinstance(synthesis, dict) else None,
            "filtering": _filter_seed(run_dir), "training": config.seed,
            "internalization_sampling": config.seed + 1 if result.heldout_records else None}.items() if v is not None},
    }
    write_json(adapter_dir / "policyalign.json", data)
    return data
