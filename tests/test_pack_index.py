"""INDEX.json and the version-bump checks `pa validate --all` runs in CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broken_packs import norm
from policyalign.cli import app

runner = CliRunner()


def _validate_all(packs: Path):
    return runner.invoke(app, ["validate", "--all", "--dir", str(packs)])


def test_index_then_validate_all_passes(fixture_packs: Path) -> None:
    assert runner.invoke(app, ["index", "--dir", str(fixture_packs)]).exit_code == 0
    result = _validate_all(fixture_packs)
    assert result.exit_code == 0, result.output
    assert "ok       root-pack@1.0.0" in result.output


def test_a_packs_directory_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    """`pa index --dir pack` (a typo) created pack/ and wrote an index of 0 packs there."""
    for args in (["index"], ["validate", "--all"]):
        result = runner.invoke(app, [*args, "--dir", str(tmp_path / "pack")])
        assert result.exit_code == 2, result.output
        assert "packs directory" in result.output and "does not exist" in result.output
    assert not (tmp_path / "pack").exists()
    (tmp_path / "notes.txt").write_text("x\n")  # a file was said not to exist
    for args in (["index"], ["validate", "--all"]):
        result = runner.invoke(app, [*args, "--dir", str(tmp_path / "notes.txt")])
        assert result.exit_code == 2 and "notes.txt is a file, not a directory" in result.output, result.output


def test_a_pack_given_as_the_packs_directory_is_named_as_such(fixture_packs: Path) -> None:
    """`pa validate --all --dir packs/general` reported each of its subfolders as a pack missing pack.yaml."""
    for args in (["index"], ["validate", "--all"]):
        result = runner.invoke(app, [*args, "--dir", str(fixture_packs / "root-pack")])
        assert result.exit_code == 2, result.output
        assert "root-pack is a pack, not a directory of packs" in result.output
        assert f"pa validate {fixture_packs / 'root-pack'}" in result.output and "missing" not in result.output
    assert not (fixture_packs / "root-pack" / "INDEX.json").exists()


@pytest.mark.parametrize("command", [["index"], ["validate", "--all"]])
def test_an_extends_cycle_is_listed_once(fixture_packs: Path, command: list[str]) -> None:
    """`pa index` and `pa validate --all` over two packs extending each other listed the one cycle twice
    ("2 problem(s) found"): every pack in the loop fails on it, and their problems were joined as they were.
    `pa validate --all` still calls both packs invalid."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("name: root-pack\n", "name: root-pack\nextends: [child-pack]\n", 1))
    result = runner.invoke(app, [*command, "--dir", str(fixture_packs)])
    assert result.exit_code == 2, result.output
    assert norm(result.output).count("extends cycle:") == 1, result.output
    assert "2 problems" not in result.output and "2 problem(s)" not in result.output
    if command != ["index"]:
        assert f"INVALID {fixture_packs / 'child-pack'}: 1 problem(s)" in norm(result.output), result.output
        assert "root-pack: 1 problem(s), 1 of them listed above" in norm(result.output), result.output
        assert "1 problem(s) found" in result.output
    assert not (fixture_packs / "INDEX.json").exists()


def test_missing_index_fails(fixture_packs: Path) -> None:
    result = _validate_all(fixture_packs)
    assert result.exit_code == 2
    assert "packs index is missing" in result.output


def test_content_change_without_version_bump_fails(fixture_packs: Path) -> None:
    runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    policy = fixture_packs / "root-pack" / "policy.md"
    policy.write_text(policy.read_text() + "2. Another rule.\n")
    result = _validate_all(fixture_packs)
    assert result.exit_code == 2
    text = norm(result.output)
    assert "root-pack/pack.yaml" in text and "content of root-pack changed but its version is still 1.0.0" in text
    assert "`pa bump " in text and "root-pack patch|minor|major" in text
    # pa index rewrote the entry with the new digest, after which validate --all passed on the very change
    written = (fixture_packs / "INDEX.json").read_text()
    refused = runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    assert refused.exit_code == 2 and "content of root-pack changed but its version is still 1.0.0" in norm(refused.output)
    assert (fixture_packs / "INDEX.json").read_text() == written and _validate_all(fixture_packs).exit_code == 2


