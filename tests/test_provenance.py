"""Provenance: policyalign.json and adapter_config.json name the pack, data and base model that made an adapter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from policyalign.distill_settings import DistillConfig
from policyalign.models import load_model
from policyalign.registry import Registry


def test_provenance_counts_the_synthesized_instructions(tmp_path: Path, fixture_packs: Path) -> None:
    """policyalign.json (and the model card built from it) gives synthesis's count, as synthesis.json records it."""
    from policyalign.distill import DistillResult
    from policyalign.provenance import write_provenance
    from policyalign.synthesize import synthesize

    pack = Registry([fixture_packs]).load("root-pack")
    made = synthesize(pack, "tiny", out_dir=tmp_path, n_per_category=1, sampling={"max_new_tokens": 8}, progress=False)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    result = DistillResult(adapter, steps=1, train_records=2, heldout_records=0, internalization_before=None,
                           internalization_after=None)
    data = write_provenance(adapter, pack, load_model("tiny"), DistillConfig(), result, tmp_path)["data"]
    assert data["synthesized"] == made.summary["instructions"] > 0


def test_provenance_and_card_name_the_selection_rule_and_a_run_not_filtered(tmp_path: Path, fixture_packs: Path,
                                                                            peft_adapter: Path) -> None:
    """policyalign.json records the filter stage's selection rule, and the card shows it: the card said
    "selected by Policy-Sensitive Filtering" with no rule, for tiny's demo keep 0.8 (the pack's: 0.5) and for a
    --no-filter ablation that selected nothing alike."""
    from policyalign.card import load_run, render_model_card
    from policyalign.distill import DistillResult
    from policyalign.provenance import write_provenance
    from policyalign.stages import run_filter, run_synthesize

    pack, run = Registry([fixture_packs]).load("root-pack"), tmp_path / "run"
    run_synthesize(run, pack, "tiny", n=1, max_new_tokens=8, progress=False)
    rows = {}
    for rule, options in (("keep 0.8", {"keep": 0.8}), ("none", {"no_filter": True})):
        result = run_filter(run, model="tiny", pack=pack, progress=False, max_new_tokens=8, **options)
        adapter = run / "adapter"
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(peft_adapter, adapter)
        done = DistillResult(adapter, 1, result.selected, result.heldout, None, None)
        assert write_provenance(adapter, pack, load_model("tiny"), DistillConfig(), done, run)["data"]["selection"] == rule
        rows[rule] = render_model_card(load_run(run), "org/x", "v1")
    assert "| selection | keep 0.8 |" in rows["keep 0.8"] and "selected by Policy-Sensitive Filtering" in rows["keep 0.8"]
    assert "| selection | none |" in rows["none"] and "selected by Policy-Sensitive Filtering" not in rows["none"]
    assert "not filtered: every instruction not held out was trained on" in rows["none"]


def test_provenance_records_the_parents_of_a_child_pack_and_nothing_for_a_root_pack(tmp_path: Path,
                                                                                    fixture_packs: Path) -> None:
    """A child pack is trained on its parents' policy too; policyalign.json named the child alone."""
    from policyalign.distill import DistillResult
    from policyalign.provenance import write_provenance

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
            "from policyalign.distill import DistillResult; from policyalign.distill_settings import DistillConfig; "
            "from policyalign.provenance import write_provenance; "
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

    from policyalign.provenance import base_model_record
    from policyalign.tiny import tiny_model_path

    model = tmp_path / "model"
    shutil.copytree(tiny_model_path(), model)
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My model\n")
    assert base_model_record(load_model(str(model)))["license"] == "apache-2.0"
    assert base_model_record(load_model("tiny"))["license"] is None


def test_published_adapter_files_name_a_local_base_model_without_its_path(tmp_path: Path) -> None:
    """policyalign.json and adapter_config.json (both pushed) held the base model's absolute local path."""
    import shutil

    from policyalign.provenance import base_model_record, name_base_model
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
                                                                            hf_cache, offline_hub) -> None:  # type: ignore[no-untyped-def]
    """adapter_config.json's `revision` (the base model's, for `AutoPeftModelForCausalLM`) was null: the
    adapter of a Hub base asked for without a revision loaded on whatever `main` is now."""
    import shutil

    from peft import AutoPeftModelForCausalLM

    from policyalign.provenance import name_base_model

    trained, moved = "1" * 40, "2" * 40
    hf_cache("acme/tiny", trained)
    cache = hf_cache("acme/tiny", moved)  # main moved on since
    (cache / "models--acme--tiny" / "snapshots" / moved / "config.json").write_text("not the trained-on weights")
    adapter = tmp_path / "adapter"
    shutil.copytree(peft_adapter, adapter)
    name_base_model(adapter, {"name": "acme/tiny", "id": "acme/tiny", "revision": None, "commit": trained, "kind": "hub"})
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("acme/tiny", trained)
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    assert model.get_base_model().config._commit_hash == trained
