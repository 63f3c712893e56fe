"""`pa apply`: the whole pipeline on tiny, resuming, options, and surviving kill -9 at any stage."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from policyalign.apply import ApplyOptions, apply, build_options
from policyalign.runs import run_summary
from policyalign.cli import app
from policyalign.errors import HubError, InvalidInputError, PolicyAlignError, RunError
from policyalign.io import read_jsonl
from policyalign.registry import Registry
from tracked import tensorboard_scalars

FAST = ["--n", "2", "--max-steps", "6", "--eval-limit", "4", "--batch-size", "4", "--max-new-tokens", "8"]
ARTIFACTS = ["run.json", "instructions.jsonl", "synthesis.json", "scored.jsonl", "selected.jsonl", "heldout.jsonl",
             "filter_hist.png", "adapter/adapter_model.safetensors", "adapter/policyalign.json", "adapter/loss.png",
             "eval/before/eval.json", "eval/before/report.md", "eval/before/categories.png", "eval/after/eval.json",
             "eval/after/responses.jsonl", "eval/before_after.png", "README.md"]


def _options(packs: Path, out: Path, **extra) -> ApplyOptions:
    base = dict(pack=str(packs / "child-pack"), model="tiny", out=out, n=2, max_steps=6, eval_limit=4, batch_size=4,
                max_new_tokens=8, progress=False)
    base.update(extra)
    return ApplyOptions(**base, explicit=set(base))


def _run_notes(notes: list[str]) -> Callable[[str], None]:
    """Collect `pa apply`'s notes into `notes`, but the one naming the pack values tiny's demo settings replace."""
    return lambda text: None if text.startswith("--model tiny trains with its demo settings") else notes.append(text)


def _check_complete(run: Path) -> None:
    for rel in ARTIFACTS:
        assert (run / rel).is_file() and (run / rel).stat().st_size > 0, rel
    for rel in ("instructions.jsonl", "scored.jsonl", "selected.jsonl", "heldout.jsonl", "eval/after/responses.jsonl"):
        read_jsonl(run / rel)  # every line parses
    manifest = json.loads((run / "run.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done"
               for s in ("synthesize", "filter", "eval_before", "distill", "eval_after", "card"))
    assert not list(run.rglob(".*.tmp")), "no half-written temporaries left"


@pytest.mark.slow
def test_apply_runs_every_stage_then_resumes_by_skipping(tmp_path: Path, fixture_packs: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    first = apply(_options(fixture_packs, run), pack)
    _check_complete(run)
    assert [s.status for s in first.stages] == ["ran"] * 6
    summary = run_summary(run)
    assert summary["status"] == "complete" and summary["selected"] > 0
    assert summary["internalization_before"] > 0 and summary["internalization_after"] is not None
    card = (run / "README.md").read_text()
    assert pack.digest in card and "child-pack" in card
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["inputs"]["pack"]["digest"] == pack.digest
    # Every seed that shaped the adapter is on record, and on the card.
    seeds = json.loads((run / "adapter" / "policyalign.json").read_text())["seeds"]
    assert set(seeds) == {"synthesis", "filtering", "training", "internalization_sampling"}
    assert f"filtering={seeds['filtering']}" in card
    # The parent the child was trained with is on record, and on the card; PEFT's set of targets is sorted.
    root = Registry([fixture_packs]).load("root-pack")
    parents = json.loads((run / "adapter" / "policyalign.json").read_text())["pack"]["parents"]
    assert parents == [{"name": "root-pack", "version": root.version, "digest": root.digest}]
    assert f"| Extends | root-pack {root.version} (digest {root.digest}) |" in card
    targets = json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(targets)
    assert {"torch", "transformers", "trl", "peft", "policyalign"} <= set(manifest["versions"])
    # Same command again: nothing re-runs, nor for live reporting, which changes no result.
    again = apply(_options(fixture_packs, run, report_to="tensorboard"), pack)
    assert [s.status for s in again.stages] == ["skipped"] * 6
    assert not (run / "tensorboard").exists()
    with monkeypatch.context() as inside:  # the run named `.`: its card named the repository "local/"
        inside.chdir(run)
        assert [s.status for s in apply(_options(fixture_packs, Path(".")), pack).stages] == ["skipped"] * 6
    # The adapter's weights deleted by hand: distill restores them from its last checkpoint, not skipped
    # as finished (eval_after then failed to load the adapter).
    weights = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    (run / "adapter" / "adapter_model.safetensors").unlink()
    restored = apply(_options(fixture_packs, run), pack)
    assert [s.name for s in restored.stages if s.status == "ran"] == ["distill"]
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    # A changed distillation option re-runs distill and what depends on it, not synthesis or filtering;
    # the checkpoint it does not continue is named with the change (it was replaced without a word).
    notes: list[str] = []
    changed = apply(_options(fixture_packs, run, learning_rate=5e-3, report_to=["tensorboard"]), pack,
                    on_note=_run_notes(notes))
    assert notes == ["distill: checkpoint-6 was trained with other settings: --lr 0.01 then, 0.005 now; "
                     "training afresh, replacing its checkpoints"]
    status = {s.name: s.status for s in changed.stages}
    assert status == {"synthesize": "skipped", "filter": "skipped", "eval_before": "skipped", "distill": "ran",
                      "eval_after": "ran", "card": "ran"}
    assert sorted(tensorboard_scalars(run / "tensorboard")["train/loss"]) == list(range(1, 7)), "every step, live"
    # Only a longer training: distill trains on from its last checkpoint instead of starting over.
    state = run / "checkpoints" / "checkpoint-6" / "trainer_state.json"
    marked = json.loads(state.read_text())
    marked["log_history"].append({"step": 6, "marker": "first run"})
    state.write_text(json.dumps(marked))
    longer = apply(_options(fixture_packs, run, learning_rate=5e-3, max_steps=8), pack, on_note=_run_notes(notes))
    assert len(notes) == 1, "continued, not replaced"
    assert {s.name: s.status for s in longer.stages}["distill"] == "ran"
    resumed = json.loads((run / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert {"step": 6, "marker": "first run"} in resumed["log_history"]
    # A shorter one trains afresh: checkpoint-8 must not be saved as the 4-step adapter.
    shorter = apply(_options(fixture_packs, run, learning_rate=5e-3, max_steps=4), pack)
    assert {s.name: s.status for s in shorter.stages}["distill"] == "ran"
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    assert provenance["training"]["steps"] == 4 and provenance["config"]["max_steps"] == 4


def test_a_finished_run_rerun_with_another_save_steps_or_prefix_cache_keeps_its_adapter(tmp_path: Path,
                                                                                         fixture_packs: Path) -> None:
    """A finished run re-run with `--save-steps 1 --no-prefix-cache` (settings of how training runs, not of what it
    trains) re-ran distill, since its key covers every setting: it reloaded the model to restore the same adapter
    from its last checkpoint, and the next run without them did so again, alternating for ever. Distill is kept, the
    user told the flags had no effect on it, and the run still records the settings it was trained with."""
    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    quick = {"max_steps": 2, "eval_limit": 2}
    apply(_options(fixture_packs, run, **quick), pack)
    trained = json.loads((run / "run.json").read_text())["stages"]["distill"]
    provenance = (run / "adapter" / "policyalign.json").read_bytes()
    notes: list[str] = []
    changed = apply(_options(fixture_packs, run, **quick, save_steps=1, prefix_cache=False), pack,
                    on_note=_run_notes(notes))
    assert [s.status for s in changed.stages] == ["skipped"] * 6
    assert notes == ["distill: --save-steps 50 then, 1 now; --prefix-cache True then, False now: no effect on the "
                     "finished adapter, kept as trained (how training runs, not what it trains)"]
    assert json.loads((run / "run.json").read_text())["stages"]["distill"] == trained
    assert (run / "adapter" / "policyalign.json").read_bytes() == provenance
    again = apply(_options(fixture_packs, run, **quick), pack, on_note=_run_notes(notes))
    assert [s.status for s in again.stages] == ["skipped"] * 6 and len(notes) == 1
    # Another length still trains (on from the last checkpoint), and the flags given then are what it records.
    longer = apply(_options(fixture_packs, run, max_steps=3, eval_limit=2, save_steps=1), pack)
    assert {s.name: s.status for s in longer.stages}["distill"] == "ran"
    assert {k: json.loads((run / "run.json").read_text())["stages"]["distill"]["config"][k]
            for k in ("max_steps", "save_steps")} == {"max_steps": 3, "save_steps": 1}


@pytest.mark.slow
def test_every_stage_uses_the_pack_apply_resolved_and_a_policy_edit_retrains(tmp_path: Path, fixture_packs: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages used to reload the pack by path through the default search paths, so its parent
    could resolve to another pack than the one `pa apply --packs-path` named; and a policy edit, which
    leaves the synthesized instructions as they were, skipped filtering and training."""
    import shutil

    packs, shadow = tmp_path / "search", tmp_path / "shadow"
    for name in ("root-pack", "child-pack"):
        shutil.copytree(fixture_packs / name, packs / name)
    shutil.copytree(fixture_packs / "root-pack", shadow / "root-pack")
    with (shadow / "root-pack" / "policy.md").open("a") as f:
        f.write("\n- A rule only the shadowing root-pack has.\n")
    monkeypatch.setenv("PA_PACKS_PATH", str(shadow))  # searched before a pack's own siblings
    run = tmp_path / "run"
    pack = Registry([packs]).load("child-pack")
    notes: list[str] = []
    apply(_options(packs, run), pack, on_note=_run_notes(notes))
    assert notes == []
    trained_on = json.loads((run / "adapter" / "policyalign.json").read_text())["pack"]["digest"]
    assert trained_on == pack.digest == json.loads((run / "run.json").read_text())["inputs"]["pack"]["digest"]
    with (packs / "child-pack" / "policy.md").open("a") as f:
        f.write("\n- A rule added after the first run.\n")
    edited = Registry([packs]).load("child-pack")
    status = {s.name: s.status for s in apply(_options(packs, run), edited, on_note=_run_notes(notes)).stages}
    assert status["filter"] == status["distill"] == "ran"
    # ... and says so before it replaces the adapter of the content it was made from under one version
    assert len(notes) == 1 and "child-pack@1.0.0 is not the child-pack@1.0.0 this run was made from" in notes[0]
    assert "its files changed" in notes[0] and "`pa bump PACK_DIR patch" in notes[0]
    assert json.loads((run / "adapter" / "policyalign.json").read_text())["pack"]["digest"] == edited.digest


