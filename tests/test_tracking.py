"""`--report-to`: training logs sent live to an integration, checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from policyalign.cli import app
from policyalign.errors import InvalidInputError
from policyalign.tracking import report_targets
from tracked import tensorboard_scalars


def _not_installed() -> str:
    from transformers.integrations import integration_utils as integrations

    missing = sorted(set(integrations.INTEGRATION_TO_CALLBACK) - set(integrations.get_available_reporting_integrations())
                     - {"flyte"})
    if not missing:
        pytest.skip("every reporting integration is installed here")
    return missing[0]


def test_names_are_split_deduplicated_and_none_means_none() -> None:
    assert report_targets(None) == report_targets([]) == report_targets("none") == report_targets(["None"]) == ()
    assert report_targets(["TensorBoard, tensorboard", "tensorboard"]) == ("tensorboard",)


def test_a_misspelt_integration_is_named_with_the_right_spelling() -> None:
    with pytest.raises(InvalidInputError, match="--report-to tensorbord: not a reporting integration") as caught:
        report_targets("tensorbord")
    assert "did you mean 'tensorboard'" in caught.value.problem.hint


def test_an_integration_not_installed_says_what_to_install() -> None:
    name = _not_installed()
    with pytest.raises(InvalidInputError, match=f"the {name} package is not installed") as caught:
        report_targets(["tensorboard", name])
    assert "pip install" in caught.value.problem.hint


def test_apply_refuses_a_missing_integration_before_the_run_starts(tmp_path: Path) -> None:
    """Without this check a missing wandb failed when training began, after synthesis, filtering and evaluation."""
    name = _not_installed()
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["apply", "general", "--model", "tiny", "--out", str(run), "--report-to", name])
    assert result.exit_code == 2, result.output
    assert f"--report-to {name}: the {name} package is not installed" in result.output
    assert not run.exists(), "nothing was started"


def test_a_config_file_naming_an_unknown_integration_is_named(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("pack: general\nmodel: tiny\nreport_to: [tensorboard, wandbb]\n")
    result = CliRunner().invoke(app, ["apply", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert str(config) in result.output and "report_to: wandbb: not a reporting integration" in result.output
    assert "did you mean 'wandb'" in result.output


def test_distill_reports_every_step_into_the_run_and_a_resume_carries_on(recorded_run) -> None:
    run, _ = recorded_run
    first = ["distill", str(run), "--max-steps", "2", "--save-steps", "1", "--max-new-tokens", "8", "--batch-size", "4",
             "--report-to", "tensorboard"]
    result = CliRunner().invoke(app, first)
    assert result.exit_code == 0, result.output
    assert f"training logs: tensorboard --logdir {run / 'tensorboard'}" in result.output
    assert sorted(tensorboard_scalars(run / "tensorboard")["train/loss"]) == [1, 2]
    result = CliRunner().invoke(app, ["distill", str(run), "--resume", "--max-steps", "3", "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    logged = tensorboard_scalars(run / "tensorboard")
    assert sorted(logged["train/loss"]) == [1, 2, 3] and sorted(logged["train/learning_rate"]) == [1, 2, 3]
    assert not (run / "checkpoints" / "runs").exists(), "nothing under the checkpoints, which a fresh training deletes"


def test_a_bad_pack_is_reported_without_loading_torch(tmp_path: Path) -> None:
    """Checking --report-to imported transformers (seconds) even when none was asked for: `pa apply` with a
    misspelt pack took 12 s to say so instead of under one."""
    import subprocess
    import sys

    code = ("import sys\nfrom policyalign.cli import main\nsys.argv = ['pa', 'apply', 'no-such-pack', '--model', 'tiny']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('loaded torch' if 'torch' in sys.modules else 'no torch')")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "no-such-pack" in done.stderr and done.stdout.strip() == "no torch", done.stdout + done.stderr
