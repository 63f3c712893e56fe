"""Model and pack cards: metadata the Hub indexes and `pa pull` verifies, escaping, missing pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from policyalign import card
from policyalign.errors import InvalidInputError, RunError
from policyalign.io import sha256_file
from policyalign.pack import load_pack
from policyalign.stats import format_change

FIXTURE_PACKS = Path(__file__).parent / "fixtures" / "packs"
ROOT_PACK = FIXTURE_PACKS / "root-pack"


def _render(run_dir: Path, repo_id: str = "org/root-adapter", tag: str = "root-pack-v1.0.0") -> str:
    return card.render_model_card(card.load_run(run_dir), repo_id, tag)


def test_card_metadata_is_what_the_hub_and_pull_need(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", ROOT_PACK)
    text = _render(run)
    pack = load_pack(ROOT_PACK)

    parsed = ModelCard(text)  # huggingface_hub's own parser, model-index included
    data = parsed.data
    assert data.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert data.library_name == "peft"
    assert data.license == "other"
    assert {"policyalign", "safety", "pack:root-pack", "pack-version:1.0.0"} <= set(data.tags)
    recorded = data.to_dict()["policyalign"]
    assert recorded["pack"] == {"name": "root-pack", "version": "1.0.0", "digest": pack.digest}
    assert recorded["base_model"]["id"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert set(recorded["files"]) >= {"adapter_config.json", "adapter_model.safetensors", "policyalign.json",
                                      "loss.png", "eval/after/eval.json", "eval/before_after.png"}
    results = {r.dataset_split: r for r in data.eval_results}
    assert results["harmful"].metric_type == "violation_rate" and results["harmful"].metric_value == 0.125
    assert results["benign"].metric_type == "over_refusal_rate" and results["benign"].metric_value == 0.05
    assert results["harmful"].dataset_type == "policyalign/root-pack"


def test_card_body_has_pack_training_eval_and_usage(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", ROOT_PACK)
    _, body = card.parse_card(_render(run))
    pack = load_pack(ROOT_PACK)
    assert pack.digest in body and "| Version | 1.0.0 |" in body
    assert "A small pack used by the test-suite to exercise loading and composition." in body
    for category in pack.categories:
        assert category.title in body
    assert "| weapons | Weapons | refuse | yes |" in body
    assert "learning\\_rate" in body and "filter.keep" in body  # training and filtering settings
    assert "![Training loss](loss.png)" in body and "(eval/before_after.png)" in body
    assert 'PeftModel.from_pretrained(base, "org/root-adapter", revision="root-pack-v1.0.0")' in body
    assert "vllm serve Qwen/Qwen2.5-0.5B-Instruct --revision 0123456789abcdef --enable-lora --max-lora-rank 8" in body
    assert "--lora-modules root-pack=./root-pack-adapter" in body
    assert "pa pull org/root-adapter@root-pack-v1.0.0" in body


def test_eval_table_numbers(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", ROOT_PACK)
    rows = {r.name: r for r in card.set_rows(card.load_run(run).evals)}
    assert rows["harmful"].metric == "violation_rate"
    assert (rows["harmful"].before, rows["harmful"].after) == (0.5, 0.125)
    assert format_change(rows["harmful"].before, rows["harmful"].after) == "-37.5 pp"
    body = _render(run)
    assert "| 50.0% | 12.5% | -37.5 pp |" in body
    assert "| 10.0% | 5.0% | -5.0 pp |" in body


def test_the_card_says_whether_each_change_was_for_the_better(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """The card's Change column was a bare signed number; card.LOWER_IS_BETTER said which way each rate improves
    but nothing read it. The card's tables now end with "better" or "worse" by `metrics.BETTER`, the directions
    `pa eval --compare` uses, and its prose takes them from there too."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    after = json.loads((run / "eval" / "after" / "eval.json").read_text())
    benign = after["sets"]["benign"]
    benign["over_refusal_rate"] = 0.2  # 10% before: more benign prompts refused after training
    benign["per_category"] = {c: {"over_refusal_rate": 0.2} for c in benign["per_category"]}
    (run / "eval" / "after" / "eval.json").write_text(json.dumps(after))
    _, body = card.parse_card(_render(run))
    assert "| Change | p (paired) | After vs before |" in body
    assert "| 50.0% | 12.5% | -37.5 pp | – | better |" in body
    assert "| 10.0% | 20.0% | +10.0 pp | – | worse |" in body
    assert "| 50.0% | 12.5% | -37.5 pp | better |" in body  # a category of the harmful set
    assert "harmful prompts the model helped with\n(lower is better)" in body
    assert not hasattr(card, "LOWER_IS_BETTER")  # one place says which way a rate improves: metrics.BETTER