def test_config_file_and_command_line_precedence(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nmax-steps: 7\njudge: refusal\nkeep: 0.3\n")
    options = build_options({"pack": None, "model": None, "keep": 0.9, "no_filter": False}, config)
    assert (options.pack, options.model, options.max_steps, options.keep) == ("general", "tiny", 7, 0.9)
    config.write_text("pack: general\nmodel: tiny\nmax_stepz: 7\n")
    with pytest.raises(InvalidInputError, match="did you mean 'max_steps'"):
        build_options({}, config)
    config.write_text("pack: general\nmodel: tiny\npacks_path: [mypacks]\n")  # --help: "keyed by their long names"
    with pytest.raises(InvalidInputError, match="'packs_path' is not read from a config file") as caught:
        build_options({}, config)
    assert caught.value.problem.hint == "give --packs-path on the command line, or set PA_PACKS_PATH"
    with pytest.raises(InvalidInputError, match="missing model"):
        build_options({"pack": "general"}, None)



def test_a_selection_flag_on_the_command_line_replaces_the_files_rule(tmp_path: Path) -> None:
    """`keep: 0.3` in --config plus --no-filter was refused as two selection rules: the command line wins."""
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nkeep: 0.3\n")
    options = build_options({"no_filter": True}, config)
    assert options.no_filter and options.keep is None and "keep" not in options.explicit
    options = build_options({"top_n": 5, "no_filter": False}, config)
    assert (options.top_n, options.keep) == (5, None)
    assert build_options({"no_filter": False}, config).keep == 0.3, "no flag given: the file's rule stands"


@pytest.mark.parametrize(("key", "right"), [("lr", "learning_rate"), ("epochs", "num_epochs"),
                                            ("grad-accum", "gradient_accumulation_steps"), ("top_k", "top_n"),
                                            ("quiet", "progress: false")])
def test_a_flag_name_in_the_config_file_is_told_its_key(tmp_path: Path, key: str, right: str) -> None:
    """`lr: 1e-4` got "unknown option 'lr'" and a list of 39 names; `top_k` got "did you mean 'top_n'",
    though a pack's `training.top_k` is the reverse KL's top-k (kl_top_k here)."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{key}: 1\n")
    with pytest.raises(InvalidInputError) as caught:
        build_options({}, config)
    assert f"is {right}" in caught.value.problem.hint and caught.value.problem.file == str(config)
    if key == "top_k":
        assert "kl_top_k" in caught.value.problem.hint


@pytest.mark.parametrize(("key", "right", "wrong"), [("filter_keep", "is keep", "no_filter"),
                                                     ("use_vllm", "backend: vllm", None),
                                                     ("alpha", "no option sets it", "did you mean")])
def test_a_pack_or_provenance_setting_name_in_the_config_file_is_told_its_key(tmp_path: Path, key: str, right: str,
                                                                               wrong: str | None) -> None:
    """A pack's `filter_keep:` copied into --config was hinted "did you mean 'no_filter'?" (train on everything),
    and policyalign.json's `alpha` "did you mean 'lora_alpha'?", another setting altogether."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{key}: 1\n")
    with pytest.raises(InvalidInputError) as caught:
        build_options({}, config)
    hint = caught.value.problem.hint
    assert right in hint and (wrong is None or wrong not in hint), hint
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), key)


def test_a_config_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    """A run.yaml saved as UTF-16 (as Windows editors may) was a UnicodeDecodeError traceback from `pa apply`."""
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\n", encoding="utf-16")
    with pytest.raises(InvalidInputError) as caught:
        build_options({}, config)
    assert caught.value.problem.file == str(config) and "not UTF-8 text" in str(caught.value)


@pytest.mark.parametrize("name", ["run.json", "run.yaml"])
def test_a_json_config_indented_with_tabs_is_read_as_json(tmp_path: Path, name: str) -> None:
    """JSON is YAML but for tabs: a config written by `json.dump(..., indent="\\t")` was refused as "invalid YAML:
    found character '\\t' that cannot start any token", .json or not. Read as JSON, a repeated key is still
    refused, and a broken .json file is told its JSON error and line, not YAML's."""
    config = tmp_path / name
    options = {"pack": "general", "model": "tiny", "max_steps": 3, "target_modules": ["q_proj", "v_proj"]}
    config.write_text(json.dumps(options, indent="\t") + "\n")
    built = build_options({}, config)
    assert (built.pack, built.model, built.max_steps, built.target_modules) == ("general", "tiny", 3, ["q_proj", "v_proj"])
    config.write_text('{\n\t"pack": "general",\n\t"model": "tiny",\n\t"max_steps": 3,\n\t"max_steps": 4\n}\n')
    with pytest.raises(InvalidInputError, match="duplicate key 'max_steps'") as caught:
        build_options({}, config)
    assert caught.value.problem.file == str(config)
    (tmp_path / "bad.json").write_text('{\n\t"pack": "general",\n\t"model": "tiny",\n}\n')
    with pytest.raises(InvalidInputError, match="invalid JSON") as caught:
        build_options({}, tmp_path / "bad.json")
    assert caught.value.problem.where == "line 4"


@pytest.mark.parametrize("name, text, what", [
    ("run.json", "null\n", "null"), ("run.yaml", "null\n", "null"), ("run.yaml", "~\n", "null"),
    ("run.yaml", "", "empty"), ("run.yaml", "# pack: general\n\n", "empty"), ("run.json", "[]", "a list"),
    ("run.json", '"general"', "text"), ("run.yaml", "3\n", "3")])
def test_a_config_that_is_not_a_mapping_is_refused_saying_what_it_is(tmp_path: Path, name: str, text: str,
                                                                     what: str) -> None:
    """A JSON `null` was taken for "not JSON", read again as YAML and, like an empty YAML file or one of comments
    only, read as no options: `--config` naming the wrong or an unsaved file ran on the command line alone."""
    config = tmp_path / name
    config.write_text(text)
    with pytest.raises(InvalidInputError, match=f"config is {what}: a config must be a mapping") as caught:
        build_options({"pack": "general", "model": "tiny"}, config)
    assert caught.value.problem.file == str(config)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_number_that_is_not_finite_in_a_json_config_is_refused_naming_its_key(tmp_path: Path, value: str) -> None:
    """Python's JSON reads `NaN` and `Infinity` as YAML reads `.nan` and `.inf`, and each float option must refuse
    them by its key: `min_score: Infinity` kept nothing and `-Infinity` everything, without a word."""
    floats = [f.name for f in fields(ApplyOptions) if "float" in str(f.type)]
    assert "min_score" in floats and "learning_rate" in floats
    config = tmp_path / "run.json"
    for key in floats:
        config.write_text(f'{{"pack": "general", "model": "tiny", "{key}": {value}}}')
        with pytest.raises(InvalidInputError) as caught:
            build_options({}, config)
        assert (caught.value.problem.file, caught.value.problem.where) == (str(config), key), key


def test_a_yaml_config_indented_with_a_tab_is_told_to_use_spaces(tmp_path: Path) -> None:
    """A YAML syntax error's hint was "fix the YAML syntax", whatever the error: a tab is named as the cause."""
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nlora:\n\tr: 8\n")
    with pytest.raises(InvalidInputError, match="found character") as caught:
        build_options({}, config)
    assert caught.value.problem.hint.startswith("indent with spaces, not tabs")


def test_a_config_that_is_a_directory_is_called_one(tmp_path: Path) -> None:
    """`--config DIR` was "config file not found", though DIR is right there."""
    with pytest.raises(InvalidInputError, match="a directory, not a config file") as caught:
        build_options({}, tmp_path)
    assert caught.value.problem.file == str(tmp_path)
    with pytest.raises(InvalidInputError, match="config file not found"):
        build_options({}, tmp_path / "run.yaml")


def test_config_help_names_every_option_with_no_flag() -> None:
    """`pa apply --help` is where a user learns the --config keys that have no command-line flag."""
    import typer

    command = typer.main.get_command(app).commands["apply"]  # type: ignore[attr-defined]
    config_help = next(p.help for p in command.params if p.name == "config")
    flags = {p.name for p in command.params}
    renamed = {"top_n", "learning_rate", "num_epochs", "gradient_accumulation_steps", "progress", "explicit", "flags"}
    missing = [f.name for f in fields(ApplyOptions) if f.name not in flags | renamed and f.name not in config_help]
    assert not missing, f"--config help does not name {missing}"


def test_the_backend_is_one_spelling_so_vllm_also_runs_the_rollouts(tmp_path: Path) -> None:
    """`--backend vLLM` ran synthesis and filtering on vLLM (their backend lookup lowercases) but the
    trainer's rollouts on transformers (`"vLLM" == "vllm"` is false); a misspelt backend failed only
    when synthesis started, after the run directory was made."""
    from policyalign.apply import _distill_overrides

    options = build_options({"pack": "general", "model": "tiny", "backend": " vLLM"}, None)
    assert options.backend == "vllm" and _distill_overrides(options)["use_vllm"] is True
    with pytest.raises(InvalidInputError, match="unknown generation backend 'vlm'"):
        build_options({"pack": "general", "model": "tiny", "backend": "vlm"}, None)
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--backend", "vlm", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--backend", "vLLM", "--device", "cpu",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "need a CUDA GPU" in result.output, "refused before synthesis, not during it"
    assert not (tmp_path / "run" / "instructions.jsonl").exists()


def test_epochs_given_for_tiny_are_not_capped_by_its_demo_max_steps() -> None:
    """`pa apply general --model tiny --epochs 2` trained tiny's 60 demo steps: its max_steps default
    was set because --max-steps was not given, and max_steps wins over epochs in the trainer."""
    from policyalign.apply import _distill_overrides, with_model_defaults

    options = with_model_defaults(build_options({"pack": "general", "model": "tiny", "num_epochs": 2.0}, None))
    assert options.max_steps is None and options.eval_limit == 12, "the other demo defaults still apply"
    assert _distill_overrides(options)["num_epochs"] == 2.0
    assert with_model_defaults(build_options({"pack": "general", "model": "tiny"}, None)).max_steps == 60