def test_a_content_change_that_only_changes_build_metadata_is_no_version_bump(fixture_packs: Path) -> None:
    """1.0.0+a changed and renamed 1.0.0+b is the same version by SemVer precedence: it passed as a new
    one (the index was looked up by the version's text), so `pa index` recorded it and validate passed."""
    root = fixture_packs / "root-pack"
    (root / "pack.yaml").write_text((root / "pack.yaml").read_text().replace("version: 1.0.0", "version: 1.0.0+a"))
    (root / "CHANGELOG.md").write_text((root / "CHANGELOG.md").read_text().replace("## 1.0.0", "## 1.0.0+a"))
    assert runner.invoke(app, ["index", "--dir", str(fixture_packs)]).exit_code == 0
    (root / "pack.yaml").write_text((root / "pack.yaml").read_text().replace("version: 1.0.0+a", "version: 1.0.0+b"))
    (root / "CHANGELOG.md").write_text((root / "CHANGELOG.md").read_text().replace("## 1.0.0+a", "## 1.0.0+b"))
    (root / "policy.md").write_text((root / "policy.md").read_text() + "2. Another rule.\n")
    said = "content of root-pack changed but its version 1.0.0+b is the version the index has as 1.0.0+a"
    result = _validate_all(fixture_packs)
    assert result.exit_code == 2 and said in norm(result.output)
    assert "index lists a pack that is not on disk" not in result.output  # `pa index` would refuse to drop it
    written = (fixture_packs / "INDEX.json").read_text()
    refused = runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    assert refused.exit_code == 2 and said in norm(refused.output)
    assert (fixture_packs / "INDEX.json").read_text() == written


def test_a_version_that_goes_down_fails(fixture_packs: Path) -> None:
    """1.0.0 -> 0.9.0 (a typo for 1.0.1, say) was only 'stale, run pa index', and pa index took it."""
    runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    root = fixture_packs / "root-pack"
    (root / "pack.yaml").write_text((root / "pack.yaml").read_text().replace("version: 1.0.0", "version: 0.9.0"))
    (root / "CHANGELOG.md").write_text((root / "CHANGELOG.md").read_text() + "\n## 0.9.0\n\n- Oops.\n")
    child = fixture_packs / "child-pack" / "pack.yaml"
    child.write_text(child.read_text().replace("root-pack@^1", "root-pack@*"))
    result = _validate_all(fixture_packs)
    assert result.exit_code == 2
    text = norm(result.output)
    assert "root-pack/pack.yaml:/version (line 2): version went down: the index has root-pack@1.0.0, the pack is now 0.9.0" in text
    assert "use a version above 1.0.0" in text
    result = runner.invoke(app, ["index", "--dir", str(fixture_packs)])  # and pa index does not record it
    assert result.exit_code == 2 and "version went down" in result.output
    assert '"version": "1.0.0"' in (fixture_packs / "INDEX.json").read_text()


def test_hand_edited_index_is_stale(fixture_packs: Path) -> None:
    """Only name, version and digests were compared: a hand-edited title, extends or category count,
    a duplicated entry or an unknown field passed `pa validate --all`, and the index is what is published."""
    runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    path = fixture_packs / "INDEX.json"
    written = path.read_text()
    index = json.loads(written)
    index["packs"][0]["categories"] = 99
    index["packs"][1]["title"] = "Renamed by hand"
    del index["packs"][1]["extends"]
    index["packs"][1]["deprecated"] = True
    index["packs"].append(dict(index["packs"][0]))
    path.write_text(json.dumps(index))
    result = _validate_all(fixture_packs)
    assert result.exit_code == 2
    text = norm(result.output)
    for needle in ("(child-pack@1.0.0)/categories: records 99, the pack gives 3",
                   "(root-pack@1.0.0)/title: records 'Renamed by hand', the pack gives 'Fixture pack root-pack'",
                   "(root-pack@1.0.0)/extends: field is missing; the pack gives []",
                   "(root-pack@1.0.0)/deprecated: unknown field 'deprecated'",
                   "/packs/2 (child-pack@1.0.0): pack listed twice", "5 problem(s) found"):
        assert needle in text, text
    path.write_text(json.dumps({**json.loads(written), "packs": json.loads(written)["packs"][::-1]}, indent=2))
    assert "not in the order `pa index` writes" in norm(_validate_all(fixture_packs).output)
    path.write_text(written)
    assert _validate_all(fixture_packs).exit_code == 0


