"""`pa bump`: a pack's version and CHANGELOG move together, and nothing else in its files changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policyalign.bump import bump_pack, next_version
from policyalign.cli import app
from policyalign.errors import InvalidInputError
from policyalign.pack import load_pack
from policyalign.registry import Registry
from policyalign.semver import Version

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    """A writable copy of the shipped packs, index included."""
    dest = tmp_path / "packs"
    shutil.copytree(ROOT / "packs", dest)
    return dest


@pytest.mark.parametrize(("current", "part", "expected"), [
    ("1.0.0", "patch", "1.0.1"), ("1.0.0", "minor", "1.1.0"), ("1.2.3", "major", "2.0.0"),
    ("1.1.0-rc.2", "minor", "1.1.0"), ("1.1.1-rc.1", "minor", "1.2.0"), ("2.0.0-rc.1", "major", "2.0.0"),
    ("2.1.0-rc.1", "major", "3.0.0"), ("1.0.1-beta", "patch", "1.0.1"), ("0.1.0", "minor", "0.2.0"),
])
def test_next_version_releases_a_prerelease_heading_there(current: str, part: str, expected: str) -> None:
    assert str(next_version(Version.parse(current), part)) == expected


def test_edit_bump_index_validate_is_the_whole_release(packs: Path) -> None:
    """The journey `pa index` asks for: after an edit it refuses, after `pa bump` it records the change."""
    (packs / "medical" / "policy.md").open("a").write("\n- Never give a dose without a weight.\n")
    refused = runner.invoke(app, ["index", "--dir", str(packs)])
    assert refused.exit_code == 2 and "still 1.0.0" in refused.output
    manifest_before = (packs / "medical" / "pack.yaml").read_text()

    result = runner.invoke(app, ["bump", str(packs / "medical"), "minor", "-m", "Dosing needs a weight."])
    assert result.exit_code == 0, result.output
    assert "1.0.0 -> 1.1.0" in result.output and f"pa index --dir {packs}" in result.output
    manifest = (packs / "medical" / "pack.yaml").read_text()
    assert manifest == manifest_before.replace("version: 1.0.0\n", "version: 1.1.0\n", 1)
    log = (packs / "medical" / "CHANGELOG.md").read_text()
    assert log.index("## 1.1.0\n\n- Dosing needs a weight.\n") < log.index("## 1.0.0")
    assert runner.invoke(app, ["index", "--dir", str(packs)]).exit_code == 0
    checked = runner.invoke(app, ["validate", "--all", "--packs-path", str(packs)])
    assert checked.exit_code == 0, checked.output
    assert load_pack(packs / "medical", registry=Registry([packs])).version == "1.1.0"


def test_a_major_bump_names_the_packs_it_leaves_behind(packs: Path) -> None:
    result = bump_pack(packs / "general", "major", notes=["Rule 3 now forbids X."])
    assert result.new == "2.0.0"
    assert sorted(Path(line.split(" ")[0]).name for line in result.stranded) == [
        "agent-tools", "financial", "legal", "medical"]
    assert all("general@^2" in line for line in result.stranded)
    assert bump_pack(packs / "legal", "minor", notes=["x"]).stranded == ()


def test_a_bump_run_inside_the_pack_still_names_its_siblings(packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa bump . major` from packs/general looked for general's children in `Path('.').parent`, the pack
    itself: the four packs a major bump strands went unnamed, and the `pa index` step went unsaid."""
    monkeypatch.chdir(packs / "general")
    result = runner.invoke(app, ["bump", ".", "major", "-m", "Rule 3 now forbids X."])
    assert result.exit_code == 0, result.output
    assert "1.0.0 -> 2.0.0" in result.output and f"pa index --dir {packs.resolve()}" in result.output
    assert sorted(line.split(" ")[1] for line in result.output.splitlines() if line.startswith("note: ")) == [
        str(packs.resolve() / name) for name in ("agent-tools", "financial", "legal", "medical")]


