"""schema: the shipped JSON Schemas' errors worded as problems."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from policyalign.errors import PackError
from policyalign.pack import load_pack
from policyalign.registry import Registry
from policyalign.schema import schema_text


def test_a_value_over_its_bound_is_not_repeated_whole(fixture_packs: Path) -> None:
    """jsonschema's message opens with the whole value: a 2 MB eval prompt over its 20,000-character bound was a
    2 MB line of `pa validate` output, and the seeds of a category over its 200 were all repeated."""
    item = {"id": "root-h9", "category": "weapons", "prompt": "word " * 400_000, "expect": "refuse"}
    with (fixture_packs / "root-pack" / "eval" / "harmful.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(item) + "\n")
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    seeds = "".join(f"      - \"Seed number {i} asks for the forbidden thing {'at length ' * 100}\"\n" for i in range(201))
    manifest.write_text(manifest.read_text().replace("    seeds:\n", "    seeds:\n" + seeds, 1))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "root-pack", registry=Registry([fixture_packs]))
    messages = {p.where.split(" ")[0]: p.message for p in caught.value.problems}
    assert messages["line"].endswith("... (2000000 characters) is too long (at most 20000 characters)"), messages
    assert messages["/categories/0/seeds"].endswith(" items) is too long (at most 200 items)"), messages
    assert all(len(message) < 300 for message in messages.values())


def test_a_value_out_of_its_bounds_says_the_bound(fixture_packs: Path) -> None:
    """"'...' is too long" (or "too short") named no bound: a summary, an eval prompt or a list over its limit
    left the user to find the limit in the schema."""
    item = {"id": "root-h9", "category": "weapons", "prompt": "x" * 20_001, "expect": "refuse"}
    with (fixture_packs / "root-pack" / "eval" / "harmful.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(item) + "\n")
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("\nsummary: A small pack", "\nsummary: Short.\n#", 1))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "root-pack", registry=Registry([fixture_packs]))
    messages = [p.message for p in caught.value.problems]
    assert any(m.endswith("(20001 characters) is too long (at most 20000 characters)") for m in messages), messages
    assert "'Short.' is too short (at least 10 characters)" in messages, messages


def test_the_chat_message_schema_is_the_same_in_both_schema_files() -> None:
    """A chat turn is checked by two schema files: pack.schema.json's `$defs/message` (a seed's conversation) and
    eval-item.schema.json's `messages` items (an eval item's). Each file stays whole in itself, as the published
    schemas/ an editor reads alone (a `$ref` from one to the other would send it to policyalign.dev, which does not
    serve them), so the two copies are held equal here: one changed alone would let a seed hold a turn that an eval
    item may not, or the reverse."""
    pack = json.loads(schema_text("pack.schema.json"))
    item = json.loads(schema_text("eval-item.schema.json"))
    assert item["properties"]["messages"]["items"] == pack["$defs"]["message"]


def test_a_seed_conversation_has_the_bounds_of_an_eval_items(fixture_packs: Path) -> None:
    """An eval item holds at most 64 messages and 64 tools; a seed conversation, which becomes a training prompt
    the same way, had no bound at all: 10,000 turns in one seed validated."""
    pack = json.loads(schema_text("pack.schema.json"))["$defs"]["seed"]["oneOf"][1]["properties"]
    item = json.loads(schema_text("eval-item.schema.json"))["properties"]
    assert [pack[k]["maxItems"] for k in ("messages", "tools")] == [item[k]["maxItems"] for k in ("messages", "tools")]
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    turns = "".join("          - {role: user, content: \"One more turn of this long chat.\"}\n" for _ in range(65))
    manifest.write_text(manifest.read_text().replace("    seeds:\n", "    seeds:\n      - messages:\n" + turns, 1))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "root-pack", registry=Registry([fixture_packs]))
    assert any(p.where.startswith("/categories/0/seeds/0/messages") and p.message.endswith("(at most 64 items)")
               for p in caught.value.problems), caught.value.problems


def test_a_text_field_yaml_read_as_a_number_or_a_boolean_is_told_to_quote_it(fixture_packs: Path) -> None:
    """`version: 1.0` is YAML's float and `title: yes` its true: "1.0 is not of type 'string'" came with the
    field's description as the hint, which did not say that the value only needs quotes."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 1.0").replace(
        "title: Scams", "title: yes"))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "root-pack", registry=Registry([fixture_packs]))
    hints = {p.where.split(" ")[0]: p.hint for p in caught.value.problems}
    assert hints["/version"].startswith("YAML read the unquoted value as a number: put it in quotes"), hints
    assert "MAJOR.MINOR.PATCH" in hints["/version"]
    assert hints["/categories/1/title"].startswith("YAML read the unquoted value as true/false"), hints