def test_epochs_on_the_command_line_win_over_the_config_files_max_steps(tmp_path: Path) -> None:
    """`max_steps: 2` in --config plus `--epochs 1` trained 2 steps: the file's max_steps stopped the trainer
    whatever the epochs, though the command line wins over the file."""
    from policyalign.apply import _distill_overrides, with_model_defaults
    from policyalign.stages import distill_config

    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nmax_steps: 2\n")
    pack = Registry.default().load("general")
    options = with_model_defaults(build_options({"num_epochs": 1.0}, config))
    settings = distill_config(pack, _distill_overrides(options))
    assert (settings.num_epochs, settings.max_steps) == (1.0, -1) and "max_steps" not in options.explicit
    options = with_model_defaults(build_options({"num_epochs": 1.0, "max_steps": 3}, config))
    assert distill_config(pack, _distill_overrides(options)).max_steps == 3, "both given: max_steps still caps"
    assert with_model_defaults(build_options({}, config)).max_steps == 2, "no flag: the file's length stands"


def test_null_in_the_config_file_is_the_key_left_out(tmp_path: Path) -> None:
    """`n: null` or a blank `max_steps:` counted as given: tiny's demo defaults were skipped for them, so the
    demo synthesized the pack's full count and trained for whole epochs; `seed: null` was a type error. Null is
    the default for every option but the model and the pack, which have none: there it names the file and key."""
    from policyalign.apply import with_model_defaults

    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nn: null\nmax_steps:\nnum_epochs: null\nkeep: null\n")
    options = with_model_defaults(build_options({}, config))
    assert (options.n, options.max_steps, options.keep) == (4, 60, 0.8) and not options.explicit & {"n", "max_steps"}
    assert build_options({"max_steps": 5}, config).max_steps == 5
    config.write_text("pack: general\nmodel: tiny\nseed: null\nheldout:\njudge: null\n")
    options = with_model_defaults(build_options({}, config))
    assert (options.seed, options.heldout, options.judge) == (0, 0.2, "refusal")
    config.write_text("pack: general\nmodel: null\n")
    with pytest.raises(InvalidInputError, match="model: expected a string, got None") as caught:
        build_options({}, config)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), "model")


def test_one_option_spelt_with_dash_and_underscore_in_the_config_file_is_refused(tmp_path: Path) -> None:
    """`max_steps: 5` and `max-steps: 7` passed the duplicate-key check (two YAML keys), and the last silently won."""
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nmax_steps: 5\nmax-steps: 7\n")
    with pytest.raises(InvalidInputError, match="'max_steps' and 'max-steps' are the same option") as caught:
        build_options({}, config)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), "max-steps")


def test_the_default_run_directory_names_the_model_in_one_spelling(tmp_path: Path) -> None:
    """`--model Tiny` (or `qwen2.5-7b`) resolves to the model `--model tiny` ran, yet its default run directory
    was named as typed: a new run that re-ran every stage instead of resuming the finished one."""
    from policyalign.apply import default_run_dir

    pack = Registry.default().load("general")
    assert {default_run_dir(pack, name) for name in ("tiny", "Tiny", " TINY ")} == {Path("runs/general-1.0.0-tiny")}
    assert {default_run_dir(pack, name) for name in ("Qwen2.5-7B", "qwen2.5-7b")} == {Path("runs/general-1.0.0-Qwen2.5-7B")}
    assert default_run_dir(pack, "qwen2.5-7b@v1") == Path("runs/general-1.0.0-Qwen2.5-7B-v1")
    assert default_run_dir(pack, "Qwen/Qwen2.5-7B-Instruct") == Path("runs/general-1.0.0-Qwen-Qwen2.5-7B-Instruct")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert default_run_dir(pack, str(tmp_path / "m")).name.endswith(str(tmp_path / "m").replace("/", "-").strip("-"))


def test_a_home_directory_in_the_config_file_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`out: ~/runs/demo` in run.yaml (no shell to expand it) ran into a directory named `~` under the current one,
    while the Trainer, which expands it, wrote the checkpoints under the home directory: a resume found none."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shutil.copytree(Path(__file__).parent.parent / "packs" / "general", tmp_path / "home" / "packs" / "general")
    config = tmp_path / "run.yaml"
    config.write_text("pack: ~/packs/general\nmodel: tiny\nout: ~/runs/demo\n")
    options = build_options({}, config)
    assert (options.out, options.pack) == (tmp_path / "home" / "runs" / "demo", str(tmp_path / "home" / "packs" / "general"))


def test_relative_paths_in_the_config_file_are_read_from_its_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa apply --config runs/med.yaml` run from another directory read the file's `pack: ./medical` and
    `out: med` from the current directory: another pack (or none) was trained, the run written elsewhere. The
    file's relative paths are read from its directory; names, and the command line's paths, are not."""
    runs = tmp_path / "project" / "runs"
    shutil.copytree(Path(__file__).parent.parent / "packs" / "general", runs / "general-copy")
    for name in ("model", "judge"):
        (runs / name).mkdir()
    config = runs / "med.yaml"
    config.write_text("pack: ./general-copy\nmodel: model\ngenerator: ./gen\nout: med\njudge: llm:judge\n")
    monkeypatch.chdir(tmp_path)
    options = build_options({}, Path("project/runs/med.yaml"))
    assert (options.pack, options.model, options.generator, options.out, options.judge) == (
        "./project/runs/general-copy", "./project/runs/model", "./project/runs/gen", Path("project/runs/med"),
        "llm:./project/runs/judge")
    assert build_options({"out": Path("here"), "model": "./m"}, Path("project/runs/med.yaml")).out == Path("here")
    assert build_options({"model": "./m"}, Path("project/runs/med.yaml")).model == "./m", "the command line's, from cwd"
    config.write_text("pack: general\nmodel: Qwen2.5-7B\ngenerator: tiny\njudge: refusal\n")
    options = build_options({}, config)
    assert (options.pack, options.model, options.generator, options.judge) == ("general", "Qwen2.5-7B", "tiny", "refusal")


@pytest.mark.parametrize("text", ["private: true", "revision: v2"])
def test_push_settings_in_the_config_file_without_push_to_are_named_as_its_keys(tmp_path: Path, text: str) -> None:
    """`private: true` in run.yaml without push_to said "--private only applies with --push-to ... or drop --private",
    a flag the user never typed, naming no file."""
    key = text.split(":")[0]
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{text}\n")
    with pytest.raises(InvalidInputError, match=f"{key} only applies with push_to") as caught:
        build_options({}, config)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), key)
    assert build_options({"push_to": "acme/adapter"}, config).push_to == "acme/adapter", "--push-to supplies it"


def test_an_empty_out_is_refused_rather_than_running_over_the_current_directorys_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out ""` (an unset shell variable) is the current directory: the run wrote its model card over
    the README.md there, and its instructions, adapter and eval files among the project's."""
    pack = str(Path(__file__).parent.parent / "packs" / "general")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("a project\n")
    result = CliRunner().invoke(app, ["apply", pack, "--model", "tiny", "--out", ""])
    assert result.exit_code == 1 and "not a run directory" in result.output
    assert (tmp_path / "README.md").read_text() == "a project\n" and not (tmp_path / "run.json").exists()