def test_version_bump_without_reindex_is_stale(fixture_packs: Path) -> None:
    runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    manifest = fixture_packs / "child-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 1.1.0"))
    (fixture_packs / "child-pack" / "CHANGELOG.md").write_text("# Changelog\n\n## 1.1.0\n\n- Bump.\n")
    result = _validate_all(fixture_packs)
    assert result.exit_code == 2
    assert "index has child-pack@1.0.0, the pack is now 1.1.0" in norm(result.output)
    assert runner.invoke(app, ["index", "--dir", str(fixture_packs)]).exit_code == 0
    assert _validate_all(fixture_packs).exit_code == 0


def test_a_parent_change_asks_for_a_child_version_bump_naming_the_parent(fixture_packs: Path) -> None:
    """root-pack bumped to 1.0.1 changed what child-pack@1.0.0 composes to, and `pa validate --all` said only
    "composed digest changed (a parent pack changed)", run `pa index`: which rewrote child-pack@1.0.0 with
    another digest, one version published as two contents. The child's pack.yaml is named, with the parent
    that moved and the bump; `pa index` refuses as it does for the child's own files."""
    runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    parent = fixture_packs / "root-pack"
    (parent / "policy.md").write_text((parent / "policy.md").read_text() + "2. More.\n")
    manifest = parent / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    (parent / "CHANGELOG.md").write_text("# Changelog\n\n## 1.0.1\n\n- Rule.\n")
    child = fixture_packs / "child-pack"
    text = norm(_validate_all(fixture_packs).output)
    assert (f"{child / 'pack.yaml'}:/version (line 2): composed content of child-pack changed but its version is still 1.0.0: "
            "a pack it extends changed: root-pack@1.0.1 (the index has root-pack@1.0.0)") in text, text
    assert f"pa bump {child} patch --note 'rebuilt on root-pack@1.0.1'" in text
    refused = runner.invoke(app, ["index", "--dir", str(fixture_packs)])
    assert refused.exit_code == 2 and "composed content of child-pack changed" in norm(refused.output)
    (child / "pack.yaml").write_text((child / "pack.yaml").read_text().replace("version: 1.0.0", "version: 1.0.1"))
    (child / "CHANGELOG.md").write_text("# Changelog\n\n## 1.0.1\n\n- Rebuilt on root-pack 1.0.1.\n")
    assert runner.invoke(app, ["index", "--dir", str(fixture_packs)]).exit_code == 0
    assert _validate_all(fixture_packs).exit_code == 0


@pytest.mark.parametrize("content,where,message", [
    (b'{"index_version": 1, "packs": [{"name": "root-\xff\xfe"}]}', "", "packs index is not UTF-8 text"),
    (b'{"index_version": 1, "packs": 5}', "/packs", "packs index is corrupt: `packs` is a number, not a list"),
    (b'{"index_version": 1}', "/packs", "packs index is corrupt: `packs` is missing"),
    (b'{"index_version": 1, "packs": [7]}', "/packs/0", "packs index is corrupt: entry is a number, not an object"),
    (b'{"index_version": 1, "packs": [{"name": ["x"], "version": "1.0.0"}]}', "/packs/0/name", "packs index is corrupt: `name` is a list, not a string"),
    (b'{"index_version": 1, "packs": [{"name": "x", "version": {"a": 1}}]}', "/packs/0/version", "packs index is corrupt: `version` is an object, not a string"),
    (b'{"index_version": 1, "packs": [{"name": "x"}]}', "/packs/0/version", "packs index is corrupt: `version` is missing"),
    (b"[" * 100000, "", "packs index is not valid JSON"),
    (b"[1, 2]", "", "packs index is not a JSON object"),
    # every other problem names an entry by name@version: the escape went raw to the terminal
    (b'{"index_version": 1, "packs": [{"name": "x\\u001b]0;pwned\\u0007", "version": "1.0.0"}]}', "/packs/0/name",
     "packs index is corrupt: `name` holds the control character U+001B"),
], ids=["not-utf8", "packs-number", "packs-missing", "entry-number", "name-list", "version-object",
        "version-missing", "deep-nesting", "top-level-list", "name-terminal-escape"])
def test_corrupt_index_is_a_problem_not_a_traceback(fixture_packs: Path, content: bytes, where: str, message: str) -> None:
    (fixture_packs / "INDEX.json").write_bytes(content)
    result = _validate_all(fixture_packs)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = norm(result.output)
    assert f"INDEX.json{':' + where if where else ''}: {message}" in text, text
    assert "run `pa index` to rewrite it" in text and "\x1b" not in text
    assert runner.invoke(app, ["index", "--dir", str(fixture_packs)]).exit_code == 0
    assert _validate_all(fixture_packs).exit_code == 0