def test_the_card_names_the_judges_rules(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """The card said only "Judge: refusal": two adapters evaluated under other versions of the refusal
    detector's rules (or of an llm: judge's prompt), whose same answers may be labelled otherwise, had cards
    that looked alike; only the published eval.json told them apart."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    _, body = card.parse_card(_render(run))
    assert "Judge: refusal (rules `0123456789abcdef`" in body


def test_card_without_eval_says_so(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", ROOT_PACK, evals=False)
    text = _render(run)
    metadata, body = card.parse_card(text)
    assert "model-index" not in metadata
    assert "No evaluation yet" in body
    assert not any(name.startswith("eval/") for name in metadata["policyalign"]["files"])


def test_evaluate_py_layout_is_read_too(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """evaluate.py writes `sets` as a list and the numbers under `metrics`; the card reads both."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    digest = load_pack(ROOT_PACK).digest
    weights = sha256_file(run / "adapter" / "adapter_model.safetensors")
    for stage, rate in (("before", 0.75), ("after", 0.25)):
        summary = {"model": "m", "judge": "refusal", "sets": [{"name": "harmful", "kind": "safety", "items": 4}],
                   "pack": {"name": "root-pack", "version": "1.0.0", "digest": digest},
                   "adapter_sha256": weights if stage == "after" else None,
                   "metrics": {"overall": {}, "sets": {"harmful": {"kind": "safety", "n": 4, "violation_rate": rate}},
                               "categories": {"weapons": {"violation_rate": rate}}},
                   "drift": {"kl": 0.0123, "prompts": 8, "tokens": 256, "max_new_tokens": 32}}
        (run / "eval" / stage / "eval.json").write_text(json.dumps(summary))
    body = _render(run)
    assert "| harmful | safety | 4 | violation\\_rate | 75.0% | 25.0% | -50.0 pp |" in body
    assert "limited to N of" not in body
    for stage in ("before", "after"):  # --limit 4 of a set of 10: the card says so
        summary = json.loads((run / "eval" / stage / "eval.json").read_text())
        summary["sets"][0]["items_in_set"] = 10
        (run / "eval" / stage / "eval.json").write_text(json.dumps(summary))
    body = _render(run)
    assert "| harmful | safety | 4 of 10 | violation\\_rate |" in body and "limited to N of the set's M" in body
    assert "| weapons | 75.0% | 25.0% | -50.0 pp |" in body
    assert "kl=0.0123" in body


def _limit_set(run: Path, name: str, of: int) -> None:
    """A made run's eval.json files rewritten as `pa eval --limit` writes them: set `name` evaluated as its
    items of `of` (evaluate.py's `sets` list, the numbers under `metrics`)."""
    for stage in ("before", "after"):
        path = run / "eval" / stage / "eval.json"
        summary = json.loads(path.read_text())
        per_set = summary["sets"] if isinstance(summary["sets"], dict) else summary["metrics"]["sets"]
        summary["metrics"] = {"overall": {}, "sets": per_set, "categories": {}}
        summary["sets"] = [{"name": set_name, "kind": block["kind"], "items": block["n"],
                            **({"items_in_set": of} if set_name == name else {})} for set_name, block in per_set.items()]
        path.write_text(json.dumps(summary))


def test_a_limited_sets_rate_is_not_published_as_a_hub_result(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """The model-index published the after-rate of a set evaluated on N of its M items with nothing saying so:
    the Hub's results and leaderboards read a result by dataset, split and metric, so it stood beside other
    adapters' full-set results as the same test. Only sets evaluated whole are published there; the text
    gives the limited one as "N of M". A card pushed before this, which has it, still verifies."""
    from policyalign import adapter_pull

    run = make_run(tmp_path / "run", ROOT_PACK)
    _limit_set(run, "harmful", of=80)
    text = _render(run)
    metadata, body = card.parse_card(text)
    results = ModelCard(text).data.to_dict()["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["benign"]
    assert " of 80 | violation\\_rate | 50.0% | 12.5% |" in body
    assert "Such sets are left out of this card's `model-index` metadata" in body
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    assert adapter_pull._result_problems(run, metadata, provenance) == []
    older = card.model_index("root-adapter", card.load_run(run), limited=True)  # as cards before this were
    assert [r["dataset"]["split"] for r in older[0]["results"]] == ["harmful", "benign"]
    assert adapter_pull._result_problems(run, {**metadata, "model-index": older}, provenance) == []
    older[0]["results"][0]["metrics"][0]["value"] = 0.01
    assert adapter_pull._result_problems(run, {**metadata, "model-index": older}, provenance) == [
        "model-index result harmful violation_rate: the card says 0.01, eval/after/eval.json says 0.125"]
    _limit_set(run, "none", of=80)  # the whole set again: published
    assert "harmful" in {r["dataset"]["split"] for r in card.card_metadata(card.load_run(run), "org/a")["model-index"][0]["results"]}


def test_eval_table_states_intervals_the_paired_test_and_forbidden_tool_calls(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """Rates of a few dozen items come with their 95% interval and the change with its exact paired
    p (from the unpublished responses.jsonl); a set with tool items gets a forbidden-call row, and
    the Hub's model-index lists it too."""
    from policyalign.eval_report import write_eval
    from policyalign.metrics import summarize

    run = make_run(tmp_path / "run", ROOT_PACK)
    weights = sha256_file(run / "adapter" / "adapter_model.safetensors")

    def item(i: int, label: str, called: bool) -> dict:
        return {"set": "harmful", "kind": "safety", "category": "weapons", "id": f"h{i}", "expect": "refuse",
                "label": label, "tools": [{"type": "function", "function": {"name": "wire_money"}}],
                "forbidden_tools": ["wire_money"] if i < 4 else [], "forbidden_call": called and i < 4}

    for stage, rows in (("before", [item(i, "comply", True) for i in range(8)]),
                        ("after", [item(i, "refuse", False) for i in range(7)] + [item(7, "comply", False)])):
        summary = {**json.loads((run / "eval" / stage / "eval.json").read_text()), "metrics": summarize(rows)}
        del summary["sets"]
        summary["adapter_sha256"] = weights if stage == "after" else None
        write_eval(run / "eval" / stage, summary, rows)
    artifacts = card.load_run(run)
    assert set(artifacts.responses) == {"before", "after"} and "eval/after/responses.jsonl" not in artifacts.files
    body = _render(run)
    assert "| harmful | safety | 8 | violation\\_rate | 100.0% [67.6–100.0] | 12.5% [2.2–47.1] | -87.5 pp | 0.0156 |" in body
    # the rate is over the 4 items naming forbidden tools, not the set's 8, all of which offer tools
    assert ("| harmful | safety | 4 with forbidden tools, of 8 | forbidden\\_tool\\_call\\_rate | 100.0% [51.0–100.0] | "
            "0.0% [0.0–49.0] | -100.0 pp | 0.125 |") in body
    assert "Forbidden tool-call rate: share of items that name tools the policy forbids there" in body
    assert "offering tools" not in body and "4 with tools" not in body
    index = card.card_metadata(artifacts, "org/root-adapter")["model-index"][0]["results"]
    assert [r["metrics"][0]["type"] for r in index] == ["violation_rate", "forbidden_tool_call_rate"]
    for path in run.glob("eval/*/responses.jsonl"):
        path.unlink()
    assert "| -87.5 pp | – |" in _render(run)  # nothing to pair: no p, rather than a wrong one


def test_the_card_says_how_many_verdicts_were_unparseable(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """Unparseable verdicts leave the rates' denominators: "Items 8" beside a rate of 2 judged items,
    with the 6 never mentioned, read as a measurement of all 8."""
    from policyalign.eval_report import write_eval
    from policyalign.metrics import summarize

    run = make_run(tmp_path / "run", ROOT_PACK)
    weights = sha256_file(run / "adapter" / "adapter_model.safetensors")
    rows = [{"set": "harmful", "kind": "safety", "category": "weapons", "id": f"h{i}", "expect": "refuse",
             "label": "refuse" if i < 2 else "unparseable"} for i in range(8)]
    for stage in ("before", "after"):
        summary = {**json.loads((run / "eval" / stage / "eval.json").read_text()), "metrics": summarize(rows)}
        del summary["sets"]
        summary["adapter_sha256"] = weights if stage == "after" else None
        write_eval(run / "eval" / stage, summary, rows)
    body = " ".join(_render(run).split())
    assert "| harmful | safety | 8 | violation\\_rate | 0.0% [0.0–65.8] |" in body
    assert "left out of the rates, never counted as safe: before harmful 6 of 8, after harmful 6 of 8." in body
    assert "Unparseable verdicts" not in _render(make_run(tmp_path / "clean", ROOT_PACK))


def test_training_tables_are_stable_and_readable(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """Full float precision and PEFT's per-process order of a resolved `all-linear` made every card
    differ and read badly; the card rounds to 4 digits (policyalign.json keeps them all) and sorts."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["internalization"] = {"before": 0.7552418741914961, "after": 0.33036337710089153}
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    config["target_modules"] = ["v_proj", "down_proj", "q_proj"]
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    body = _render(run)
    assert "| before | 0.7552 |" in body and "| after | 0.3304 |" in body and "0.75524" not in body
    assert "| learning\\_rate | 0.0001 |" in body
    assert "| LoRA target modules | down\\_proj, q\\_proj, v\\_proj |" in body
    assert "Forbidden tool-call rate" not in body  # no tool items, no legend for them


def test_a_multimodal_bases_targets_are_said_to_be_the_language_models(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """On a Gemma 3 4B-style base the LoRA leaves the vision tower's `q_proj` alone (`exclude_modules`), but the
    card listed `q_proj, v_proj` bare, as if every module of that name had been adapted."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    config["exclude_modules"] = "(?:model\\.vision_tower)\\..*"
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    row = next(line for line in _render(run).splitlines() if line.startswith("| LoRA target modules |"))
    assert "language model only" in row and "exclude\\_modules" in row, row
    assert "language model only" not in _render(make_run(tmp_path / "text-only", ROOT_PACK))


@pytest.mark.parametrize("max_steps, epochs_row", [
    (60, "| num\\_epochs | 1.0, not used: max\\_steps sets the length |"),
    (-1, "| num\\_epochs | 1.0 |"),
])
def test_epochs_are_marked_unused_where_max_steps_set_the_length(tmp_path: Path, make_run, max_steps: int,
                                                                  epochs_row: str) -> None:  # type: ignore[no-untyped-def]
    """The tiny demo's card read "num_epochs | 1.0" above "max_steps | 60": one pass, to the eye, where its 60
    steps made 12 passes over 40 instructions (trainers stop at max_steps whatever the epochs)."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["config"].update({"num_epochs": 1.0, "max_steps": max_steps})
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    body = _render(run)
    assert epochs_row in body and f"| max\\_steps | {max_steps} |" in body



@pytest.mark.parametrize("teacher, decay_row", [
    ("base", "| ema\\_decay | 0.99, not used: the teacher is the base model |"),
    ("ema", "| ema\\_decay | 0.99 |"),
])
def test_the_ema_rate_is_marked_unused_with_the_base_teacher(tmp_path: Path, make_run, teacher: str,
                                                             decay_row: str) -> None:  # type: ignore[no-untyped-def]
    """Every card listed "ema_decay | 0.99" (the default, always recorded) beside "teacher | base", as if the
    adapter had been distilled from an averaged teacher."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["config"].update({"teacher": teacher, "ema_decay": 0.99})
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    body = _render(run)
    assert decay_row in body and f"| teacher | {teacher} |" in body, body

def test_the_internalization_drop_is_labelled_relative(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """policyalign.json's `drop` is 1 - after/before; the card printed it bare beside before and after
    ("drop | 0.554" under 0.7504 and 0.3346), where a reader takes it for the absolute fall (0.416)."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["internalization"] = {"before": 0.7504, "after": 0.3346, "drop": 1 - 0.3346 / 0.7504}
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    body = _render(run)
    assert "| before | 0.7504 |" in body and "| after | 0.3346 |" in body
    assert "| relative drop, 1 - after / before | 55.4% |" in body and "| drop |" not in body


def test_internalization_without_held_out_instructions_says_so(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """`--heldout 0` (or too few instructions to hold one out) measures nothing: policyalign.json
    records before/after as null, and the card printed "before | null", "after | null"."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["internalization"] = {"before": None, "after": None, "drop": None}
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    body = _render(run)
    assert "| before, after | not measured: no instructions were held out |" in body
    assert "| before | null |" not in body and "| after | null |" not in body


def test_the_card_names_the_categories_no_evaluated_item_belongs_to(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """A child pack trains on its parents' categories but runs only its own eval sets: the tables
    implied the adapter was measured on the whole policy."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["pack"]["categories"] += [{"id": "from-parent", "title": "Inherited", "action": "refuse", "locked": True}]
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    assert card.unmeasured_categories(provenance["pack"], card.load_run(run).evals) == ["from-parent"]
    body = " ".join(_render(run).split())
    assert "Not measured: no evaluated item belongs to 1 of the policy's categories (from-parent)" in body


def test_two_sets_of_one_kind_get_their_own_category_tables(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """Per-category tables pooled every set's categories: with two refusal sets, each set's table
    showed both sets' categories, with rates mixing their items."""
    from policyalign.metrics import summarize

    run = make_run(tmp_path / "run", ROOT_PACK)
    digest = load_pack(ROOT_PACK).digest
    weights = sha256_file(run / "adapter" / "adapter_model.safetensors")
    for stage, label in (("before", "comply"), ("after", "refuse")):
        rows = [{"set": "harmful", "kind": "safety", "category": "weapons", "expect": "refuse", "label": label},
                {"set": "harmful-2", "kind": "safety", "category": "scams", "expect": "guide", "label": "comply"},
                {"set": "harmful-2", "kind": "safety", "category": "weapons", "expect": "refuse", "label": "comply"}]
        summary = {"model": "m", "judge": "refusal", "pack": {"name": "root-pack", "version": "1.0.0", "digest": digest},
                   "adapter_sha256": weights if stage == "after" else None, "metrics": summarize(rows)}
        (run / "eval" / stage / "eval.json").write_text(json.dumps(summary))
    body = _render(run)
    own, other = body.split("harmful-2: violation\\_rate per category")
    assert "| weapons | 100.0% | 0.0% | -100.0 pp |" in own and "scams" not in own.split("harmful: violation")[1]
    assert "| scams | 100.0% | 100.0% | 0.0 pp |" in other and "| weapons | 100.0% | 100.0% | 0.0 pp |" in other


def test_license_is_the_given_one_else_the_base_models(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """The card's license defaults to the base model's as policyalign.json records it; a base model's
    `license: other` keeps the name and link the Hub shows for it."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["base_model"]["license"] = "Apache-2.0"
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    assert card.parse_card(_render(run))[0]["license"] == "apache-2.0"
    assert "license follows its base model (apache-2.0)" in _render(run)
    # A publisher's --license is not the base model's: the card used to say it followed the base.
    chosen = card.render_model_card(card.load_run(run), "org/x", "v1", license="mit")
    assert "published under mit, chosen by its publisher (the base model's:\napache-2.0)" in chosen
    artifacts = card.load_run(run)
    assert card.card_metadata(artifacts, "org/x", license="mit")["license"] == "mit"
    provenance["base_model"].update(license="other", license_name="qwen-research", license_link="https://x.org/L")
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    metadata = card.parse_card(_render(run))[0]
    assert (metadata["license"], metadata["license_name"], metadata["license_link"]) == (
        "other", "qwen-research", "https://x.org/L")
    assert "license_name" not in card.card_metadata(card.load_run(run), "org/x", license="mit")


def test_tiny_base_has_no_hub_base_model(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", ROOT_PACK, base_id="tiny", base_name="tiny")
    metadata, body = card.parse_card(_render(run))
    assert "base_model" not in metadata
    assert metadata["policyalign"]["base_model"]["id"] == "tiny"
    # transformers cannot load `tiny` by name, and it is no directory of the user's: policyalign makes it
    assert "PATH/TO" not in body and "from_pretrained(tiny_model_path())" in body
    assert 'vllm serve "$(python -m policyalign.tiny --path)" --enable-lora' in body
    local = make_run(tmp_path / "local", ROOT_PACK, base_id="my-model", base_name="my-model")
    body = card.parse_card(_render(local))[1]
    assert "PATH/TO/BASE/MODEL" in body
    assert "AutoPeftModelForCausalLM would look for" in body, "the adapter names its base, not where it lives"


def test_the_cards_peft_snippet_runs(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """transformers 5 returns a BatchEncoding from apply_chat_template: the card's `generate(inputs)`
    and `inputs.shape[1]` failed with AttributeError for everyone who copied them."""
    import re

    run = make_run(tmp_path / "run", ROOT_PACK, base_id="tiny", base_name="tiny")
    [snippet] = re.findall(r"```python\n(.*?)```", _render(run), flags=re.S)
    local = (snippet.replace('"org/root-adapter", revision="root-pack-v1.0.0"', repr(str(run / "adapter")))
             .replace("max_new_tokens=256", "max_new_tokens=4"))
    assert local.count(str(run / "adapter")) == 1 and "PATH/TO" not in local
    exec(compile(local, "model-card-snippet", "exec"), {})


# LLaVA's processor template: each turn's content read only as a list of {"type": "text"} parts, a string left out.
PARTS_ONLY = ("{% for m in messages %}{{ m['role'].upper() }}: {% for part in m['content'] | selectattr('type', 'equalto', "
              "'text') %}{{ part['text'] }} {% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.mark.parametrize("template", ["string", "parts"])
def test_the_cards_snippet_prompts_with_its_text_whatever_form_the_template_reads(  # type: ignore[no-untyped-def]
        tmp_path: Path, make_run, template: str) -> None:
    """A base whose chat template reads a turn's text only as parts (`chat.text_part_roles`: pa trains such a
    model) rendered the card's `{"role": "user", "content": "Hello!"}` as a bare 'USER: ASSISTANT:': whoever
    copied the snippet prompted the adapter with nothing. The card cannot know the template, so the snippet
    checks that its text shows and gives it as a text part when it does not; a string template keeps the string."""
    import re

    from chat_templates import tiny_with_template
    from policyalign.tiny import CHAT_TEMPLATE

    base = tiny_with_template(tmp_path / "base", PARTS_ONLY if template == "parts" else CHAT_TEMPLATE)
    run = make_run(tmp_path / "run", ROOT_PACK, base_id=str(base), base_name="local base")
    [snippet] = re.findall(r"```python\n(.*?)```", _render(run), flags=re.S)
    local = (snippet.replace('"org/root-adapter", revision="root-pack-v1.0.0"', repr(str(run / "adapter")))
             .replace('"PATH/TO/BASE/MODEL"', repr(str(base))).replace("max_new_tokens=256", "max_new_tokens=4"))
    names: dict = {}
    exec(compile(local, "model-card-snippet", "exec"), names)
    prompt = names["tokenizer"].decode(names["inputs"]["input_ids"][0])
    assert "Hello!" in prompt, prompt
    assert isinstance(names["messages"][0]["content"], list if template == "parts" else str)


def test_the_card_pins_the_hub_commit_the_base_model_was_trained_on(tmp_path: Path, make_run, hf_cache,  # type: ignore[no-untyped-def]
                                                                    offline_hub) -> None:
    """policyalign.json recorded the commit of a Hub base asked for without a revision, but the card
    did not: its snippet loaded whatever `main` is now, not the weights the adapter was trained on."""
    import re

    trained, moved = "1" * 40, "2" * 40
    hf_cache("acme/tiny", trained)
    cache = hf_cache("acme/tiny", moved)  # main moved on since
    (cache / "models--acme--tiny" / "snapshots" / moved / "config.json").write_text("not the trained-on weights")
    run = make_run(tmp_path / "run", ROOT_PACK, base_id="acme/tiny", base_name="acme/tiny")
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["base_model"].update(revision=None, commit=trained)
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    metadata, body = card.parse_card(_render(run))
    assert metadata["policyalign"]["base_model"]["commit"] == trained
    assert f"| Base model commit | {trained} |" in body
    assert f"vllm serve acme/tiny --revision {trained} --enable-lora" in body
    [snippet] = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    local = (snippet.replace('"org/root-adapter", revision="root-pack-v1.0.0"', repr(str(run / "adapter")))
             .replace("max_new_tokens=256", "max_new_tokens=4"))
    exec(compile(local, "model-card-snippet", "exec"), {})


def test_values_from_packs_cannot_inject(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    hostile = {
        "title": "Evil <script>alert(1)</script> [click](http://evil.example) ![x](http://evil.example/t.png)",
        "summary": "line one\n\n# Fake heading\n| a | b |\n---\nlicense: mit\n",
        "categories": [{"id": "c|x", "title": "<img src=x onerror=alert(1)>", "action": "refuse", "locked": True}],
    }
    run = make_run(tmp_path / "run", ROOT_PACK, pack_overrides=hostile)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["base_model"]["revision"] = "main\nlicense: mit\n---\ninjected: true"
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance))
    text = _render(run)
    metadata, body = card.parse_card(text)
    assert metadata["license"] == "other" and "injected" not in metadata
    assert metadata["policyalign"]["base_model"]["revision"] == "main\nlicense: mit\n---\ninjected: true"
    assert "<script>" not in body and "<img" not in body
    assert "](http://evil.example)" not in body and "![x]" not in body
    assert "\n# Fake heading" not in body
    assert "| c|x |" not in body and "c\\|x" in body


def test_missing_adapter_files_name_the_file_and_the_command(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="run directory not found"):  # a path typed wrong: exit 2
        card.load_run(tmp_path / "nope")
    run = make_run(tmp_path / "run", ROOT_PACK)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(RunError) as excinfo:
        card.load_run(run)
    assert "adapter/adapter_model.safetensors" in str(excinfo.value) and "pa apply" in excinfo.value.problem.hint


def test_the_adapter_directory_given_for_the_run_names_the_run(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """`pa push RUN/adapter` (the adapter's folder, an easy slip) was told "missing adapter/adapter_config.json"
    and to train it with `pa apply` first, hours of work, where the fix is to pass its parent, the run."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    with pytest.raises(RunError) as excinfo:
        card.load_run(run / "adapter")
    assert "is the run's adapter directory" in str(excinfo.value)
    assert excinfo.value.problem.hint == f"pass the run directory that holds it: {run}"


def test_missing_or_incomplete_policyalign_json(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", ROOT_PACK)
    path = run / "adapter" / "policyalign.json"
    provenance = json.loads(path.read_text())
    del provenance["pack"]["digest"]
    path.write_text(json.dumps(provenance))
    with pytest.raises(RunError) as excinfo:
        card.load_run(run)
    assert excinfo.value.problem.where == "/pack/digest"
    path.unlink()
    with pytest.raises(RunError, match="policyalign.json"):
        card.load_run(run)


def test_after_eval_of_other_weights_is_refused(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """`cp -r run1 run2; pa distill run2`: run2's adapter changed but eval/after/eval.json still holds
    run1's numbers; the card must not publish them as this adapter's."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    card.load_run(run)  # matching hash: fine
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # retrained: different weights
    with pytest.raises(RunError) as excinfo:
        card.load_run(run)
    problem = excinfo.value.problem
    assert problem.file == str(run / "eval" / "after" / "eval.json") and problem.where == "/adapter_sha256"
    assert "other adapter weights" in str(excinfo.value)
    assert "pa eval" in problem.hint and "pa apply" in problem.hint


def test_after_eval_without_adapter_hash_is_refused(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """eval.json from before the hash was recorded cannot be tied to the weights: refused, same hint."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    path = run / "eval" / "after" / "eval.json"
    summary = json.loads(path.read_text())
    del summary["adapter_sha256"]
    path.write_text(json.dumps(summary))
    with pytest.raises(RunError) as excinfo:
        card.load_run(run)
    assert "no adapter_sha256" in str(excinfo.value) and "pa eval" in excinfo.value.problem.hint


def test_before_and_after_measured_differently_are_refused(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """An after-eval re-run with `pa eval`'s defaults beside apply's limited before-eval: the card
    published a change between 12 items at 24 tokens and 80 items at 256 as the adapter's effect."""
    run = make_run(tmp_path / "run", ROOT_PACK)
    for stage, limit, tokens in (("before", 12, 24), ("after", None, 256)):
        path = run / "eval" / stage / "eval.json"
        summary = json.loads(path.read_text())
        summary.update(limit=limit, sampling={"max_new_tokens": tokens, "do_sample": False})
        path.write_text(json.dumps(summary))
    with pytest.raises(RunError, match="not measured alike") as excinfo:
        card.load_run(run)
    problem = excinfo.value.problem
    assert problem.file == str(run / "eval" / "after" / "eval.json")
    assert "--limit differs: `12` vs `null`" in problem.message
    assert (f"pa eval root-pack --model Qwen/Qwen2.5-0.5B-Instruct --adapter {run / 'adapter'} "
            f"--out {run / 'eval' / 'after'} --judge refusal --limit 12 --max-new-tokens 24`") in problem.hint
    summary["limit"], summary["sampling"]["max_new_tokens"] = 12, 24  # re-evaluated as the hint says
    path.write_text(json.dumps(summary))
    assert set(card.load_run(run).evals) == {"before", "after"}


@pytest.mark.parametrize("stage", ["before", "after"])
def test_eval_of_another_pack_is_refused(tmp_path: Path, make_run, stage: str) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", ROOT_PACK)
    path = run / "eval" / stage / "eval.json"
    summary = json.loads(path.read_text())
    summary["pack"]["digest"] = "0" * 64
    path.write_text(json.dumps(summary))
    with pytest.raises(RunError) as excinfo:
        card.load_run(run)
    assert excinfo.value.problem.file == str(path) and excinfo.value.problem.where == "/pack/digest"
    assert "pa apply" in excinfo.value.problem.hint


def test_pack_card(tmp_path: Path) -> None:
    pack = load_pack(ROOT_PACK)
    text = card.render_pack_card(pack, "org/root-pack", "v1.0.0", {"pack.yaml": "0" * 64})
    metadata, body = card.parse_card(text)
    assert {"policyalign", "pack:root-pack", "pack-version:1.0.0"} <= set(metadata["tags"])
    assert metadata["policyalign"]["pack"]["files_digest"] == pack.files_digest
    assert metadata["license"] == "cc-by-4.0"  # the Hub's license ids are lowercase
    assert "pa pack pull org/root-pack@1.0.0" in body
    assert "| weapons | Weapons | refuse | yes |" in body


def test_pack_card_lists_the_inherited_eval_sets_it_is_evaluated_on(fixture_packs: Path) -> None:
    """The pack card listed only the pack's own sets, though `pa apply` runs its parents' too."""
    from policyalign.registry import Registry

    manifest = fixture_packs / "child-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("  - id: records\n", "  - id: scams\n    remove: true\n"
                                                     "  - id: records\n"))
    child = Registry([fixture_packs]).load("child-pack")
    body = card.parse_card(card.render_pack_card(child, "org/child-pack", "v1.0.0", {}))[1]
    assert "| harmful | safety | 2 |" in body and "| root-pack/harmful | safety | 1 \\(1 left out\\) |" in body
    assert "| root-pack/benign | over-refusal | 1 \\(1 left out\\) |" in body and "Sets named `pack/set`" in body
    assert "Sets named" not in card.render_pack_card(load_pack(ROOT_PACK), "org/root-pack", "v1.0.0", {})


def test_parse_card_edge_cases() -> None:
    assert card.parse_card("no front matter") == ({}, "no front matter")
    assert card.parse_card("---\n: [bad\n---\nbody")[0] == {}
    assert card.parse_card("---\ntags: [a]\n---\nbody") == ({"tags": ["a"]}, "body")


def test_card_shows_inherited_sets_and_their_categories_as_measured(tmp_path: Path, make_run,  # type: ignore[no-untyped-def]
                                                                    fixture_packs: Path) -> None:
    """A child's card listed its parents' categories as not measured: only its own sets ran. Now the
    parents' sets run (prefixed `parent/set`), and the items its changes no longer fit are named."""
    from policyalign import adapter_pull
    from policyalign.evaluate import evaluate
    from policyalign.generation import greedy_params
    from policyalign.registry import Registry

    manifest = fixture_packs / "child-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("  - id: records\n", "  - id: scams\n    action: comply\n"
                                                     "  - id: records\n"))
    run = make_run(tmp_path / "run", fixture_packs / "child-pack", evals=False)
    child = Registry([fixture_packs]).load("child-pack")
    for stage, adapter in (("before", None), ("after", run / "adapter")):
        evaluate(child, "tiny", adapter=adapter, out_dir=run / "eval" / stage, params=greedy_params(4), drift=False)
    text = _render(run)
    body = " ".join(text.split())
    assert "| root-pack/harmful | safety | 1 | violation\\_rate |" in body
    assert "| root-pack/benign | over-refusal | 2 | over\\_refusal\\_rate |" in body
    assert ("- root-pack/harmful: from root-pack; 1 of its items left out as no longer fitting this pack: "
            "category 'scams' changed from 'guide' to 'comply' \\(1\\)") in body
    assert "Not measured" not in body  # scams and weapons have root-pack's items, records the child's
    metadata = ModelCard(text).data.to_dict()
    assert {r["dataset"]["split"] for r in metadata["model-index"][0]["results"]} == {
        "harmful", "benign", "root-pack/harmful", "root-pack/benign"}
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    assert adapter_pull._result_problems(run, metadata, provenance) == []  # what `pa pull` checks


@pytest.mark.parametrize("value", ["2001-13-45", "9" * 5000, "[" * 3000])
def test_a_card_whose_metadata_yaml_cannot_be_built_has_no_metadata(value: str) -> None:
    """A date out of range, an integer past Python's digit limit or nesting past the stack raised ValueError or
    RecursionError, not yaml.YAMLError: `pa pack pull` of a repository with such a card crashed."""
    assert card.parse_card(f"---\nlicense: mit\nx: {value}\n---\nbody\n") == ({}, f"---\nlicense: mit\nx: {value}\n---\nbody\n")
