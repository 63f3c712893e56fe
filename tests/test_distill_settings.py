"""The distillation settings: pack values, then command-line overrides, each held to the pack schema's bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyalign.distill_settings import DistillConfig
from policyalign.errors import InvalidInputError
from policyalign.registry import Registry


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
    ({"max_steps": 0}, "--max-steps 0"),  # trained one step at learning rate 0: an untrained adapter as "trained 1 steps"
    # NaN passed every bound (no comparison with it is true): a torch ValueError traceback, or an "overflow"
    ({"learning_rate": float("nan")}, "--lr nan"), ({"temperature": float("nan")}, "--temperature nan"),
    ({"lora_alpha": float("inf")}, "--lora-alpha inf"),
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


def test_max_steps_is_at_least_one_or_minus_one_for_epochs_wherever_it_is_set() -> None:
    """max_steps 0 passed the schema (minimum -1) and trained one step at learning rate 0."""
    with pytest.raises(InvalidInputError, match="training.max_steps 0: 0 is not allowed.*-1 to train num_epochs"):
        DistillConfig.from_pack({"max_steps": 0})
    assert [DistillConfig.from_pack({}, max_steps=n).max_steps for n in (-1, 1)] == [-1, 1]


def test_the_seed_is_one_numpy_can_take() -> None:
    """`--seed -1` (or 2**32) was a numpy ValueError traceback from the trainer's set_seed."""
    for seed in (-1, 2**32):
        with pytest.raises(InvalidInputError, match=f"--seed {seed}: must be between 0 and {2**32 - 1}"):
            DistillConfig.from_pack({}, seed=seed)
    assert DistillConfig.from_pack({}, seed=2**32 - 1).seed == 2**32 - 1


def test_save_steps_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="--save-steps 0"):
        DistillConfig.from_pack({}, save_steps=0)
    assert DistillConfig.from_pack({}, save_steps=7).save_steps == 7


def test_epochs_given_alone_set_the_length_over_a_max_steps_default() -> None:
    """A pack's `max_steps`, the checkpoint's (`pa distill --resume --epochs 3` after a --max-steps 4
    run trained nothing more) or tiny's demo default stopped training whatever --epochs said."""
    from policyalign.distill_settings import under_given

    assert DistillConfig.from_pack({"max_steps": 100}, num_epochs=2).max_steps == -1
    assert DistillConfig.from_pack({"max_steps": 100}, num_epochs=2, max_steps=7).max_steps == 7
    assert DistillConfig.from_pack({"max_steps": 100, "num_epochs": 2}).max_steps == 100, "the pack's own pair stands"
    recorded = {"max_steps": 4, "num_epochs": 1.0, "lora_r": 8}
    assert under_given(recorded, {"num_epochs": 3}) == {"num_epochs": 3, "lora_r": 8}
    assert under_given(recorded, {"max_steps": 9}) == {**recorded, "max_steps": 9}
    resumed = DistillConfig.from_pack({}, **under_given(recorded, {"num_epochs": 3}))
    assert (resumed.max_steps, resumed.num_epochs, resumed.lora_r) == (-1, 3.0, 8)


@pytest.mark.parametrize(("given", "said"), [
    ({"learning_rate": 0.0}, "--lr 0.0: 0.0 is less than or equal to the minimum of 0 (use a number above 0 and at most 1)"),
    ({"lora_r": 0}, "--lora-r 0: 0 is less than the minimum of 1 (use an integer at least 1 and at most 1024)"),
])
def test_a_flag_out_of_its_bounds_is_told_its_range(given: dict, said: str) -> None:
    """`pa apply --lr 0` said "less than or equal to the minimum of 0" and hinted "give --lr a value the pack
    schema allows": neither said which values those are (the maximum least of all)."""
    with pytest.raises(InvalidInputError) as info:
        DistillConfig.from_pack({}, **given)
    assert info.value.problem.message == said