def test_a_model_that_does_not_resolve_leaves_no_run_directory(tmp_path: Path) -> None:
    """`pa apply general --model ./mdoel` made the run directory, and run.json in it, before the model was
    resolved: `pa runs` listed the empty run left behind."""
    result = CliRunner().invoke(app, ["apply", "general", "--model", str(tmp_path / "mdoel"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "model directory not found" in result.output
    assert not (tmp_path / "run").exists()


def test_a_hub_model_missing_offline_leaves_no_run_directory_and_an_earlier_run_untouched(
        tmp_path: Path, offline_hub: object) -> None:
    """`pa apply general --model Qwen2.5-7B` offline, the model not in the cache, failed at once but only once
    synthesis loaded it: it left a run directory that `pa runs` listed as "failed at synthesize". The model is
    now looked for before the directory is made, as the judge is, and an earlier run's directory is not touched."""
    from policyalign.run import record_inputs

    out = tmp_path / "run"
    args = ["apply", "general", "--model", "acme/absent-model", "--out", str(out)]
    for command in (args, ["synthesize", "general", "--model", "acme/absent-model", "--out", str(out)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1 and "--model: acme/absent-model is not in the local Hugging Face cache" in result.output
        assert not out.exists()
    record_inputs(out, Registry.default().load("general"), "acme/absent-model")  # an earlier run, its model since gone
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "not in the local Hugging Face cache" in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("line", ["model: ./mdoel", "generator: ./gen", "judge: llm:./judge", "judge: guard:empty"])
def test_a_config_files_model_that_does_not_resolve_is_named_by_the_file_and_key(tmp_path: Path, line: str) -> None:
    """`generator: ./gen` (or the model, or an llm:/guard: judge directory) missing from where run.yaml says was
    "model directory not found: .../gen", naming neither the file nor the key, and the judge's "--judge llm:...",
    a flag never typed. The command line's are still named by their flags."""
    from policyalign.apply import _checked_settings

    (tmp_path / "empty").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\n{'' if line.startswith('model') else 'model: tiny'}\n{line}\n")
    key = line.split(":")[0]
    with pytest.raises(InvalidInputError) as caught:
        _checked_settings(build_options({}, config), Registry.default().load("general"))
    assert caught.value.problem.message.startswith(f"{key} in {config}: "), caught.value.problem.message
    assert re.search("model directory not found|no config.json", caught.value.problem.message)
    result = CliRunner().invoke(app, ["apply", "--config", str(config), "--out", str(tmp_path / "run"),
                                      f"--{key}", line.split(": ")[1].replace("./", "./x-")])
    assert result.exit_code == 2 and f"--{key}" in result.output and str(config) not in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--n", "--rounds"])
def test_a_synthesis_count_below_one_leaves_no_run_directory(tmp_path: Path, flag: str) -> None:
    """`pa apply general --model tiny --n 0` was refused only by the synthesize stage, after the run directory
    and its run.json were made: `pa runs` listed the empty run left behind."""
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", flag, "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and flag in result.output
    assert not (tmp_path / "run").exists()


def test_pa_apply_target_modules_is_checked_against_the_model_before_any_stage(tmp_path: Path) -> None:
    """`pa apply` had no --target-modules (only `target_modules:` in --config) though `pa distill` has one; given
    now, a misspelt module is refused before synthesis, naming the flag, as the pack's and the file's are."""
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--target-modules", "q_prj",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "LoRA target modules ['q_prj']: no such module in tiny" in result.output
    assert "--target-modules" in result.output and "--config" not in result.output
    assert not (tmp_path / "run").exists(), "no stage ran"


def test_pa_apply_target_modules_and_kl_top_k_reach_the_training_settings(tmp_path: Path) -> None:
    """The comma-separated --target-modules (spaces allowed) and --kl-top-k are the settings `pa distill`'s flags give."""
    from policyalign.apply import _distill_overrides

    options = build_options({"pack": "general", "model": "tiny", "target_modules": None, "kl_top_k": None}, None)
    assert options.target_modules is None and options.kl_top_k is None
    from policyalign.distill_settings import target_module_names

    options = build_options({"pack": "general", "model": "tiny", "kl_top_k": 8,
                             "target_modules": target_module_names("q_proj, v_proj")}, None)
    overrides = _distill_overrides(options)
    assert (overrides["target_modules"], overrides["top_k"]) == (("q_proj", "v_proj"), 8)
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--kl-top-k", "-1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--kl-top-k -1" in result.output
    assert not (tmp_path / "run").exists()


def test_target_modules_as_one_string_in_the_config_file_is_read_as_the_command_line_reads_it(tmp_path: Path) -> None:
    """`target_modules: q_proj,v_proj` (what --target-modules takes) was refused as "'q_proj,v_proj' is not valid
    under any of the given schemas", the pack schema's words, with no hint of the fix; a single misspelt name got the
    same. Now it is the command line's reading, a misspelt name is told its closest module, and an empty one the
    forms that work."""
    from policyalign.apply import _checked_settings
    from policyalign.distill_settings import target_module_names

    config = tmp_path / "run.yaml"
    for text, targets in (("q_proj,v_proj", ("q_proj", "v_proj")), ("'q_proj, v_proj'", ("q_proj", "v_proj")),
                          ("all-linear", "all-linear")):
        config.write_text(f"pack: general\nmodel: tiny\ntarget_modules: {text}\n")
        assert build_options({}, config).target_modules == targets == target_module_names(text.strip("'"))
    config.write_text("pack: general\nmodel: tiny\ntarget_modules: qproj\n")
    with pytest.raises(InvalidInputError, match="no such module in tiny") as caught:
        _checked_settings(build_options({}, config), Registry.default().load("general"))
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), "target_modules[0]")
    assert "did you mean 'q_proj'" in caught.value.problem.hint
    config.write_text("pack: general\nmodel: tiny\ntarget_modules: ','\n")
    with pytest.raises(InvalidInputError, match="expected all-linear or module names .* comma-separated") as caught:
        build_options({}, config)
    assert "schemas" not in str(caught.value) and "`target_modules: [q_proj, v_proj]`" in caught.value.problem.hint


def test_an_ema_decay_without_the_ema_teacher_is_refused_before_any_stage(tmp_path: Path) -> None:
    """`--ema-decay 0.5` (or `ema_decay: 0.5` in --config) without `--teacher ema` trained against the base teacher,
    the rate silently unused; with the EMA teacher it is taken."""
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--ema-decay", "0.5", "--out", str(run)])
    assert result.exit_code == 2 and "--ema-decay applies only with --teacher ema" in result.output
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nema_decay: 0.5\n")
    result = CliRunner().invoke(app, ["apply", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 2 and "applies only with --teacher ema" in result.output
    assert not run.exists(), "no stage ran"
    from policyalign.apply import _checked_settings

    with pytest.raises(InvalidInputError) as caught:  # the file named, as its other values' errors name it
        _checked_settings(build_options({}, config), Registry.default().load("general"))
    assert str(caught.value.problem).startswith(f"ema_decay in {config} applies only with --teacher ema")
    options = build_options({"teacher": "ema"}, config)

    assert _checked_settings(options, Registry.default().load("general"))[1].ema_decay == 0.5


def test_private_without_push_to_is_refused_before_any_stage(tmp_path: Path) -> None:
    """`pa apply ... --private` without --push-to trained and published nothing private, without a word."""
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--private", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--private only applies with --push-to" in result.output
    assert not (tmp_path / "run" / "instructions.jsonl").exists()


@pytest.mark.parametrize("line, message", [("out: f.txt", "{base}/f.txt is not a directory"),
                                           ("out: f.txt/run", "{base}/f.txt/run is not a directory"),
                                           ("push_to: 'bad id'", "invalid repository id 'bad id'$"),
                                           ("revision: main", "invalid revision tag 'main': it names the main branch"),
                                           ("license: 'x y'", "invalid license id 'x y'$")])
def test_a_config_files_bad_value_is_named_by_the_file_and_key_not_as_a_flag(tmp_path: Path, line: str,
                                                                             message: str) -> None:
    """`out: f.txt` naming a file was "--out .../f.txt is not a directory" (a flag never typed), `license: x y`
    "(--license)" and `push_to: bad id` named no file. Each check names the value itself, `KEY in FILE`:
    the caller no longer rewrites their messages afterwards (dropping `--out `, ` (--license)`), hung on each wording."""
    (tmp_path / "f.txt").write_text("not a run\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{line}\n")
    with pytest.raises(InvalidInputError) as caught:
        build_options({}, config)
    problem, key = caught.value.problem, line.split(":")[0]
    assert problem.message.startswith(f"{key} in {config}: "), problem.message
    assert re.search(message.format(base=re.escape(str(tmp_path))), problem.message), problem.message
    assert "--" not in problem.message + problem.hint
    assert build_options({"push_to": "me/x", key: "other" if key == "license" else "me/x" if key == "push_to" else
                          "v2" if key == "revision" else str(tmp_path / "run")}, config), \
        "the command line's value wins over the file's, unchecked"


def test_a_bad_push_value_on_the_command_line_is_named_by_its_flag(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The same checks name a flag's value by the flag, over a config file's value too."""
    import huggingface_hub.constants

    from policyalign.apply import _checked_settings

    monkeypatch.setenv("HF_TOKEN", "hf_notarealtokenbutpresent")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\npush_to: me/x\nlicense: mit\n")
    pack = Registry.default().load("general")
    for given, message in (({"push_to": "bad id"}, "--push-to: invalid repository id 'bad id'"),
                           ({"revision": "a..b"}, "--revision: invalid revision tag 'a..b'"),
                           ({"license": "x y"}, "--license: invalid license id 'x y'")):
        with pytest.raises(InvalidInputError) as caught:
            _checked_settings(build_options(given, config), pack)
        assert caught.value.problem.message == message


def test_a_default_push_tag_the_hub_cannot_take_fails_before_training(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa apply --push-to` checked only a given --revision before training: the default tag, made from the pack's
    name and version (`p-v1.0.0-x.lock`, which ends in .lock), failed the push after training, as "--revision"."""
    import huggingface_hub.constants
    from hubcli import make_pack

    from policyalign.apply import _checked_settings
    from policyalign.pack import load_pack

    monkeypatch.setenv("HF_TOKEN", "hf_notarealtokenbutpresent")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    pack = load_pack(make_pack(tmp_path, "locked", version="1.0.0-x.lock"))
    options = build_options({"pack": str(pack.root), "model": "tiny", "push_to": "me/x"}, None)
    with pytest.raises(InvalidInputError) as caught:
        _checked_settings(options, pack)
    assert caught.value.problem.message == ("the default tag 'locked-v1.0.0-x.lock', made from pack locked@1.0.0-x.lock, "
                                            "is not a valid revision tag")
    assert _checked_settings(build_options({"pack": str(pack.root), "model": "tiny", "push_to": "me/x",
                                            "revision": "locked-x"}, None), pack)


def test_config_values_of_the_wrong_type_fail_before_any_stage_runs(tmp_path: Path) -> None:
    """`seed: abc` used to run synthesis and evaluation for minutes, then crash in distillation."""
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nseed: abc\nn: '4'\nprivate: 'yes'\ntarget_modules: 5\nkeep: 0.5\n")
    with pytest.raises(InvalidInputError, match="seed: expected an integer, got 'abc'") as caught:
        build_options({}, config)
    problem = caught.value.problem
    assert problem.file == str(config) and problem.where == "seed, n, private, target_modules", "every bad key, keep is fine"
    assert "`seed: 1`" in problem.hint
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 2 and "seed: expected an integer" in result.output
    assert not run.exists(), "no stage ran"
    for bad in ("keep: true", "lora_r: 2.5", "model: null", "out: 5", "target_modules: [q_proj, 3]"):
        config.write_text(f"pack: general\nmodel: tiny\n{bad}\n")
        with pytest.raises(InvalidInputError, match=bad.split(":")[0]):
            build_options({}, config)
    # An int is a float where a float is expected; null only where the option allows it; names as a string or a list.
    config.write_text("pack: general\nmodel: tiny\nkeep: 1\nlora_dropout: null\nout: runs/x\nprivate: yes\npush_to: acme/x\n"
                      "target_modules: [q_proj, v_proj]\n")
    options = build_options({}, config)
    assert options.keep == 1.0 and isinstance(options.keep, float) and options.lora_dropout is None
    assert options.out == tmp_path / "runs/x" and options.private is True and options.target_modules == ["q_proj", "v_proj"]


def test_a_bad_report_to_in_the_config_is_shown_a_report_to_example(tmp_path: Path) -> None:
    """`report_to: []` (or `[1]`) was told to write `report_to: [q_proj, v_proj]`, target_modules' example."""
    config = tmp_path / "run.yaml"
    for bad in ("[]", "[1]", "5"):
        config.write_text(f"pack: general\nmodel: tiny\nreport_to: {bad}\n")
        with pytest.raises(InvalidInputError) as caught:
            build_options({}, config)
        assert caught.value.problem.where == "report_to"
        assert "`report_to: [tensorboard]`" in caught.value.problem.hint and "q_proj" not in caught.value.problem.hint


def test_a_bad_pa_dtype_fails_before_any_stage_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found once synthesis loaded its model, `PA_DTYPE=int8 pa apply` left a run whose synthesis failed."""
    monkeypatch.setenv("PA_DTYPE", "int8")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--out", str(run)])
    assert result.exit_code == 2 and "PA_DTYPE=int8" in result.output  # invalid input, as a bad PA_PACKS_PATH
    assert not run.exists(), "no stage ran"


def test_config_values_out_of_range_are_named_as_the_files_keys(tmp_path: Path) -> None:
    """`batch_size: 0` in run.yaml used to be reported as `--batch-size 0`, a flag the user never typed."""
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nkl_top_k: -1\n")
    with pytest.raises(InvalidInputError, match="kl_top_k: -1") as caught:
        build_options({}, config)
    problem = caught.value.problem
    assert problem.file == str(config) and problem.where == "kl_top_k" and "--" not in str(caught.value)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 2 and "kl_top_k: -1" in result.output and str(config) in result.output
    assert not run.exists(), "no stage ran"


@pytest.mark.parametrize("key", ["eval_max_new_tokens", "synth_max_new_tokens", "gen_batch_size", "eval_limit", "n",
                                 "rounds", "save_steps"])
def test_config_counts_below_one_are_named_before_any_stage(tmp_path: Path, key: str) -> None:
    """`eval_max_new_tokens: 0` failed at the first evaluation, after synthesis and filtering, as "max_new_tokens";
    `eval_limit: 0` was "--eval-limit must be at least 1", naming neither the file nor its key."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{key}: 0\n")
    with pytest.raises(InvalidInputError, match=f"{key}: 0: must be at least 1") as caught:
        build_options({}, config)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), key)


@pytest.mark.parametrize("key, bound", [("n", 1000), ("rounds", 100)])
def test_config_synthesis_counts_past_the_schema_bound_are_named_as_the_files_key(tmp_path: Path, key: str,
                                                                                  bound: int) -> None:
    """`rounds: 100000000` ran synthesis silently until memory ran out; refused, it must name the file's key."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{key}: 100000000\n")
    with pytest.raises(InvalidInputError, match=f"{key}: 100000000: must be at most {bound}") as caught:
        build_options({}, config)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), key)

@pytest.mark.parametrize("text, message", [("backend: foo", "backend: unknown generation backend 'foo'"),
                                           ("judge: bogus", "judge: unknown judge 'bogus'"),
                                           ("device: gpu", "device: unknown device 'gpu'")])
def test_a_config_backend_judge_or_device_that_is_unknown_is_named_as_the_files_key(tmp_path: Path, text: str,
                                                                                   message: str) -> None:
    """`backend: foo`, `judge: bogus` and `device: gpu` in run.yaml were refused naming no file (the judge as
    "--judge", a flag the user never typed)."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{text}\n")
    with pytest.raises(PolicyAlignError) as caught:
        build_options({}, config)
    key = text.split(":")[0]
    assert caught.value.problem.message == message
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), key)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_config_seed_out_of_range_is_named_as_the_files_key(tmp_path: Path, seed: int) -> None:
    """`seed: -1` (and `save_steps: 0`, above) in run.yaml were "--seed -1: must be between ...", a flag the user
    never typed, in a message naming no file: neither is in the pack schema's training section, which the file is held to."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\nseed: {seed}\n")
    with pytest.raises(InvalidInputError, match=f"seed: {seed}: must be between 0 and 4294967295") as caught:
        build_options({}, config)
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), "seed")


@pytest.mark.parametrize("text, message, where", [
    ("keep: 1.5", "keep must be in (0, 1], got 1.5", "keep"),
    ("top_n: 0", "top_n must be at least 1, got 0", "top_n"),
    ("heldout: 1", "heldout must be in [0, 1), got 1.0", "heldout"),
    ("top_n: 3\nmin_score: 0.2", "top_n and min_score are different selection rules; only one can apply",
     "top_n, min_score"),
    ("keep: 0.3\ntop_n: 5", "keep and top_n are different selection rules; only one can apply", "keep, top_n"),
    ("keep: 0.3\nno_filter: true", "keep and no_filter are different selection rules; only one can apply",
     "keep, no_filter"),
])
def test_config_filter_settings_out_of_bounds_are_named_as_the_files_keys(tmp_path: Path, text: str, message: str,
                                                                         where: str) -> None:
    """`keep: 1.5` in run.yaml said "--keep must be in (0, 1]", naming neither the file nor the key; `keep: 0.3`
    with `top_n: 5` (or no_filter: true) "--keep and --top-k are different selection rules", flags never typed."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: general\nmodel: tiny\n{text}\n")
    with pytest.raises(InvalidInputError) as caught:
        build_options({}, config)
    problem = caught.value.problem
    assert (problem.message, problem.file, problem.where) == (message, str(config), where)