def test_a_list_field_given_one_bare_value_is_shown_the_list_syntax(fixture_packs: Path) -> None:
    """`extends: root-pack@^1` got "'root-pack@^1' is not of type 'array'" and the field's description."""
    manifest = fixture_packs / "child-pack" / "pack.yaml"
    text = manifest.read_text()
    extends = next(line for line in text.splitlines() if line.startswith("extends:"))
    manifest.write_text(text.replace(extends, "extends: root-pack@^1"))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "child-pack", registry=Registry([fixture_packs]))
    # Not also "new category 'weapons' is missing title" and its eval items': only that they wait for the fix.
    problem, unchecked = caught.value.problems
    assert unchecked.message.startswith("eval items' categories not checked until the problems above are fixed")
    assert problem.message == "'root-pack@^1' is not of type 'array'"
    assert problem.hint.startswith('write it as a list, even of one: ["root-pack@^1"]'), problem


@pytest.mark.parametrize(("field", "value", "hint"), [
    ("lora_r", "0", "use an integer at least 1 and at most 1024; LoRA rank."),
    ("learning_rate", "0", "use a number above 0 and at most 1"),
    ("filter_keep", "1.5", "use a number above 0 and at most 1; Fraction of synthesized instructions kept"),
])
def test_a_number_out_of_its_bounds_is_told_its_range(fixture_packs: Path, field: str, value: str, hint: str) -> None:
    """`lora_r: 0` was hinted only with the field's description ("LoRA rank."), and `learning_rate: 0` got no
    hint at all: neither said which values are allowed. The hint gives the whole range."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    text = manifest.read_text()
    assert "\ntraining:\n" in text, "fixture drifted: root-pack has no training section"
    text = re.sub(rf"\n  {field}: .*", "", text)  # root-pack sets lora_r itself: a second one is a repeated key
    manifest.write_text(text.replace("\ntraining:\n", f"\ntraining:\n  {field}: {value}\n", 1))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "root-pack", registry=Registry([fixture_packs]))
    [problem] = [p for p in caught.value.problems if p.where.startswith(f"/training/{field}")]
    assert problem.hint.startswith(hint), problem.hint


@pytest.mark.parametrize(("field", "hint"), [
    ("top_n", "--top-k (top_n in pa apply --config); training.top_k is the reverse KL's top-k"),
    ("save_steps", "--save-steps (save_steps in pa apply --config)"),
    ("alpha", "the LoRA scale is training.lora_alpha"),
    ("keep", "training.filter_keep"),
    ("lr", "--lr is training.learning_rate"),
])
def test_a_run_option_in_a_packs_training_is_told_where_it_belongs(fixture_packs: Path, field: str, hint: str) -> None:
    """A run's option written into `training:` was hinted at the closest spelling there: `top_n` "did you mean
    'top_k'?" (the reverse KL's top-k, not the selection count), `save_steps` "did you mean 'max_steps'?" (the
    training's length), `alpha` "did you mean 'lora_alpha'?"; `keep` and `lr` got the list of every field."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("\ntraining:\n", f"\ntraining:\n  {field}: 1\n", 1))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "root-pack", registry=Registry([fixture_packs]))
    [problem] = [p for p in caught.value.problems if p.where.startswith(f"/training/{field}")]
    assert problem.message == f"unknown field {field!r}" and hint in problem.hint, problem.hint
    assert "did you mean" not in problem.hint and problem.file.endswith("pack.yaml")


@pytest.mark.parametrize(("value", "hint"), [("q_proj", "[q_proj], or all-linear"),
                                             ("q_proj, v_proj", "[q_proj, v_proj], or all-linear"),
                                             ("5", "[q_proj, v_proj], or all-linear")])
def test_training_target_modules_not_a_list_is_shown_the_list(fixture_packs: Path, value: str, hint: str) -> None:
    """`target_modules: q_proj` (or `q_proj, v_proj`, as --target-modules and a `pa apply --config` file take them)
    was "'all-linear' was expected", with no hint: as if all-linear were the only value a pack may give."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    text = re.sub(r"\n  target_modules: .*", "", manifest.read_text())
    manifest.write_text(text.replace("\ntraining:\n", f"\ntraining:\n  target_modules: {value}\n", 1))
    with pytest.raises(PackError) as caught:
        load_pack(fixture_packs / "root-pack", registry=Registry([fixture_packs]))
    [problem] = [p for p in caught.value.problems if p.where.startswith("/training/target_modules")]
    assert problem.message.endswith("is neither 'all-linear' nor a list") and problem.hint.endswith(hint), problem
