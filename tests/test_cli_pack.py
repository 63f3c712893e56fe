"""The registry commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policyalign.cli import app

runner = CliRunner()


def test_new_pack_validates_as_created(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    result = runner.invoke(app, ["new", "mypack", "--dir", str(packs)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["validate", str(packs / "mypack")])
    assert result.exit_code == 0, result.output


def test_validate_lists_the_stand_in_text_a_new_pack_still_holds(tmp_path: Path) -> None:
    """A skeleton validates, but nothing said that its policy still read "Example rule" and its eval
    items "Replace me": a contributor could publish or train on one without noticing."""
    packs = tmp_path / "packs"
    assert runner.invoke(app, ["new", "mypack", "--dir", str(packs)]).exit_code == 0
    root = packs / "mypack"
    result = runner.invoke(app, ["validate", str(root)])
    assert result.exit_code == 0, result.output
    assert f"draft    {root}: 6 piece(s) of `pa new` stand-in text left" in result.output
    for place in (f"{root / 'pack.yaml'}:summary (line 4): ", f"{root / 'policy.md'}:line 3: ",
                  f"{root / 'pack.yaml'}:category example-violation (line 9): ",
                  f"{root / 'eval' / 'harmful.jsonl'}:item mypack-harmful-0001", f"{root / 'eval' / 'benign.jsonl'}:item"):
        assert place in result.output, place
    manifest = root / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("TODO: one or two sentences on what this policy covers and who it is for.",
                                                     "Rules for an HR assistant.").replace("example-violation", "pay-data")
                        .replace("Describe what counts as a violation in this category; the generator and judges read this.",
                                 "Requests to reveal a colleague's pay.").replace("title: Example violation", "title: Pay data"))
    for eval_file in (root / "eval").glob("*.jsonl"):
        eval_file.write_text(eval_file.read_text().replace("example-violation", "pay-data"))
    result = runner.invoke(app, ["validate", str(root)])
    assert result.exit_code == 0 and "4 piece(s)" in result.output, result.output
    assert ":summary" not in result.output and "example category" not in result.output
    assert "5 of the skeleton's seeds" in result.output


def test_a_category_still_titled_as_the_skeleton_is_a_draft(tmp_path: Path) -> None:
    """A category renamed and described but still titled "Example violation" was no longer a draft: `pa pack push`
    published it, and the generator and judges were shown that title beside the real description."""
    packs = tmp_path / "packs"
    assert runner.invoke(app, ["new", "mypack", "--dir", str(packs)]).exit_code == 0
    manifest = packs / "mypack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("example-violation", "pay-data").replace(
        "Describe what counts as a violation in this category; the generator and judges read this.",
        "Requests to reveal a colleague's pay."))
    for eval_file in (packs / "mypack" / "eval").glob("*.jsonl"):
        eval_file.write_text(eval_file.read_text().replace("example-violation", "pay-data"))
    result = runner.invoke(app, ["validate", str(packs / "mypack")])
    assert result.exit_code == 0, result.output
    assert f"{manifest}:category pay-data (line 9): still holds the skeleton's example category" in result.output, result.output


def test_validate_given_a_packs_name_names_its_directory(fixture_packs: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa validate root-pack` (a name, as `pa show` and `pa render` take) was told "pass the path of a directory
    holding pack.yaml" and not which one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PA_HOME", str(tmp_path / "home"))
    result = runner.invoke(app, ["validate", "root-pack", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 2
    assert f"the pack 'root-pack' is {fixture_packs / 'root-pack'}" in result.output, result.output


def test_validate_finds_no_stand_in_text_in_the_shipped_packs() -> None:
    packs = Path(__file__).parents[1] / "packs"
    result = runner.invoke(app, ["validate", "--all", "--dir", str(packs)])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok       ") >= 5 and "draft" not in result.output


def test_new_pack_where_packs_is_a_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "packs").write_text("a file\n")
    result = runner.invoke(app, ["new", "mypack", "--dir", str(tmp_path / "packs")])
    assert result.exit_code == 2, result.output
    assert "cannot create the pack here" in result.output and "Traceback" not in result.output
    # `--dir` named the place: "run from a directory whose packs/ you can write to" did not apply
    assert "pass --dir a directory you can write to" in result.output


def test_new_pack_extending_a_parent_validates(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["new", "kid", "--extends", "root-pack", "--dir", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["show", "kid", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    assert "weapons" in result.output and "locked" in result.output


def test_new_pack_extending_a_fresh_child_validates(tmp_path: Path) -> None:
    """A child of a fresh pack validated, but a grandchild of it did not: its skeleton category took
    the id of the example category it inherited, overriding it with the same seeds again."""
    packs = tmp_path / "packs"
    assert runner.invoke(app, ["new", "top", "--dir", str(packs)]).exit_code == 0
    assert runner.invoke(app, ["new", "mid", "--extends", "top", "--dir", str(packs)]).exit_code == 0
    result = runner.invoke(app, ["new", "low", "--extends", "mid", "--dir", str(packs)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["validate", str(packs / "low")])
    assert result.exit_code == 0, result.output
    assert "6 piece(s) of `pa new` stand-in text left" in result.output


def test_validate_names_a_numbered_example_category_left_in_a_grandchild(tmp_path: Path) -> None:
    """A grandchild's example category is `example-child-violation-2`: with its description replaced, the
    draft check no longer named it, though `example-violation` and `example-child-violation` are caught by id."""
    packs = tmp_path / "packs"
    for args in (["top"], ["mid", "--extends", "top"], ["low", "--extends", "mid"]):
        assert runner.invoke(app, ["new", *args, "--dir", str(packs)]).exit_code == 0
    manifest = packs / "low" / "pack.yaml"
    assert "id: example-child-violation-2" in manifest.read_text()
    manifest.write_text(manifest.read_text().replace(
        "Describe what counts as a violation in this category; the generator and judges read this.", "Real description."))
    result = runner.invoke(app, ["validate", str(packs / "low"), "--packs-path", str(packs)])
    assert result.exit_code == 0, result.output
    assert "category example-child-violation-2 (line 10): still holds the skeleton's example category" in result.output, result.output


def test_show_never_cuts_a_category_id(fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 80 columns `pa show` printed "fraud-impersonati…": not the id that `pa render --category` needs."""
    monkeypatch.setenv("COLUMNS", "80")
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("  - id: scams\n    title: Scams\n", "  - id: election-worker-intimidation\n"
                                                     "    title: Intimidating election workers and voters\n"))
    for eval_file in (fixture_packs / "root-pack" / "eval").glob("*.jsonl"):
        eval_file.write_text(eval_file.read_text().replace('"scams"', '"election-worker-intimidation"'))
    result = runner.invoke(app, ["show", "root-pack", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    table = result.output.split("┡", 1)[1]
    assert "…" not in table
    ids = "".join(line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│"))
    assert "election-worker-intimidation" in ids


def test_list_piped_shows_each_pack_on_one_line_as_wide_as_its_content(fixture_packs: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped (`pa list | grep`, a CI log), the table was 80 columns wide: each title wrapped over lines and the
    12-character digests were cut to "aefe0fdb2a…". Without COLUMNS it is as wide as its rows; COLUMNS still rules."""
    monkeypatch.delenv("COLUMNS", raising=False)
    title = "A fixture pack whose title runs on well past the eighty columns a pipe was given by rich"
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("title: Fixture pack root-pack", f"title: {title}"))
    result = runner.invoke(app, ["list", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "root-pack" in line)
    assert title in row and "…" not in result.output and len(row) > 120, result.output
    monkeypatch.setenv("COLUMNS", "80")
    narrow = runner.invoke(app, ["list", "--packs-path", str(fixture_packs)])
    assert max(len(line) for line in narrow.output.splitlines()) == 80, narrow.output


def test_show_piped_draws_its_rule_80_columns_wide(fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table piped is as wide as its content, which would have made `pa show`'s rule a million columns."""
    monkeypatch.delenv("COLUMNS", raising=False)
    result = runner.invoke(app, ["show", "root-pack", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    assert [len(line) for line in result.output.splitlines() if "policy (the teacher's system message)" in line] == [80]


def test_new_refuses_to_overwrite(fixture_packs: Path) -> None:
    """The refusal named the directory twice: "error: packs/root-pack: packs/root-pack already exists"."""
    result = runner.invoke(app, ["new", "root-pack", "--dir", str(fixture_packs)])
    assert result.exit_code == 2 and "already exists" in result.output
    assert result.output.count(str(fixture_packs / "root-pack")) == 1, result.output


def test_list_json(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["list", "--json", "--packs-path", str(fixture_packs)])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["child-pack"]["categories"] == 3
    assert rows["root-pack"]["eval"] == {"harmful": 2, "benign": 2}
    assert len(rows["root-pack"]["digest"]) == 64


def test_list_marks_invalid_packs(fixture_packs: Path) -> None:
    (fixture_packs / "root-pack" / "policy.md").write_text("")
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["list", "--json", "--packs-path", str(fixture_packs)]).output)}
    assert rows["root-pack"]["valid"] is False


def test_show_and_list_print_pack_text_without_interpreting_markup(fixture_packs: Path, monkeypatch, tmp_path: Path) -> None:
    """Titles and summaries are untrusted: "[/]" crashed `pa show`/`pa list` (rich MarkupError), and
    "[link=...]" or colour tags were interpreted, hiding or dressing up text."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PA_HOME", str(tmp_path / "home"))
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    text = manifest.read_text().replace("title: Fixture pack root-pack", 'title: "Root [/] [red]pack[/red]"')
    text = text.replace("summary: A small pack", "summary: A [link=https://x.example]small[/link] pack")
    manifest.write_text(text.replace("    title: Scams\n", '    title: "Scams [/]"\n'))
    result = runner.invoke(app, ["show", "root-pack", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "Root [/] [red]pack[/red]" in out and "A [link=https://x.example]small[/link] pack" in out
    assert "Scams [/]" in out
    result = runner.invoke(app, ["list", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    assert "[red]pack" in result.output


def test_render_shows_prompts_per_category(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["render", "child-pack", "--packs-path", str(fixture_packs), "--category", "records"])
    assert result.exit_code == 0, result.output
    assert "Medical records" in result.output and "HIV status" in result.output
    assert "weapons" not in result.output


def test_render_unknown_category_suggests(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["render", "child-pack", "--packs-path", str(fixture_packs), "--category", "record"])
    assert result.exit_code == 2 and "did you mean 'records'" in result.output
    # A name far from every category used to get no hint at all.
    result = runner.invoke(app, ["render", "child-pack", "--packs-path", str(fixture_packs), "--category", "zzz"])
    assert result.exit_code == 2 and "its categories: weapons, scams, records" in result.output
    result = runner.invoke(app, ["render", "child-pack", "--packs-path", str(fixture_packs), "--template", "zzz"])
    assert result.exit_code == 2 and "its templates: " in result.output


def test_render_empty_category_or_template_is_an_error(fixture_packs: Path) -> None:
    """`--category ""` printed nothing and exited 0: an empty id matched no category and was taken for "all"."""
    for option, listed in (("--category", "its categories: weapons, scams, records"), ("--template", "its templates: ")):
        result = runner.invoke(app, ["render", "child-pack", "--packs-path", str(fixture_packs), option, ""])
        assert result.exit_code == 2, result.output
        assert listed in result.output


def test_render_with_an_n_the_template_cannot_take_is_a_clear_error(fixture_packs: Path) -> None:
    """Validation renders with the pack's n; `--n` may still break a template: file, line and category, no traceback."""
    template = fixture_packs / "root-pack" / "templates" / "plain.jinja"
    template.write_text(template.read_text() + "{% for i in range(n * 4) %}{{ i }} {% endfor %}\n")
    args = ["render", "root-pack", "--packs-path", str(fixture_packs), "--category", "scams"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--n", "500"])
    assert result.exit_code == 2 and result.exception.__class__.__name__ == "SystemExit", result.output
    text = " ".join(result.output.split())
    assert "root-pack/templates/plain.jinja:line" in text and "category 'scams' with n=500" in text
    assert "range() of more than 1000 items" in text
    for bad in ("0", "-3"):  # `--n 0` used to mean the default, `--n -3` asked for "-3 new requests"
        assert runner.invoke(app, [*args, "--n", bad]).exit_code == 2


def test_render_holds_n_to_the_bound_synthesis_is_held_to(fixture_packs: Path) -> None:
    """`pa render --n 100000` printed prompts asking for 100000 requests, "exactly as the generator sees them",
    where `pa synthesize --n 100000` is refused: the same bound now, named as the flag."""
    args = ["render", "root-pack", "--packs-path", str(fixture_packs), "--category", "scams"]
    assert runner.invoke(app, [*args, "--n", "1000"]).exit_code == 0
    result = runner.invoke(app, [*args, "--n", "100000"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--n: 100000: must be at most 1000 (the pack schema's bound for synthesis.count_per_category)" in text \
        and "use --n 1000 or less" in text


def test_real_process_reports_without_traceback(fixture_packs: Path) -> None:
    (fixture_packs / "root-pack" / "pack.yaml").write_text("name: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "policyalign", "validate", str(fixture_packs / "root-pack")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid YAML" in proc.stderr and "Traceback" not in proc.stderr


def _other_root_pack(base: Path, fixture_packs: Path, version: str) -> None:
    """A different `root-pack` (newer, one category reworded) under `base`, as pulled or on PA_PACKS_PATH."""
    import shutil

    dest = base / "root-pack"
    shutil.copytree(fixture_packs / "root-pack", dest)
    manifest = (dest / "pack.yaml").read_text()
    manifest = manifest.replace("version: 1.0.0", f"version: {version}").replace("Writing scam messages", "Drafting scam texts")
    (dest / "pack.yaml").write_text(manifest)
    (dest / "CHANGELOG.md").write_text(f"# Changelog\n\n## {version}\n\nReworded scams.\n\n" + (dest / "CHANGELOG.md").read_text())


def test_index_and_validate_all_ignore_user_and_env_packs(fixture_packs: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PA_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("PA_PACKS_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    clean = (fixture_packs / "INDEX.json").read_text()

    _other_root_pack(tmp_path / "home" / "packs", fixture_packs, "1.5.0")
    _other_root_pack(tmp_path / "envpacks", fixture_packs, "1.7.0")
    monkeypatch.setenv("PA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PA_PACKS_PATH", str(tmp_path / "envpacks"))
    # the polluted search path really does pick the other root-pack for `pa show`
    shown = runner.invoke(app, ["show", "child-pack", "--packs-path", str(fixture_packs)])
    clean_digest = {p["name"]: p["digest"] for p in json.loads(clean)["packs"]}["child-pack"]
    assert shown.exit_code == 0 and clean_digest not in shown.output, shown.output

    result = runner.invoke(app, ["validate", "--all", "--dir", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    assert (fixture_packs / "INDEX.json").read_text() == clean


def test_new_rejects_names_the_pack_schema_rejects(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    for name in ("a", "x" * 65, "Bad_Name", "double--hyphen"):
        result = runner.invoke(app, ["new", name, "--dir", str(packs)])
        assert result.exit_code == 2 and "invalid pack name" in result.output, (name, result.output)
    assert not packs.exists()
    for name in ("ab", "x" * 64):  # the schema's bounds, inclusive
        assert runner.invoke(app, ["new", name, "--dir", str(packs)]).exit_code == 0
        result = runner.invoke(app, ["validate", str(packs / name)])
        assert result.exit_code == 0, result.output


def test_new_extending_a_fresh_0x_pack_validates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PA_PACKS_PATH", raising=False)
    packs = tmp_path / "packs"
    assert runner.invoke(app, ["new", "base-pack", "--dir", str(packs)]).exit_code == 0
    result = runner.invoke(app, ["new", "child", "--extends", "base-pack", "--dir", str(packs)])
    assert result.exit_code == 0, result.output
    assert 'extends: ["base-pack@^0.1"]' in (packs / "child" / "pack.yaml").read_text()
    result = runner.invoke(app, ["validate", str(packs / "child")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", "--dir", str(packs)])
    assert result.exit_code == 0, result.output


def test_new_extending_a_prerelease_parent_validates(fixture_packs: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PA_PACKS_PATH", raising=False)
    root = fixture_packs / "root-pack"
    (root / "pack.yaml").write_text((root / "pack.yaml").read_text().replace("version: 1.0.0", "version: 2.0.0-rc.1"))
    (root / "CHANGELOG.md").write_text("# Changelog\n\n## 2.0.0-rc.1\n\n- Next.\n")
    result = runner.invoke(app, ["new", "kid", "--extends", "root-pack", "--dir", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    assert 'extends: ["root-pack@>=2.0.0-rc.1,<3"]' in (fixture_packs / "kid" / "pack.yaml").read_text()
    result = runner.invoke(app, ["validate", str(fixture_packs / "kid")])
    assert result.exit_code == 0, result.output


def test_new_checks_the_parent_before_writing(fixture_packs: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PA_PACKS_PATH", raising=False)
    cases = {
        "root-pak": "did you mean 'root-pack'",
        "root-pack@^2": "no version of 'root-pack' matches '^2'",
        "../root-pack": "invalid --extends",
        "kid": "cannot extend itself",
    }
    for parent, message in cases.items():
        result = runner.invoke(app, ["new", "kid", "--extends", parent, "--dir", str(fixture_packs)])
        assert result.exit_code == 2 and message in result.output, (parent, result.output)
        assert not (fixture_packs / "kid").exists()


def test_list_shows_a_pack_whose_manifest_cannot_be_read(fixture_packs: Path) -> None:
    """An oversized manifest gives no name to list it by; it must still appear, as invalid, with the reason."""
    from policyalign.pack_input import MAX_MANIFEST_BYTES

    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text() + "#" * MAX_MANIFEST_BYTES)
    rows = json.loads(runner.invoke(app, ["list", "--json", "--packs-path", str(fixture_packs)]).output)
    row = next(r for r in rows if r["path"] == str(fixture_packs / "root-pack"))
    assert row["valid"] is False and "limit" in row["problem"]
    table = runner.invoke(app, ["list", "--packs-path", str(fixture_packs)])
    assert table.exit_code == 0 and "root-pack" in table.output and "invalid" in table.output


def test_list_escapes_a_pack_directory_name_holding_a_terminal_escape(fixture_packs: Path) -> None:
    """A pack whose manifest cannot be read is listed by its directory's name, printed raw: a directory
    named `x\\x1b]0;...\\x07` sent the escape sequence to the terminal of whoever ran `pa list`."""
    evil = fixture_packs / "evil\x1b]0;pwned\x07"
    evil.mkdir()
    (evil / "pack.yaml").write_text("name: [\n")
    result = runner.invoke(app, ["list", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "evil\\x1b]0;" in result.output


def test_new_names_the_field_when_the_parent_has_no_semantic_version(fixture_packs: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """`pa new kid --extends root-pack` with root-pack at `version: "1.0"` said "no version of 'root-pack'
    matches ''" (and, once the name resolved to that directory, "no version of 'root-pack' to extend"),
    naming neither the file nor the field to fix."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PA_HOME", str(tmp_path / "home"))
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", 'version: "1.0"'))
    result = runner.invoke(app, ["new", "kid", "--extends", "root-pack", "--dir", str(fixture_packs)])
    assert result.exit_code == 2
    assert "root-pack/pack.yaml:/version (line 2): '1.0' is not a semantic version" in result.output
    assert not (fixture_packs / "kid").exists()