def test_a_refused_option_leaves_no_run_directory_behind(tmp_path: Path, fixture_packs: Path) -> None:
    """`pa apply --keep 1.5` made the run directory and its run.json before refusing: `pa runs` then listed an empty run."""
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", str(fixture_packs / "child-pack"), "--model", "tiny", "--out", str(run),
                                      "--keep", "1.5", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 2 and "--keep must be in (0, 1], got 1.5" in result.output
    assert not run.exists()


def test_config_numbers_in_scientific_notation_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads `1e-4` as a string: `learning_rate: 1e-4` was refused as "expected a number"."""
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nlearning_rate: 1e-4\nmin_score: 2E+3\nheldout: .5e0\n")
    options = build_options({}, config)
    assert (options.learning_rate, options.min_score, options.heldout) == (1e-4, 2000.0, 0.5)
    config.write_text("pack: general\nmodel: tiny\nlearning_rate: '1e-4'\n")
    with pytest.raises(InvalidInputError, match="learning_rate: expected a number or null, got '1e-4'"):
        build_options({}, config)


def test_tiny_defaults_never_override_explicit_options(tmp_path: Path) -> None:
    from policyalign.apply import TINY_DEFAULTS, with_model_defaults

    options = with_model_defaults(ApplyOptions(pack="general", model="tiny", max_steps=3, explicit={"max_steps"}))
    assert options.max_steps == 3 and options.eval_limit == TINY_DEFAULTS["eval_limit"]
    real = with_model_defaults(ApplyOptions(pack="general", model="Qwen2.5-7B"))
    assert real.max_steps is None and real.eval_limit is None
    # An explicit selection rule replaces the demo's --keep rather than clashing with it.
    top = with_model_defaults(ApplyOptions(pack="general", model="tiny", top_n=5, explicit={"top_n"}))
    assert top.keep is None and top.top_n == 5
    zero = with_model_defaults(ApplyOptions(pack="general", model="tiny", min_score=0.0, explicit={"min_score"}))
    assert zero.keep is None and zero.min_score == 0.0, "--min-score 0 is a rule too"
    assert with_model_defaults(ApplyOptions(pack="general", model="tiny", explicit={"no_filter"})).keep == TINY_DEFAULTS["keep"]


def _wait_for_stage(run: Path, name: str, proc: subprocess.Popen, timeout: float = 240) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            stages = json.loads((run / "run.json").read_text())["stages"]
        except (OSError, ValueError, KeyError):
            stages = {}
        if stages.get(name, {}).get("status") == "running":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_killing_apply_at_any_stage_then_rerunning_completes(tmp_path: Path, fixture_packs: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "policyalign", "apply", str(fixture_packs / "child-pack"), "--model", "tiny",
           "--out", str(run), "--quiet", *FAST, "--max-steps", "12"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed_in = []
    for stage_name, delay in [("synthesize", 0.3), ("filter", 0.5), ("eval_before", 0.2), ("distill", 3.0),
                              ("eval_after", 0.2)]:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_for_stage(run, stage_name, proc):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            killed_in.append(stage_name)
        proc.wait(timeout=300)
    assert len(killed_in) >= 3, f"the kills landed in too few stages: {killed_in}"
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    _check_complete(run)


def test_runs_lists_status_and_metrics(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "inputs": {"pack": {"name": "general", "version": "1.0.0"}, "model": "tiny"},
        "stages": {"synthesize": {"status": "done", "results": {"instructions": 10}},
                   "filter": {"status": "running"}}}))
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["status"] == "interrupted in filter" and row["instructions"] == 10 and row["pack"] == "general@1.0.0"


def _runs_status(root: Path) -> str:
    result = CliRunner().invoke(app, ["runs", str(root), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)[0]["status"]


def test_runs_names_the_latest_of_a_failure_and_a_later_interruption(tmp_path: Path) -> None:
    """An evaluation that failed once stays recorded as failed while a later attempt (another --seed) is killed
    in synthesis, and `pa runs` said "failed at eval_after", whatever happened last."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    stages = {name: {"status": "done", "started": 100.0} for name in ("filter", "eval_before", "distill", "card")}
    stages |= {"synthesize": {"status": "interrupted", "started": 300.0},
               "eval_after": {"status": "failed", "started": 200.0}}
    manifest = {"inputs": {"pack": {"name": "general", "version": "1.0.0"}, "model": "tiny"}, "stages": stages}
    (run / "run.json").write_text(json.dumps(manifest))
    assert _runs_status(tmp_path / "runs") == "interrupted in synthesize"
    stages["eval_after"]["started"] = 400.0
    (run / "run.json").write_text(json.dumps(manifest))
    assert _runs_status(tmp_path / "runs") == "failed at eval_after"


