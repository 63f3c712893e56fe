"""pack_input: reading a pack's files (encoding marks, file names)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policyalign.cli import app
from policyalign.errors import PackError
from policyalign.pack import load_pack
from policyalign.registry import Registry


def _load(packs: Path, name: str):
    return load_pack(packs / name, registry=Registry([packs]))


def test_byte_order_marks_are_not_part_of_the_text(fixture_packs: Path) -> None:
    """A BOM (Notepad) at the start of policy.md, a template or an eval set is an encoding mark, not text."""
    root = fixture_packs / "root-pack"
    for rel in ("policy.md", "templates/plain.jinja", "eval/harmful.jsonl", "pack.yaml", "CHANGELOG.md"):
        (root / rel).write_bytes(b"\xef\xbb\xbf" + (root / rel).read_bytes())
    pack = _load(fixture_packs, "root-pack")
    assert "\ufeff" not in pack.policy and "\ufeff" not in pack.templates[0].source
    assert len(pack.eval_set("harmful").items) == 2


def test_a_file_name_that_is_not_utf8_is_a_problem_not_a_traceback(fixture_packs: Path) -> None:
    """A Latin-1 name from an archive made the digest's path encoding raise UnicodeEncodeError."""
    root = fixture_packs / "root-pack"
    (Path(os.fsdecode(os.fsencode(root) + b"/notes-\xe9.txt"))).write_bytes(b"x")
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    assert "root-pack/notes-\\xe9.txt: file name is not valid UTF-8" in str(info.value)
    result = CliRunner().invoke(app, ["validate", str(root), "--packs-path", str(fixture_packs)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_every_file_is_held_to_the_size_pa_pack_pull_accepts(fixture_packs: Path) -> None:
    """An unreferenced 3 MB notes.txt validated and was pushed, and then no one could pull the pack
    (pull caps every file by its kind); an oversized eval set is reported once, not by both checks."""
    from policyalign.pack_input import MAX_EVAL_BYTES, MAX_OTHER_BYTES

    root = fixture_packs / "root-pack"
    (root / "notes.txt").write_bytes(b"x" * (MAX_OTHER_BYTES + 1))
    (root / "eval" / "harmful.jsonl").write_bytes(b"x" * (MAX_EVAL_BYTES + 1))
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    messages = [str(p) for p in info.value.problems]
    assert [m for m in messages if m.startswith(f"{root}/notes.txt: file is")] != []
    assert len([m for m in messages if m.startswith(f"{root}/eval/harmful.jsonl: file is")]) == 1


@pytest.mark.parametrize("name", ["a\\b.txt", "c:notes.txt"])
def test_a_file_name_pa_pack_pull_refuses_is_a_problem(fixture_packs: Path, name: str) -> None:
    """A backslash or a drive letter in a file name validated and was pushed; every pull then refused it."""
    root = fixture_packs / "root-pack"
    (root / name).write_text("notes\n")
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    assert f"root-pack/{name}: file name has a backslash or starts with a drive letter" in str(info.value)


@pytest.mark.parametrize(("name", "reason"), [("con.md", "`con.md` is a Windows device name"),
                                              ("notes/Com7", "`Com7` is a Windows device name"),
                                              ("nul/x.md", "`nul` is a Windows device name"),
                                              ("notes.", "`notes.` ends in a dot"), ("notes ", "`notes ` ends in a space"),
                                              ("notes/a:b.md", "`a:b.md` holds :, which Windows file names cannot"),
                                              ("why?.md", "`why?.md` holds ?, which Windows")])
def test_a_file_name_windows_cannot_write_is_a_problem(fixture_packs: Path, name: str, reason: str) -> None:
    """`con.md` (a device on Windows) or `notes.` (Windows drops the dot) validated and was pushed; every pull
    then refused the pack, which cannot be installed on every system."""
    root = fixture_packs / "root-pack"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("notes\n")
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    assert f"root-pack/{name}: {reason}" in str(info.value) and "`pa pack pull` refuses" in str(info.value), str(info.value)



def test_a_file_name_with_a_tab_is_named_escaped(fixture_packs: Path) -> None:
    """A tab in a pack file's name is refused (Windows cannot hold control characters), and the name that names
    the place was printed raw, the tab in it, though the reason beside it was escaped."""
    (fixture_packs / "root-pack" / "a\tb.md").write_text("notes\n")
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    said = str(info.value)
    assert "root-pack/a\\tb.md: " in said and "\t" not in said, said

def test_file_names_differing_only_in_case_are_a_problem(fixture_packs: Path) -> None:
    """`notes/A.md` and `notes/a.md` (or `Eval/` beside `eval/`) validated on Linux and were pushed; on macOS and
    Windows they are one file, and every pull then refused the pack."""
    root = fixture_packs / "root-pack"
    (root / "notes").mkdir()
    (root / "notes" / "A.md").write_text("upper\n")
    (root / "notes" / "a.md").write_text("lower\n")
    (root / "Eval").mkdir()
    (root / "Eval" / "other.md").write_text("x\n")
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    assert "root-pack/notes/a.md: differs only in case from notes/A.md" in str(info.value), str(info.value)
    assert "root-pack/eval: differs only in case from Eval" in str(info.value), str(info.value)


def test_an_eval_set_of_junk_lines_reports_a_bounded_number_of_problems(fixture_packs: Path) -> None:
    """Each problem was checked against every earlier one (a list scan): 20,000 junk lines took two
    minutes to report and an 8 MB eval set of them (4 million lines, under the size bound) practically
    forever, in `pa validate`, `pa apply` and `pa pack pull` alike."""
    from policyalign.pack_input import MAX_PROBLEMS

    (fixture_packs / "root-pack" / "eval" / "harmful.jsonl").write_text("x\n" * (3 * MAX_PROBLEMS))
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    problems = caught.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0].where == "line 1" and "malformed JSON" in problems[0].message
    assert problems[-1].message == f"more than {MAX_PROBLEMS} problems: the rest are not listed"


def test_a_pack_directory_named_with_a_terminal_escape_is_printed_escaped(fixture_packs: Path) -> None:
    """`pa validate --all` over a directory holding `x\x1b]0;...\x07` (a contributed pack's folder) printed
    its name raw, in the INVALID line and in every problem's file: the escape went to the terminal."""
    (fixture_packs / "x\x1b]0;pwned\x07").mkdir()
    result = CliRunner().invoke(app, ["validate", "--all", "--dir", str(fixture_packs)])
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "x\\x1b]0;pwned\\x07/pack.yaml: pack.yaml is missing" in result.output


def test_a_file_name_with_a_terminal_escape_is_a_problem_printed_escaped(fixture_packs: Path) -> None:
    """A pack file named `\\x1b]0;...\\x07notes.txt` loaded (and was pushed), and any problem with it printed
    the name raw: the escape sequence went to the terminal of whoever ran `pa validate`."""
    (fixture_packs / "root-pack" / "\x1b]0;pwned\x07notes.txt").write_text("notes\n")
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    assert "\x1b" not in str(caught.value) and "\x07" not in str(caught.value)
    assert "root-pack/\\x1b]0;pwned\\x07notes.txt: file name holds a control character" in str(caught.value)


def test_a_symlink_whose_target_holds_a_terminal_escape_is_printed_escaped(fixture_packs: Path) -> None:
    """A link's target is the pack's text too: `notes.md -> /tmp/\\x1b]0;...\\x07` was reported as pointing outside
    the pack with the target raw, and the escape retitled the terminal of whoever ran `pa validate`."""
    os.symlink("/tmp/\x1b]0;pwned\x07", fixture_packs / "root-pack" / "notes.md")
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    assert "\x1b" not in str(caught.value) and "\x07" not in str(caught.value)
    assert "notes.md: symlink points outside the pack (/tmp/\\x1b]0;pwned\\x07)" in str(caught.value)


def test_problems_name_each_file_as_the_pack_was_given(fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa validate packs/root-pack` from the repository root printed `root-pack/pack.yaml:...` (relative to
    the pack's parent directory): a path that does not exist from where the user stands, and one that does
    not tell two packs of one name in different directories apart. Every kind of problem (schema, template,
    eval file, extends) names the file as the user can open it."""
    root, child = fixture_packs / "root-pack", fixture_packs / "child-pack"
    text = (root / "pack.yaml").read_text().replace("action: guide", "action: maybe")
    (root / "pack.yaml").write_text(text)
    (root / "templates" / "plain.jinja").write_text("{{ n }\n")
    with (root / "eval" / "harmful.jsonl").open("a") as handle:
        handle.write("{bad\n")
    (child / "pack.yaml").write_text((child / "pack.yaml").read_text().replace("root-pack@^1", "nowhere@^1"))
    monkeypatch.chdir(fixture_packs.parent)
    result = CliRunner().invoke(app, ["validate", "packs/root-pack", "packs/child-pack", "--packs-path", "packs"])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    for place in ("packs/root-pack/pack.yaml:/categories/1/action", "packs/root-pack/templates/plain.jinja:line 1",
                  "packs/root-pack/eval/harmful.jsonl:line 3", "packs/child-pack/pack.yaml:/extends/0"):
        assert f" {place}" in output, place


def test_directories_nested_past_the_path_length_limit_are_a_problem_not_a_traceback(
        fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing a pack with nested directories longer than PATH_MAX together (a contributed or generated
    tree) raised OSError "File name too long" out of pathlib: `pa validate` printed a traceback."""
    root = fixture_packs / "root-pack"
    monkeypatch.chdir(root)
    for _ in range(24):  # 24 x 201 characters: past Linux's 4096, each step short enough to make
        os.mkdir("d" * 200)
        os.chdir("d" * 200)
    monkeypatch.chdir(fixture_packs)
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    assert [str(p) for p in caught.value.problems] == [f"{root}: the pack's files cannot be listed: File name too long\n"
                                                       "    hint: flatten the pack's directories and shorten their names"]


@pytest.mark.parametrize("escape", ["\\0", "\\ud800"])
def test_a_referenced_path_holding_a_nul_or_a_lone_surrogate_is_a_problem_not_a_traceback(
        fixture_packs: Path, escape: str) -> None:
    """`policy: "policy\\0.md"` (or a template's or an eval set's `file`) made Path.resolve raise ValueError
    ("embedded null byte", or UnicodeEncodeError for a surrogate): `pa validate` and every pack lookup crashed."""
    root = fixture_packs / "root-pack"
    text = (root / "pack.yaml").read_text()
    text = text.replace("policy: policy.md", f'policy: "policy{escape}.md"')
    text = text.replace("file: templates/plain.jinja", f'file: "templates/plain{escape}.jinja"')
    (root / "pack.yaml").write_text(text)
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    wheres = {p.where for p in caught.value.problems if p.message.startswith("'") and ": path holds" in p.message}
    assert wheres == {"/policy (line 6)", "/synthesis/templates/0/file (line 26)"}
    result = CliRunner().invoke(app, ["validate", str(root), "--packs-path", str(fixture_packs)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_files_past_the_packs_total_size_are_not_read(fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The total bound was only reported: sixteen eval sets of 8 MiB (128 MiB, four times the bound) were all
    read and parsed, 70 s of `pa validate`. Referenced files are read until the bound, the rest are named."""
    from policyalign import pack_input

    root = fixture_packs / "root-pack"
    (root / "eval" / "benign.jsonl").write_text("x\n" * 100)
    referenced = [root / "policy.md", *(root / "templates").iterdir(), *(root / "eval").iterdir()]
    monkeypatch.setattr(pack_input, "MAX_PACK_BYTES", sum(p.stat().st_size for p in referenced) - 50)
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    messages = [str(p) for p in caught.value.problems]
    assert [m for m in messages if m.startswith(f"{root}/eval/benign.jsonl: not read: the pack's files take more")]
    assert not [m for m in messages if "malformed JSON" in m] and [m for m in messages if "over the limit of" in m]


def test_every_manifest_problem_placed_by_a_pointer_names_its_line(fixture_packs: Path) -> None:
    """A bad `version:` or a `policy:` path out of the pack was placed as `/version` or `/policy` alone, while a
    schema error on the same key named its line: the checks that did not thread the lines through left the
    contributor to find the key in the YAML themselves."""
    root = fixture_packs / "root-pack"
    text = (root / "pack.yaml").read_text()
    (root / "pack.yaml").write_text(text.replace("version: 1.0.0", "version: v1.0.0").replace(
        "policy: policy.md", "policy: ../policy.md"))
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    assert "pack.yaml:/version (line 2): 'v1.0.0' is not a semantic version" in str(info.value)
    assert "pack.yaml:/policy (line 6): '../policy.md'" in str(info.value)


def test_a_file_that_is_not_utf8_is_placed_by_its_line(fixture_packs: Path) -> None:
    """A Latin-1 `é` pasted into policy.md was placed as `byte 517`, and in pack.yaml not placed at all."""
    root = fixture_packs / "root-pack"
    (root / "policy.md").write_bytes((root / "policy.md").read_bytes() + "Café rules.\n".encode("latin-1"))
    lines_before = (root / "policy.md").read_bytes().count(b"\n") - 1
    (root / "pack.yaml").write_bytes((root / "pack.yaml").read_bytes().replace(b"title: Fixture", b"title: \xc9 Fixture"))
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    assert "root-pack/pack.yaml:line 3: manifest is not valid UTF-8" in str(info.value)
    (root / "pack.yaml").write_bytes((root / "pack.yaml").read_bytes().replace(b"\xc9 ", b""))
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    assert f"root-pack/policy.md:line {lines_before + 1}: file is not valid UTF-8" in str(info.value)


def test_a_directory_linked_from_outside_the_pack_is_told_to_be_copied_as_a_directory(fixture_packs: Path,
                                                                                      tmp_path: Path) -> None:
    """`templates -> ../shared-templates` was told to "replace the symlink with a copy of the file"."""
    root = fixture_packs / "root-pack"
    (root / "templates").rename(tmp_path / "shared-templates")
    os.symlink(tmp_path / "shared-templates", root / "templates")
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    [hint] = {p.hint for p in caught.value.problems if p.message.startswith("symlink points outside the pack")}
    assert hint == "replace the symlink with a copy of the directory inside the pack"


def test_a_policy_over_its_bound_is_told_to_be_shortened_not_split(fixture_packs: Path) -> None:
    """"split or shorten the file", the hint for any file over its bound, for the one file the teacher reads whole."""
    root = fixture_packs / "root-pack"
    (root / "policy.md").write_text("Be careful with every request. " * 5000)
    with pytest.raises(PackError) as caught:
        _load(fixture_packs, "root-pack")
    [problem] = caught.value.problems
    assert problem.message.endswith("over the 131072-byte limit")
    assert problem.hint.startswith("shorten the policy: it is the system message of every teacher prompt"), problem


@pytest.mark.parametrize(("field", "wrong", "right"), [
    ("policy: policy.md", "Policy.md", "policy.md"),
    ("file: templates/plain.jinja", "templates/plain.j2", "templates/plain.jinja"),
    ("file: eval/harmful.jsonl", "eval/harmfull.jsonl", "eval/harmful.jsonl"),
])
def test_a_mistyped_path_names_the_file_it_is_close_to(fixture_packs: Path, field: str, wrong: str, right: str) -> None:
    """`policy: Policy.md` (the file is policy.md) got "create the file or fix the path", leaving the pack's
    author to spot the difference by eye; the hint names the pack's file that the path is close to."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    key = field.split(":")[0]
    manifest.write_text(manifest.read_text().replace(field, f"{key}: {wrong}"))
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    [problem] = [p for p in info.value.problems if "does not exist" in p.message]
    assert problem.message == f"referenced file {wrong!r} does not exist"
    assert problem.hint == f"did you mean {right!r}? Fix the path, or create the file"


def test_a_path_close_to_no_file_keeps_the_plain_hint(fixture_packs: Path) -> None:
    """Nothing in the pack resembles the path: no guess, the plain fix."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("policy: policy.md", "policy: rules/text.txt"))
    with pytest.raises(PackError) as info:
        _load(fixture_packs, "root-pack")
    [problem] = [p for p in info.value.problems if "does not exist" in p.message]
    assert problem.hint == "create the file or fix the path"