def test_a_prerelease_bump_suggests_a_range_that_admits_it(packs: Path) -> None:
    """`^2` admits no prerelease of 2.0.0 (npm semantics): the suggestion is the range `pa new` writes."""
    result = bump_pack(packs / "general", to="2.0.0-rc.1", notes=["Release candidate."])
    assert len(result.stranded) == 4 and all("general@>=2.0.0-rc.1,<3 " in line for line in result.stranded)


def test_quoting_comments_and_layout_are_kept(packs: Path) -> None:
    manifest = packs / "legal" / "pack.yaml"
    text = manifest.read_text().replace("version: 1.0.0\n", "version: '1.0.0'   # bump with pa bump\n", 1)
    manifest.write_text(text)
    bump_pack(packs / "legal", "patch", notes=["Typo."])
    assert manifest.read_text() == text.replace("'1.0.0'", "'1.0.1'", 1)


def test_a_windows_packs_line_ends_are_kept(packs: Path) -> None:
    """pack.yaml and CHANGELOG.md saved with CRLF line ends were rewritten with LF throughout: a diff of every
    line for a one-line version change (the digest, which reads both alike, did not show it)."""
    root = packs / "legal"
    for name in ("pack.yaml", "CHANGELOG.md"):
        (root / name).write_bytes((root / name).read_bytes().replace(b"\n", b"\r\n"))
    before = (root / "pack.yaml").read_bytes()
    bump_pack(root, "patch", notes=["Wording."])
    assert (root / "pack.yaml").read_bytes() == before.replace(b"version: 1.0.0\r\n", b"version: 1.0.1\r\n")
    log = (root / "CHANGELOG.md").read_bytes()
    assert b"## 1.0.1\r\n\r\n- Wording.\r\n\r\n## 1.0.0\r\n" in log and b"\n" not in log.replace(b"\r\n", b"")


def test_nothing_is_written_without_a_changelog_entry(packs: Path) -> None:
    before = {p: p.read_bytes() for p in (packs / "legal").rglob("*") if p.is_file()}
    with pytest.raises(InvalidInputError) as caught:
        bump_pack(packs / "legal", "minor")
    assert caught.value.problem.file.endswith("legal/CHANGELOG.md") and "--note" in caught.value.problem.hint
    assert {p: p.read_bytes() for p in (packs / "legal").rglob("*") if p.is_file()} == before


def test_an_entry_written_first_is_used_and_a_cut_short_bump_reruns(packs: Path) -> None:
    log = packs / "legal" / "CHANGELOG.md"
    log.write_text(log.read_text().replace("## 1.0.0", "## 1.1.0\n\n- Written by hand.\n\n## 1.0.0", 1))
    first = bump_pack(packs / "legal", "minor")
    assert (first.new, first.changelog_added) == ("1.1.0", False)
    # A bump that wrote its CHANGELOG entry and stopped before pack.yaml: the same command again finishes it.
    bump_pack(packs / "financial", "patch", notes=["Seed wording."])
    manifest = packs / "financial" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.1", "version: 1.0.0", 1))
    again = bump_pack(packs / "financial", "patch", notes=["Seed wording."])
    assert (again.new, again.changelog_added) == ("1.0.1", False)
    assert (packs / "financial" / "CHANGELOG.md").read_text().count("## 1.0.1") == 1
    with pytest.raises(InvalidInputError, match="already has an entry for 1.0.2"):
        log = packs / "financial" / "CHANGELOG.md"
        log.write_text(log.read_text().replace("## 1.0.1", "## 1.0.2\n\n- Other.\n\n## 1.0.1", 1))
        bump_pack(packs / "financial", "patch", notes=["Not this one."])