def test_runs_calls_a_run_whose_selection_changed_after_training_outdated(tmp_path: Path) -> None:
    """`pa filter RUN --top-k 10` on a finished run selected anew, and `pa runs` called the run complete beside
    the internalization and eval numbers of the adapter trained on the old selection."""
    from policyalign.io import sha256_file

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    for name in ("instructions", "selected", "heldout"):
        (run / f"{name}.jsonl").write_text(json.dumps({"id": name}) + "\n")
    stages = {name: {"status": "done"} for name in ("synthesize", "eval_before", "eval_after", "card")}
    stages["filter"] = {"status": "done", "instructions": sha256_file(run / "instructions.jsonl")}
    stages["distill"] = {"status": "done", "settings": {"selected": sha256_file(run / "selected.jsonl"),
                                                        "heldout": sha256_file(run / "heldout.jsonl"), "lora_r": 16}}
    (run / "run.json").write_text(json.dumps({"inputs": {"pack": {"name": "general", "version": "1.0.0"},
                                                         "model": "tiny"}, "stages": stages}))
    assert _runs_status(tmp_path / "runs") == "complete"
    (run / "selected.jsonl").write_text(json.dumps({"id": "another selection"}) + "\n")
    assert _runs_status(tmp_path / "runs") == "outdated from distill"
    table = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")])
    assert "distill's inputs changed after it ran" in table.output and "re-run `pa apply` on this run" in table.output
    (run / "instructions.jsonl").write_text(json.dumps({"id": "synthesized again"}) + "\n")
    assert _runs_status(tmp_path / "runs") == "outdated from filter"


def _table_column(output: str, index: int) -> str:
    """The text of one column of a rich table holding one row, its wrapped pieces joined (spaces dropped)."""
    body = output.split("┡", 1)[1].splitlines()[1:]
    return "".join(line.split("│")[index + 1].replace(" ", "") for line in body if line.startswith("│"))


def _interrupted_in_filter(run: Path) -> None:
    """A run of election-integrity@1.0.0 whose filter stage was left running (no process holds it)."""
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "inputs": {"pack": {"name": "election-integrity", "version": "1.0.0"}, "model": "tiny"},
        "stages": {"synthesize": {"status": "done", "results": {"instructions": 10}}, "filter": {"status": "running"}}}))


def test_runs_table_never_cuts_the_run_pack_or_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 80 columns (or in a log) `pa runs` printed "/tmp/j… electi… comple…": which run, which status?"""
    monkeypatch.setenv("COLUMNS", "80")
    run = tmp_path / "runs" / "elections-1.0.0-qwen2.5-7b-instruct"
    _interrupted_in_filter(run)
    result = CliRunner().invoke(app, ["runs", str(run)])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert _table_column(result.output, 0) == str(run)
    assert _table_column(result.output, 1) == "election-integrity@1.0.0"
    assert _table_column(result.output, 3) == "interruptedinfilter"


def test_runs_piped_shows_each_run_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped (`pa runs | grep NAME`), the table was 80 columns wide, so a run's path, pack and status were folded
    over lines and grep found pieces of them; without COLUMNS it is as wide as its rows."""
    monkeypatch.delenv("COLUMNS", raising=False)
    run = tmp_path / "runs" / "elections-1.0.0-qwen2.5-7b-instruct-with-a-long-name-as-sweeps-give-them"
    _interrupted_in_filter(run)
    result = CliRunner().invoke(app, ["runs", str(run)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if str(run) in line)
    assert "election-integrity@1.0.0" in row and "interrupted in filter" in row, result.output


def test_runs_lists_an_unreadable_run_beside_the_others(tmp_path: Path) -> None:
    """One hand-edited run.json used to stop `pa runs` with an error, hiding every other run."""
    for name, text in (("good", json.dumps({"inputs": {"model": "tiny"}, "stages": {}})), ("bad", "{")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "run.json").write_text(text)
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    bad, good = json.loads(result.stdout)
    assert good["status"] == "empty" and bad["status"] == "unreadable"
    assert "run.json:line 1: invalid JSON" in bad["problem"] and set(bad) - {"problem"} == set(good)
    table = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")])
    assert table.exit_code == 0 and "bad: unreadable:" in table.output


def test_runs_lists_a_run_with_a_hand_edited_eval_json_as_unreadable(tmp_path: Path) -> None:
    """An eval.json that is no object (`[1]`), or whose metrics are none, was an AttributeError traceback
    from `pa runs`, which then listed no run at all."""
    for name, text in (("list", "[1]"), ("number", '{"metrics": 5}')):
        run = tmp_path / "runs" / name
        (run / "eval" / "before").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"inputs": {"model": "tiny"}, "stages": {}}))
        (run / "eval" / "before" / "eval.json").write_text(text)
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["status"] for row in rows] == ["unreadable", "unreadable"]
    assert all("eval.json: not an eval.json written by `pa eval`" in row["problem"] for row in rows)


