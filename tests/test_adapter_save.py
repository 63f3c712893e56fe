"""The adapter directory: replaced whole or not at all, and the same bytes for the same training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from policyalign.errors import InvalidInputError
from policyalign.stages import run_distill


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
def test_adapter_config_is_the_same_bytes_whatever_the_process(tmp_path: Path) -> None:
    """PEFT keeps target_modules as a set and wrote it in the order of the process's string hashing:
    two identical trainings gave adapter_config.json (published, hashed in the card) other bytes."""
    code = ("import sys; from pathlib import Path; from peft import LoraConfig, get_peft_model; "
            "from transformers import AutoModelForCausalLM; from policyalign.tiny import tiny_model_path; "
            "from policyalign.adapter_save import save_adapter\n"
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


def test_an_adapter_the_full_disk_refuses_is_an_error_and_leaves_the_old_one(tmp_path: Path) -> None:
    """The final adapter on a full disk was a SafetensorError traceback."""
    from fulldisk import run_error

    target = tmp_path / "adapter"
    target.mkdir()
    (target / "policyalign.json").write_text("{}")  # the previous training's adapter
    printed = run_error("from peft import LoraConfig, get_peft_model\nfrom transformers import AutoModelForCausalLM\n"
                        "from policyalign.tiny import tiny_model_path\nfrom policyalign.adapter_save import save_adapter\n"
                        "base = AutoModelForCausalLM.from_pretrained(tiny_model_path())\n"
                        "model = get_peft_model(base, LoraConfig(r=64, target_modules='all-linear'))",
                        "save_adapter(model, Path(sys.argv[1]))", target)
    assert printed.startswith(f"{target}: writing adapter failed (SafetensorError: "), printed
    assert "is the disk full?" in printed
    assert (target / "policyalign.json").read_text() == "{}" and not (tmp_path / ".adapter.tmp").exists()


def test_an_adapter_reaches_the_disk_before_it_takes_the_adapter_name(tmp_path: Path, fsyncs) -> None:  # type: ignore[no-untyped-def]
    """The weights save_pretrained wrote were neither fsynced nor was the rename: a power cut could leave
    `adapter/` holding empty weights, or the previous training's adapter under a run that recorded this one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from policyalign.adapter_save import save_adapter
    from policyalign.tiny import tiny_model_path

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path()), LoraConfig(r=4, target_modules=["q_proj"]))
    for _ in range(2):  # a first adapter, then one replacing it
        synced = fsyncs(tmp_path / "adapter")
        save_adapter(model, tmp_path / "adapter")
        assert not synced.problems()
        assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size


def test_a_save_killed_while_swapping_the_adapter_in_neither_fails_the_next_save_nor_loses_the_earlier_one(
        tmp_path: Path) -> None:
    """The adapter goes in as a pull's does (`hub.swap_in`): what a save killed between moving the previous
    adapter aside and deleting it leaves beside the adapter is dealt with by the next save, which replaces the
    previous adapter as any other and keeps it while the new one cannot be moved in."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from policyalign.adapter_save import save_adapter
    from policyalign.tiny import tiny_model_path

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path()), LoraConfig(r=4, target_modules=["q_proj"]))
    target, aside = tmp_path / "adapter", tmp_path / ".previous-adapter"

    def saved_anew() -> bool:
        return (target / "adapter_model.safetensors").is_file() and not (target / "notes.txt").exists()

    def refused(staged: Path) -> None:
        raise RuntimeError("no provenance")

    save_adapter(model, target)
    (target / "notes.txt").write_text("the previous training's")
    shutil.copytree(target, aside)  # killed after the new adapter took the name: the replaced one is left aside
    save_adapter(model, target)
    assert saved_anew() and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]

    (target / "notes.txt").write_text("the previous training's")
    target.rename(aside)  # killed between the two moves: the only copy is aside
    with pytest.raises(RuntimeError, match="no provenance"):
        save_adapter(model, target, refused)
    assert (aside / "notes.txt").is_file()  # kept, not deleted as a leftover
    save_adapter(model, target)
    assert saved_anew() and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_save_killed_under_an_older_pa_leaves_nothing_beside_the_adapter_once_resumed(tmp_path: Path) -> None:
    """Saves before `hub.swap_in` moved the previous adapter aside as `.NAME.old` and deleted what a killed one left
    there; saves since look for `.previous-NAME` only, so a run killed under the older pa and resumed under this one
    kept `.adapter.old` for good. It is dealt with as a `.previous-adapter` is: deleted once replaced."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from policyalign.adapter_save import save_adapter
    from policyalign.tiny import tiny_model_path

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path()), LoraConfig(r=4, target_modules=["q_proj"]))
    target, legacy = tmp_path / "adapter", tmp_path / ".adapter.old"
    save_adapter(model, target)
    shutil.copytree(target, legacy)  # killed after the new adapter took the name
    save_adapter(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]

    target.rename(legacy)  # killed between the two moves: the only copy is aside
    save_adapter(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]

    shutil.copytree(target, legacy)  # and a save under this pa killed after its move in, since
    shutil.copytree(target, tmp_path / ".previous-adapter")
    save_adapter(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (target / "adapter_model.safetensors").is_file()


def test_the_loss_curve_names_the_loss_as_configured() -> None:
    """loss.png's axis said "reverse KL(student || teacher), top-k" also for --kl-top-k 0 (the whole vocabulary)
    and for an alpha other than 1, which is not the reverse KL."""
    from policyalign.adapter_save import loss_label

    assert loss_label(1.0, 256) == "reverse KL(student || teacher), top-256"
    assert loss_label(1.0, 0) == "reverse KL(student || teacher), full vocabulary"
    assert loss_label(0.5, 256) == "distillation loss (alpha 0.5), top-256"