@pytest.mark.parametrize(("args", "message"), [
    (["minor", "--to", "1.2.0"], "either a part"),
    ([], "either a part"),
    (["--to", "0.9.0"], "not above the current version 1.0.0"),
    (["--to", "1.2"], "not a semantic version"),
    (["minr", "-m", "x"], "unknown version part 'minr'"),
])
def test_bad_requests_are_refused_before_any_write(packs: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bump", str(packs / "legal"), *args])
    assert result.exit_code == 2 and message in result.output
    assert "version: 1.0.0\n" in (packs / "legal" / "pack.yaml").read_text()


def test_build_metadata_is_written_as_given_and_is_no_new_version(packs: Path) -> None:
    """`--to 1.0.0+b` from 1.0.0+a was refused as "--to 1.0.0 is not above the current version 1.0.0",
    and `--to 1.1.0+b5` wrote 1.1.0: the build metadata asked for was dropped."""
    manifest = packs / "legal" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0\n", "version: 1.0.0+a\n"))
    refused = runner.invoke(app, ["bump", str(packs / "legal"), "--to", "1.0.0+b", "-m", "x"])
    assert refused.exit_code == 2
    assert "--to 1.0.0+b is not above the current version 1.0.0+a" in refused.output
    assert "build metadata" in refused.output and "version: 1.0.0+a\n" in manifest.read_text()
    result = bump_pack(packs / "legal", None, to="1.1.0+b5", notes=["Built."])
    assert (result.old, result.new) == ("1.0.0+a", "1.1.0+b5")
    assert "version: 1.1.0+b5\n" in manifest.read_text()
    assert "## 1.1.0+b5" in (packs / "legal" / "CHANGELOG.md").read_text()


def test_a_manifest_without_a_semantic_version_names_the_field(packs: Path) -> None:
    manifest = packs / "legal" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 1.0", 1))
    with pytest.raises(InvalidInputError) as caught:
        bump_pack(packs / "legal", "patch", notes=["x"])
    assert (caught.value.problem.where, caught.value.problem.file) == ("/version", str(manifest))
    result = runner.invoke(app, ["bump", str(packs / "nowhere"), "patch"])
    assert result.exit_code == 2 and "nowhere/pack.yaml" in result.output and "Traceback" not in result.output


def test_a_pack_named_rather_than_given_by_directory_gets_the_directory(packs: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(packs.parent)
    result = runner.invoke(app, ["bump", "medical", "patch", "-m", "x"])
    assert result.exit_code == 2 and "`pa bump packs/medical ...`" in " ".join(result.output.split())
    assert "version: 1.0.0\n" in (packs / "medical" / "pack.yaml").read_text()


def test_a_version_written_as_a_block_scalar_keeps_its_line_break(packs: Path) -> None:
    """`version: >-` with the version on the next line: the bump ate the line break and the next key
    joined the version (`version: 1.0.1title: ...`), a corrupt manifest."""
    manifest = packs / "general" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0\n", "version: >-\n  1.0.0\n"))
    bump_pack(packs / "general", "patch", notes=["Reworded."])
    assert "version: 1.0.1\ntitle: " in manifest.read_text()
    assert load_pack(packs / "general", registry=Registry([packs])).version == "1.0.1"


@pytest.mark.parametrize("existing", ["", "\n\n"])
def test_an_empty_changelog_gets_its_title_and_the_entry(packs: Path, existing: str) -> None:
    """An empty CHANGELOG.md got the entry under two blank lines and no title."""
    log = packs / "legal" / "CHANGELOG.md"
    log.write_text(existing)
    bump_pack(packs / "legal", "patch", notes=["First recorded change."])
    assert log.read_text() == "# Changelog\n\n## 1.0.1\n\n- First recorded change.\n\n"


@pytest.mark.parametrize("name", ["CHANGELOG.md", "pack.yaml"])
def test_a_file_linked_from_outside_the_pack_is_not_copied_into_it(packs: Path, name: str) -> None:
    """A contributed pack's CHANGELOG.md (or pack.yaml) symlinked to a file outside it: `pa bump` read
    that file and wrote it back, plus the new entry, as an ordinary file of the pack, so the outside
    file's content passed `pa validate` and went out with the next commit or `pa pack push`."""
    root = packs / "general"
    outside = packs.parent / "secret.txt"
    outside.write_text((root / name).read_text() + "\n# TOP SECRET\n")
    (root / name).unlink()
    (root / name).symlink_to(outside)
    with pytest.raises(InvalidInputError, match="leads outside the pack"):
        bump_pack(root, "patch", notes=["Fix."])
    assert (root / name).is_symlink() and "1.0.0" in outside.read_text()
