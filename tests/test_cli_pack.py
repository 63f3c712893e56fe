"""The registry commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from policyalign.cli import app

runner = CliRunner()


def test_new_pack_validates_as_created(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    result = runner.invoke(app, ["new", "mypack", "--dir", str(packs)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["validate", str(packs / "mypack")])
    assert result.exit_code == 0, result.output


def test_new_pack_extending_a_parent_validates(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["new", "kid", "--extends", "root-pack", "--dir", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["show", "kid", "--packs-path", str(fixture_packs)])
    assert result.exit_code == 0, result.output
    assert "weapons" in result.output and "locked" in result.output


def test_new_refuses_to_overwrite(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["new", "root-pack", "--dir", str(fixture_packs)])
    assert result.exit_code == 2 and "already exists" in result.output


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


def test_render_shows_prompts_per_category(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["render", "child-pack", "--packs-path", str(fixture_packs), "--category", "records"])
    assert result.exit_code == 0, result.output
    assert "Medical records" in result.output and "HIV status" in result.output
    assert "weapons" not in result.output


def test_render_unknown_category_suggests(fixture_packs: Path) -> None:
    result = runner.invoke(app, ["render", "child-pack", "--packs-path", str(fixture_packs), "--category", "record"])
    assert result.exit_code == 2 and "did you mean 'records'" in result.output


def test_real_process_reports_without_traceback(fixture_packs: Path) -> None:
    (fixture_packs / "root-pack" / "pack.yaml").write_text("name: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "policyalign", "validate", str(fixture_packs / "root-pack")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid YAML" in proc.stderr and "Traceback" not in proc.stderr