def test_runs_lists_a_run_whose_eval_json_holds_a_rate_that_is_no_number_as_unreadable(tmp_path: Path) -> None:
    """A hand-edited rate ("0.5abc") was a ValueError traceback from `pa runs`' table, listing no run at all."""
    for name, rate in (("text", '"0.5abc"'), ("good", "0.25")):
        run = tmp_path / "runs" / name
        (run / "eval" / "before").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"inputs": {"model": "tiny"}, "stages": {}}))
        (run / "eval" / "before" / "eval.json").write_text('{"metrics": {"overall": {"violation_rate": %s}}}' % rate)
    table = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")])
    assert table.exit_code == 0, table.output
    assert "text: unreadable:" in table.output and "25.0%" in table.output
    good, text = json.loads(CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--json"]).stdout)
    assert good["violation_before"] == 0.25 and text["status"] == "unreadable"
    assert "eval.json:metrics.overall.violation_rate: '0.5abc' is not a rate" in text["problem"]


def test_summary_reports_forbidden_tool_calls_only_for_runs_with_tool_items(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An agent pack's key number (tool calls its policy forbids) was in eval.json but not in the
    table `pa apply` ends with; packs without tool items get no empty row."""
    from policyalign.cli.run_cmds import _summary_table

    run = tmp_path / "run"
    (run / "eval" / "before").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"inputs": {"model": "tiny"}, "stages": {}}))
    overall = {"violation_rate": 0.5, "over_refusal_rate": 0.0, "forbidden_tool_call_rate": 0.25}
    (run / "eval" / "before" / "eval.json").write_text(json.dumps({"metrics": {"overall": overall}}))
    summary = run_summary(run)
    assert (summary["forbidden_calls_before"], summary["forbidden_calls_after"]) == (0.25, None)
    _summary_table(summary)
    assert "forbidden tool calls" in capsys.readouterr().out
    _summary_table({**summary, "forbidden_calls_before": None})
    assert "forbidden tool calls" not in capsys.readouterr().out


def test_runs_refuses_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    """A mistyped path used to read as "no runs found"."""
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "rnus")])
    assert result.exit_code != 0 and "rnus: no such directory" in result.output


def test_runs_given_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    """`pa runs runs/demo/run.json` was told "no such directory" about a file that exists."""
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"inputs": {"model": "tiny"}, "stages": {}}))
    result = CliRunner().invoke(app, ["runs", str(run / "run.json")])
    assert result.exit_code == 2 and "run.json: not a directory" in result.output
    assert f"pass its directory, {run}" in result.output


def test_a_run_directory_keeps_its_pack_and_model(tmp_path: Path, fixture_packs: Path) -> None:
    """`--out` naming another pack's or model's run used to re-run every stage there, replacing its adapter and card."""
    from policyalign.errors import RunError
    from policyalign.run import record_inputs, stage

    registry = Registry([fixture_packs])
    root, child = registry.load("root-pack"), registry.load("child-pack")
    run = tmp_path / "run"
    record_inputs(run, root, "tiny")
    record_inputs(run, child, "tiny")  # nothing ran yet: the directory may still change its mind
    with stage(run, "synthesize", "k"):
        pass
    record_inputs(run, child, "tiny", options={"keep": 0.5})  # the same run again, other options
    for pack, model in ((root, "tiny"), (child, "other-model")):
        with pytest.raises(RunError, match="holds a run of pack 'child-pack' with model 'tiny'") as info:
            record_inputs(run, pack, model)
        assert "choose another --out" in info.value.problem.hint
    assert json.loads((run / "run.json").read_text())["inputs"]["pack"]["name"] == "child-pack"


def test_apply_unknown_pack_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["apply", "generel", "--model", "tiny", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "did you mean 'general'" in result.output


def test_an_empty_selection_stops_apply_before_the_evaluation(tmp_path: Path, fixture_packs: Path) -> None:
    """Filtering that keeps nothing ends the run there, not after an evaluation distillation cannot use."""
    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    with pytest.raises(RunError, match="selected no instructions") as caught:
        apply(_options(fixture_packs, run, min_score=1e9), pack)
    assert caught.value.problem.file == str(run / "selected.jsonl") and "--no-filter" in caught.value.problem.hint
    assert json.loads((run / "run.json").read_text())["stages"]["filter"]["status"] == "done"
    assert not (run / "eval").exists()


@pytest.mark.parametrize("bad, message", [({"save_steps": 0}, "--save-steps 0"),
                                          ({"keep": 0.3, "top_n": 5}, "different selection rules"),
                                          ({"judge": "gpt4"}, "unknown judge 'gpt4'"),
                                          ({"eval_limit": 0}, "--eval-limit must be at least 1")])
def test_bad_settings_of_a_later_stage_fail_before_the_first_stage_runs(tmp_path: Path, fixture_packs: Path,
                                                                        bad: dict, message: str) -> None:
    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    with pytest.raises(InvalidInputError, match=message):
        apply(_options(fixture_packs, run, **bad), pack)
    assert not (run / "instructions.jsonl").exists(), "nothing was synthesized"


def _use_loopback_hub(hub_server, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Point huggingface_hub at the session's loopback Hub, with its token."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


@pytest.mark.slow
def test_rerunning_apply_with_push_to_skips_the_push_it_already_made(tmp_path: Path, fixture_packs: Path, hub_server,  # type: ignore[no-untyped-def]
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished `pa apply --push-to` run again pushed again, and failed on the tag its first push made."""
    _use_loopback_hub(hub_server, monkeypatch)
    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    first = apply(_options(fixture_packs, run, push_to="org/apply-rerun"), pack)
    assert first.stages[-1].name == "push" and first.stages[-1].status == "ran"
    again = apply(_options(fixture_packs, run, push_to="org/apply-rerun"), pack)
    assert [s.status for s in again.stages] == ["skipped"] * 7
    assert again.url == first.url == run_summary(run)["url"]
    assert hub_server.tags("org/apply-rerun") == [f"{pack.name}-v{pack.version}"]
    # retrained since (as `pa apply --max-steps 70` without --push-to leaves it): the URL shows an adapter the run
    # no longer holds, and the summary and `pa runs` said `published: URL` all the same
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert run_summary(run)["url"] is None


@pytest.mark.slow
def test_pa_apply_json_prints_what_pa_runs_lists_for_the_run(tmp_path: Path, fixture_packs: Path,  # type: ignore[no-untyped-def]
                                                            hub_server) -> None:
    """`pa apply` ended with a table for people only: a CI job had to read run.json and eval.json for the gap, the
    adapter or the published URL. With --json, stdout is the run as `pa runs RUN_DIR --json` lists it (stage lines,
    bars and notes on stderr); run as a user runs it, in a process of its own, so nothing else on stdout can hide."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=hub_server.endpoint, HF_TOKEN=hub_server.token, HF_HOME=str(tmp_path / "hf"),
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "policyalign", "apply", str(fixture_packs / "child-pack"), "--model",
                           "tiny", "--out", str(run), "--push-to", "org/apply-json", *FAST, "--json"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert [printed] == json.loads(CliRunner().invoke(app, ["runs", str(run), "--json"]).stdout)
    manifest = json.loads((run / "run.json").read_text())
    trained = manifest["stages"]["distill"]["results"]
    assert printed["status"] == "complete" and printed["run_dir"] == str(run) and printed["adapter"] == str(run / "adapter")
    assert (printed["internalization_before"], printed["internalization_after"]) == (
        trained["internalization_before"], trained["internalization_after"]) and trained["internalization_before"] > 0
    after = json.loads((run / "eval" / "after" / "eval.json").read_text())["metrics"]["overall"]
    assert printed["violation_after"] == after["violation_rate"]
    assert printed["url"] == manifest["stages"]["push"]["url"] and printed["url"].startswith(hub_server.endpoint)
    assert "[push] running" in done.stderr
    config = tmp_path / "run.yaml"  # how the result is printed is the command line's to say
    config.write_text("pack: general\nmodel: tiny\njson: true\n")
    with pytest.raises(InvalidInputError, match="'json' is not read from a config file"):
        build_options({}, config)


def test_rerunning_a_public_push_with_private_says_the_repository_is_public(tmp_path: Path, fixture_packs: Path,
                                                                          hub_server,  # type: ignore[no-untyped-def]
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished public `pa apply --push-to` run again with --private skipped the push as done: the
    adapter stayed public and nothing said so."""
    _use_loopback_hub(hub_server, monkeypatch)
    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    apply(_options(fixture_packs, run, push_to="org/apply-public"), pack)
    with pytest.raises(HubError, match="already exists and is public: nothing was uploaded"):
        apply(_options(fixture_packs, run, push_to="org/apply-public", private=True), pack)
    assert hub_server.tags("org/apply-public") == [f"{pack.name}-v{pack.version}"]
    again = apply(_options(fixture_packs, run, push_to="org/apply-public"), pack)  # as it was pushed: nothing to do
    assert [s.status for s in again.stages] == ["skipped"] * 7


@pytest.mark.slow
def test_apply_killed_after_its_push_tagged_the_revision_finishes_on_the_rerun(tmp_path: Path, fixture_packs: Path,
                                                                               hub_server,  # type: ignore[no-untyped-def]
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed once the Hub held the tag but before run.json recorded the push, a re-run pushed again and
    failed on that tag ("already published, nothing to push"): the job could never finish."""
    from policyalign.run import read_manifest, write_manifest

    _use_loopback_hub(hub_server, monkeypatch)
    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    first = apply(_options(fixture_packs, run, push_to="org/apply-killed"), pack)
    manifest = read_manifest(run)
    del manifest["stages"]["push"]  # what a kill between the tag and the record leaves
    write_manifest(run, manifest)
    again = apply(_options(fixture_packs, run, push_to="org/apply-killed"), pack)
    assert again.url == first.url == run_summary(run)["url"]
    assert read_manifest(run)["stages"]["push"]["status"] == "done"
    assert hub_server.tags("org/apply-killed") == [f"{pack.name}-v{pack.version}"]


@pytest.mark.slow
def test_license_from_the_config_file_reaches_the_card_and_the_push(tmp_path: Path, fixture_packs: Path, hub_server,  # type: ignore[no-untyped-def]
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa push` took --license but `pa apply --push-to` had no way to give one: its card said `other`."""
    from policyalign.card import parse_card

    _use_loopback_hub(hub_server, monkeypatch)
    config = tmp_path / "run.yaml"
    config.write_text("license: mit\nprogress: false\n")
    assert build_options({"pack": "p", "model": "tiny", "license": "apache-2.0"}, config).license == "apache-2.0"
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", str(fixture_packs / "child-pack"), "--model", "tiny", "--out", str(run),
                                      "--config", str(config), "--push-to", "org/apply-license", *FAST])
    assert result.exit_code == 0, result.output
    assert parse_card((run / "README.md").read_text())[0]["license"] == "mit"
    assert parse_card(hub_server.read("org/apply-license", "README.md").decode())[0]["license"] == "mit"


def test_progress_false_in_the_config_file_is_honoured(tmp_path: Path, fixture_packs: Path) -> None:
    """The command set `progress = not --quiet` after reading --config, so `progress: false` drew bars anyway."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pack: {fixture_packs / 'child-pack'}\nmodel: tiny\nprogress: false\n"
                      "n: 2\nmax_new_tokens: 8\nmin_score: 1.0e+9\n")  # stops after filtering, the bars drawn by then
    result = CliRunner().invoke(app, ["apply", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "selected no instructions" in result.output
    assert "[filter] running" in result.output and "━" not in result.output


def test_an_out_that_is_a_file_is_a_clear_error(tmp_path: Path, fixture_packs: Path) -> None:
    taken = tmp_path / "run"
    taken.write_text("not a directory")
    pack = Registry([fixture_packs]).load("child-pack")
    with pytest.raises(InvalidInputError, match="--out: .* is not a directory") as caught:
        apply(_options(fixture_packs, taken), pack)
    assert caught.value.problem.file == str(taken)


def test_push_to_without_a_token_or_with_a_bad_repo_id_fails_before_the_first_stage(
        tmp_path: Path, fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both surfaced only at the push, after every stage had run (hours on a real model)."""
    import huggingface_hub.constants

    from policyalign.errors import HubError

    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    monkeypatch.setenv("HF_TOKEN", "hf_notarealtokenbutpresent")
    with pytest.raises(InvalidInputError, match="invalid repository id 'not a repo'"):
        apply(_options(fixture_packs, run, push_to="not a repo"), pack)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="no Hugging Face token") as caught:
        apply(_options(fixture_packs, run, push_to="org/name"), pack)
    assert "hf auth login" in caught.value.problem.hint
    assert not (run / "instructions.jsonl").exists(), "nothing was synthesized"


def test_push_to_with_the_hub_switched_off_fails_before_the_first_stage(
        tmp_path: Path, fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HF_HUB_OFFLINE=1 (README's advice for a machine without internet) and a token, `pa apply --push-to`
    ran every stage, then failed at the push: 'checking the Hub token: HF_HUB_OFFLINE=1 is set'."""
    import huggingface_hub.constants

    from policyalign.errors import HubError

    pack = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    monkeypatch.setenv("HF_TOKEN", "hf_notarealtokenbutpresent")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 is set") as caught:
        apply(_options(fixture_packs, run, push_to="org/name"), pack)
    assert "pa push RUN_DIR" in caught.value.problem.hint
    assert not (run / "instructions.jsonl").exists(), "nothing was synthesized"



def test_a_second_apply_on_a_run_directory_in_use_is_refused_and_touches_nothing(tmp_path: Path, fixture_packs: Path,
                                                                                 hold_run) -> None:
    """Two `pa apply` on one --out both ran: the second deleted the first's half-written files
    (stale temporaries to it), removed its checkpoints and wrote run.json over its record."""
    run = tmp_path / "run"
    run.mkdir()
    in_flight = run / ".scored.jsonl.abc123.tmp"  # the other run's file being written
    in_flight.write_text("{}\n")
    with hold_run(run) as pid:
        result = CliRunner().invoke(app, ["apply", str(fixture_packs / "child-pack"), "--model", "tiny",
                                          "--out", str(run), "--quiet", *FAST])
    assert result.exit_code == 1, result.output
    assert f"another pa process (pid {pid}) is working in this run directory" in result.output
    assert in_flight.is_file() and not (run / "run.json").exists()


def test_apply_on_a_pack_still_holding_new_stand_in_text_says_so_before_any_stage(tmp_path: Path, hold_run) -> None:
    """`pa apply` on an unedited `pa new` skeleton trained on "Example rule" and measured on
    "Replace me" without a word."""
    assert CliRunner().invoke(app, ["new", "draft", "--dir", str(tmp_path / "packs")]).exit_code == 0
    run = tmp_path / "run"
    run.mkdir()
    with hold_run(run):  # refused once the run is to start: the note comes before
        result = CliRunner().invoke(app, ["apply", str(tmp_path / "packs" / "draft"), "--model", "tiny", "--out", str(run),
                                          "--quiet", *FAST])
    assert result.exit_code == 1, result.output
    assert ("note: draft@0.1.0 still holds 6 piece(s) of stand-in text from `pa new` "
            f"(`pa validate {tmp_path / 'packs' / 'draft'}` lists them)") in result.output


def test_runs_tells_a_running_run_from_an_interrupted_one(tmp_path: Path, hold_run) -> None:
    """A run in progress was listed as "interrupted in filter", the status of one killed there."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "inputs": {"pack": {"name": "general", "version": "1.0.0"}, "model": "tiny"},
        "stages": {"synthesize": {"status": "done"}, "filter": {"status": "running"}}}))
    with hold_run(run):
        running = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert json.loads(running.output)[0]["status"] == "running filter"
    killed = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert json.loads(killed.output)[0]["status"] == "interrupted in filter"


