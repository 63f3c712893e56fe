"""The distillation settings and their bounds: `DistillConfig`, built from a pack's `training`
section with command-line overrides over it, each setting held to the pack schema's limits
wherever it comes from (pack, flag, config file), so a bad value is named before training.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .pack import Pack


# The largest training seed: numpy's legacy seeding (called by transformers' set_seed) takes 0..2**32-1, and
# `--seed -1` crashed with its ValueError traceback after synthesis, filtering and the first evaluation.
MAX_SEED = 2**32 - 1
# The settings that change how fast a training step runs, not what it computes: a resumed run may switch them
# (`stages.RESUMABLE_CHANGES`), and an adapter restored without training keeps those it was trained with.
SPEED_SWITCHES = ("prefix_cache", "use_vllm")
# The settings that say how training keeps its books (checkpoints, log lines), not what it computes: a resumed run
# may change them too, and an adapter restored without training keeps those its checkpoints were written under.
BOOKKEEPING = ("save_steps", "logging_steps")
# Both: how training runs, not what it trains. Changed, a finished adapter stays what it is
# (`stages.finished_distill_changes`).
RUN_ONLY_SETTINGS = (*BOOKKEEPING, *SPEED_SWITCHES)


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
        check_seed(config.seed)
        if config.save_steps < 1:
            raise InvalidInputError(f"--save-steps {config.save_steps}: must be at least 1",
                                    hint="checkpoint every N >= 1 optimizer steps")
        return config


def check_seed(seed: int) -> None:
    """Refuse a seed numpy cannot take (transformers' set_seed seeds it, which takes no other). Every command
    with --seed holds it to this: `pa synthesize --seed -1` and `pa filter --seed -1` ran while `pa apply
    --seed -1` was refused, so the stage commands made runs `pa apply` could not re-run or resume."""
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"--seed {seed}: must be between 0 and {MAX_SEED}",
                                hint="training seeds numpy's generator, which takes a 32-bit unsigned seed")


def target_module_names(value: str | None) -> tuple[str, ...] | str | None:
    """--target-modules as the training setting: all-linear kept whole, else the comma-separated names
    (spaces after the commas allowed), for `pa apply` and `pa distill` alike, and a `pa apply --config`
    file's `target_modules:` written as one string."""
    if value is None or value == "all-linear":
        return value
    return tuple(name.strip() for name in value.split(",") if name.strip())


def check_ema_decay(config: DistillConfig, given_as: str | None) -> None:
    """Refuse an EMA rate given for a teacher that is no EMA: `--ema-decay 0.5` without `--teacher ema` trained
    against the base teacher, the rate silently unused, though its help says "With --teacher ema". `given_as` is
    how the user set it (`--ema-decay`, or `ema_decay in --config`), None when they did not."""
    if given_as is not None and config.teacher != "ema":
        raise InvalidInputError(f"{given_as} applies only with --teacher ema, and this run's teacher is "
                                f"{config.teacher!r}",
                                hint="add --teacher ema (or `teacher: ema` in --config, or training.teacher: ema in "
                                     f"the pack) to train against the EMA teacher, or drop {given_as}")


def under_given(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`base` settings (a checkpoint's, a model's demo defaults) with `given` ones over them, where
    `num_epochs` given without `max_steps` also drops base's `max_steps`: trainers stop at max_steps
    whatever the epochs, so `--resume --epochs 3` after a `--max-steps 20` run trained nothing."""
    dropped = ("max_steps",) if "num_epochs" in given and "max_steps" not in given else ()
    return {**{k: v for k, v in base.items() if k not in dropped}, **given}


# Command-line flags whose name differs from the training setting they override.
FLAGS = {"learning_rate": "--lr", "num_epochs": "--epochs", "gradient_accumulation_steps": "--grad-accum",
         "top_k": "--kl-top-k"}


# Keys a pack author writes in `training:` that set something elsewhere, hinted there rather than at the closest
# spelling: `top_n: 5` was "did you mean 'top_k'?" (the reverse KL's top-k, not the selection count), `save_steps` "did
# you mean 'max_steps'?" (the training's length) and `alpha` "did you mean 'lora_alpha'?" (the LoRA scale).
RUN_CHOICES = {
    "keep": "the fraction filtering keeps is training.filter_keep in a pack (--keep on the command line)",
    "top_n": "how many instructions filtering keeps is a run's choice, not a pack's: --top-k (top_n in pa apply "
             "--config); training.top_k is the reverse KL's top-k",
    "min_score": "a score threshold is a run's choice, not a pack's: --min-score (min_score in pa apply --config)",
    "seed": "the seed is a run's choice, not a pack's: --seed (seed in pa apply --config)",
    "save_steps": "the checkpoint interval is a run's choice, not a pack's: --save-steps (save_steps in pa apply "
                  "--config); training.max_steps is the training's length",
    "prefix_cache": "the prefix cache is a run's choice, not a pack's: --[no-]prefix-cache (prefix_cache in pa apply "
                    "--config)",
    "use_vllm": "vLLM rollouts are a run's choice, not a pack's: pa apply --backend vllm, pa distill --vllm",
    "alpha": "the loss's alpha is fixed (1.0, reverse KL): no setting takes it; the LoRA scale is training.lora_alpha",
    **{FLAGS[setting].removeprefix("--").replace("-", "_"): f"{FLAGS[setting]} is training.{setting} in a pack"
       for setting in FLAGS},
}


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
    from .schema import range_hint, schema_message, schema_text, validator_class

    properties = json.loads(schema_text("pack.schema.json"))["properties"]["training"]["properties"]
    for name, value in settings.items():
        if name not in properties:
            continue
        plain = list(value) if isinstance(value, tuple) else value
        if isinstance(plain, float) and not math.isfinite(plain):  # NaN passes every bound: no comparison is true
            return name, plain, "must be a finite number"
        error = next(validator_class()(properties[name]).iter_errors(plain), None)
        if error is not None:  # with the range it must land in: "give --lr a value the pack schema allows" said none
            allowed = range_hint(error)
            return name, plain, schema_message(error) + (f" ({allowed})" if allowed else "")
    return None


def target_modules_origin(pack: "Pack", targets: tuple[str, ...] | str,
                          flag: str = "--target-modules") -> tuple[str, str]:
    """(file, place) where the LoRA targets in use were written, for the error naming a misspelt one: the pack's
    pack.yaml when they are its `training.target_modules`, else `flag` (the command line, a config file's key),
    or the default when neither set them. Blaming a flag the user never gave sent them looking in the wrong place."""
    from .pack_input import MANIFEST

    def plain(value: Any) -> Any:
        return value if isinstance(value, str) else tuple(value)

    written = pack.training.get("target_modules")
    if written is not None and plain(written) == plain(targets):
        return str(pack.root / MANIFEST), "training.target_modules"
    if written is None and plain(targets) == DistillConfig.target_modules:
        return "", f"the default target modules (set training.target_modules in the pack, or {flag})"
    return "", flag