def test_runs_lists_a_held_run_between_two_stages_as_running(tmp_path: Path, hold_run) -> None:
    """Between one stage's end and the next one's start no stage is marked running, and a run a live
    `pa apply` holds was listed as "partial (3/6 stages)" (or "failed at" an earlier attempt's stage) for
    that moment: `pa runs` in a loop flickered. A lock its holder left by dying holds nothing."""
    from policyalign.run import LOCK_FILE

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "inputs": {"pack": {"name": "general", "version": "1.0.0"}, "model": "tiny"},
        "stages": {"synthesize": {"status": "done"}, "filter": {"status": "done"}, "eval_before": {"status": "done"},
                   "eval_after": {"status": "failed", "started": 1}}}))
    with hold_run(run) as pid:
        assert _runs_status(tmp_path / "runs") == "running (3/6 stages done)"
    assert (run / LOCK_FILE).read_text() == str(pid), "the dead holder's pid is still in the lock file"
    assert _runs_status(tmp_path / "runs") == "failed at eval_after"
    manifest = json.loads((run / "run.json").read_text())
    del manifest["stages"]["eval_after"]
    (run / "run.json").write_text(json.dumps(manifest))
    assert _runs_status(tmp_path / "runs") == "partial (3/6 stages)"


def test_runs_does_not_show_a_killed_attempts_later_stage_as_running(tmp_path: Path, hold_run) -> None:
    """An attempt killed in eval_after left that stage "running"; a new `pa apply` holding the run and
    re-running filter was listed as "running eval_after" between its stages, a stage it had not reached."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    stages = {"synthesize": {"status": "done", "started": 100.0}, "eval_after": {"status": "running", "started": 200.0},
              "filter": {"status": "running", "started": 300.0}}
    manifest = {"inputs": {"pack": {"name": "general", "version": "1.0.0"}, "model": "tiny"}, "stages": stages}
    (run / "run.json").write_text(json.dumps(manifest))
    with hold_run(run):
        assert _runs_status(tmp_path / "runs") == "running filter"
        stages["filter"]["status"] = "done"  # between filter and eval_before
        (run / "run.json").write_text(json.dumps(manifest))
        assert _runs_status(tmp_path / "runs") == "running (2/6 stages done)"
        stages["eval_before"] = {"status": "running", "started": 400.0}
        (run / "run.json").write_text(json.dumps(manifest))
        assert _runs_status(tmp_path / "runs") == "running eval_before"


@pytest.mark.parametrize(("stop", "code", "said"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                     (signal.SIGHUP, 129, "stopped by SIGHUP")])
def test_ctrl_c_exits_130_with_a_message_and_records_the_stage_as_interrupted(
        tmp_path: Path, fixture_packs: Path, stop: signal.Signals, code: int, said: str) -> None:
    """Ctrl-C printed a blank line, and `pa runs` then called the run "failed at synthesize". SIGTERM (a
    scheduler's, before SIGKILL) and SIGHUP (the terminal closed) killed it on the spot: no word, no exit
    code but -15 or -1, its stage left "running" in run.json; now they stop it as Ctrl-C does."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "policyalign", "apply", str(fixture_packs / "child-pack"), "--model", "tiny",
           "--out", str(run), "--quiet", *FAST]
    # Ctrl-C as in a terminal: a suite started in the background of a shell without job control
    # (`... &` in a script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert _wait_for_stage(run, "synthesize", proc)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"{said}: finished stages" in err and "Traceback" not in err
    assert f"to continue, run: {shlex.join(['pa', *cmd[3:]])}\n" in err  # the command as typed, to paste
    assert json.loads((run / "run.json").read_text())["stages"]["synthesize"]["status"] == "interrupted"
    assert run_summary(run)["status"] == "interrupted in synthesize"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_another_users_lock_file_still_locks_a_shared_run_directory(tmp_path: Path, hold_run) -> None:
    """The lock file of a run directory shared between users is another user's, not writable here: flock
    needs only read access, so the run neither fails nor goes unlocked."""
    from policyalign.run import LOCK_FILE, run_active, run_lock

    (tmp_path / LOCK_FILE).write_text("")
    (tmp_path / LOCK_FILE).chmod(0o444)
    with run_lock(tmp_path):
        assert run_active(tmp_path)
    with hold_run(tmp_path), pytest.raises(RunError, match=r"another pa process \(pid \?\)"):
        with run_lock(tmp_path):
            pass


def test_a_misspelt_lora_target_is_refused_before_any_stage_runs(tmp_path: Path, fixture_packs: Path) -> None:
    """`training.target_modules: [q_proj, v_prj]` passes `pa validate` (it cannot know the model) and was refused
    only by distillation, after synthesis, filtering and the first evaluation: named now, with its file and entry."""
    from policyalign.tiny import tiny_model_path

    model = tmp_path / "my-model"  # a local model: tiny's demo settings would replace the pack's targets
    shutil.copytree(tiny_model_path(), model)
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("  lora_r: 4\n", "  lora_r: 4\n  target_modules: [q_proj, v_prj]\n"))
    with pytest.raises(InvalidInputError, match="LoRA target modules \\['v_prj'\\]: no such module in \\S*my-model") as caught:
        apply(_options(fixture_packs, tmp_path / "run", pack=str(fixture_packs / "root-pack"), model=str(model)),
              Registry([fixture_packs]).load("root-pack"))
    problem = caught.value.problem
    assert (problem.file, problem.where) == (str(manifest), "training.target_modules[1]")
    assert "did you mean 'v_proj'?" in problem.hint and "gate_proj" in problem.hint
    assert not (tmp_path / "run").exists(), "no stage ran"
    with pytest.raises(InvalidInputError, match="\\['q_prj'\\]") as caught:  # from --config, over tiny's all-linear
        apply(_options(fixture_packs, tmp_path / "run", target_modules=["q_prj"]), Registry([fixture_packs]).load("child-pack"))
    assert caught.value.problem.where == "target_modules in --config"
    assert not (tmp_path / "run").exists()
    config = tmp_path / "run.yaml"  # read from a file, the error names it and the key to fix there
    config.write_text(f"pack: {fixture_packs / 'child-pack'}\nmodel: tiny\ntarget_modules: [q_proj, q_prj]\n")
    with pytest.raises(InvalidInputError, match="\\['q_prj'\\]") as caught:
        apply(build_options({}, config), Registry([fixture_packs]).load("child-pack"))
    assert (caught.value.problem.file, caught.value.problem.where) == (str(config), "target_modules[1]")
    assert "on the command line or in the pack" not in caught.value.problem.hint
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_tiny_names_the_pack_training_values_its_demo_settings_replace(tmp_path: Path, fixture_packs: Path) -> None:
    """`--model tiny` trained with LoRA rank 16, alpha 32 on every linear layer whatever the pack's `training:`
    said, without a word: a pack author trying their settings on tiny saw none of them used."""
    from policyalign.apply import demo_replacements, with_model_defaults

    pack = Registry([fixture_packs]).load("root-pack")  # training: lora_r 4, lora_alpha 8
    options = with_model_defaults(ApplyOptions(pack="root-pack", model="tiny", lora_alpha=8.0, explicit={"lora_alpha"}))
    assert demo_replacements(options, pack) == ["lora_r 16 (pack: 4)"], "a value given is the user's, not the demo's"
    notes: list[str] = []
    (tmp_path / "not-a-run.txt").write_text("x")  # refused as a run directory: stops before any stage, after the note
    with pytest.raises(RunError):
        apply(ApplyOptions(pack="root-pack", model="tiny", out=tmp_path), pack, on_note=notes.append)
    assert notes == ["--model tiny trains with its demo settings, not the pack's values: lora_r 16 (pack: 4), "
                     "lora_alpha 32 (pack: 8) (give an option, or put it in --config, to choose its value)"]
    local = ApplyOptions(pack="root-pack", model="./my-model", lora_r=None)
    assert demo_replacements(local, pack) == []


def test_tiny_names_the_pack_synthesis_values_its_demo_settings_replace() -> None:
    """`pa apply --help` says a note names each pack value tiny's demo defaults replace, the `synthesis:` values
    among the ones options leave to the pack; general's count_per_category 16 became 4 and its generator's
    max_new_tokens 1024 became 64 without a word."""
    from policyalign.apply import demo_replacements, with_model_defaults

    general = Registry([Path(__file__).resolve().parents[1] / "packs"]).load("general")
    replaced = demo_replacements(with_model_defaults(ApplyOptions(pack="general", model="tiny")), general)
    assert "synthesis.count_per_category 4 (pack: 16)" in replaced
    assert "synthesis.sampling.max_new_tokens 64 (pack: 1024)" in replaced
    given = with_model_defaults(ApplyOptions(pack="general", model="tiny", n=4, explicit={"n"}))
    assert not any(r.startswith("synthesis.count_per_category") for r in demo_replacements(given, general))


def test_prefix_cache_can_be_switched_off_for_a_whole_apply_run(tmp_path: Path, fixture_packs: Path) -> None:
    """`pa distill` had --[no-]prefix-cache but `pa apply` no such option (nor a `prefix_cache:` key), so a run could
    not be trained with the teacher's prefix recomputed every step, e.g. to compare; the flag's False (its default
    None) must not be dropped as an unset on/off flag's is."""
    from policyalign.apply import _distill_overrides

    assert _distill_overrides(build_options({"pack": "general", "model": "tiny", "prefix_cache": False}, None))[
        "prefix_cache"] is False
    assert _distill_overrides(build_options({"pack": "general", "model": "tiny"}, None))["prefix_cache"] is None
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nprefix_cache: false\n")
    assert _distill_overrides(build_options({}, config))["prefix_cache"] is False
    assert _distill_overrides(build_options({"prefix_cache": True}, config))["prefix_cache"] is True
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", str(fixture_packs / "child-pack"), "--model", "tiny", "--out", str(run),
                                      "--no-prefix-cache", "--quiet", "--n", "2", "--max-new-tokens", "8",
                                      "--min-score", "1e9"])  # stops after filtering: the options are recorded by then
    assert result.exit_code == 1 and "selected no instructions" in result.output
    assert json.loads((run / "run.json").read_text())["inputs"]["options"]["prefix_cache"] is False
