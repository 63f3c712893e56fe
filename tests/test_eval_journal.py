"""The evaluation journal: an interrupted evaluation answers only what is missing when run again, and a
journal made under other settings is discarded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policyalign.evaluate import evaluate
from policyalign.generation import greedy_params

from batches import Batches
from evaluations import ROOT, general_pack, killed_once_journaled, pa_env


def _journal_lines(out: Path) -> list[str]:
    from policyalign.eval_journal import JOURNAL

    return (out / JOURNAL).read_text().splitlines()


def test_an_interrupted_evaluation_answers_only_the_missing_items_when_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after two batches of 3 lost every answer: the next run started from the first item. The
    journal keeps them; the resumed run answers the other 6 (a line torn by the kill is skipped) and
    its rows equal an uninterrupted run's (greedy decoding on tiny is deterministic)."""
    from policyalign.eval_journal import JOURNAL

    pack, out = general_pack(), tmp_path / "resumed"
    whole = evaluate(pack, "tiny", out_dir=tmp_path / "whole", limit=6, params=greedy_params(8), batch_size=3)
    spy = Batches(monkeypatch, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pack, "tiny", out_dir=out, limit=6, params=greedy_params(8), batch_size=3)
    assert len(_journal_lines(out)) == 1 + 6 and not (out / "eval.json").exists()  # the header, two batches
    with (out / JOURNAL).open("a") as journal:
        journal.write('{"set": "harmful", "id": "x", "shown": "ab')  # the kill tore the line it was writing
    spy.resume()
    resumed = evaluate(pack, "tiny", out_dir=out, limit=6, params=greedy_params(8), batch_size=3)
    assert spy.items == 12 - 6
    assert resumed.rows == whole.rows
    assert resumed.responses_jsonl.read_text() == whole.responses_jsonl.read_text()
    assert not (out / JOURNAL).exists()  # everything it held is in responses.jsonl


def test_a_journal_made_under_other_settings_is_discarded_with_a_notice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Answers of at most 8 tokens must not be mixed into an evaluation of 12-token answers."""
    from policyalign.eval_journal import JOURNAL

    pack, out = general_pack(), tmp_path / "eval"
    spy = Batches(monkeypatch, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pack, "tiny", out_dir=out, limit=2, params=greedy_params(8), batch_size=2)
    assert len(_journal_lines(out)) == 1 + 2
    spy.resume()
    result = evaluate(pack, "tiny", out_dir=out, limit=2, params=greedy_params(12), batch_size=2)
    assert spy.items == 4  # every item answered again
    assert (f"discarding {out / JOURNAL}: its responses were made with another sampling; answering every item again"
            in capsys.readouterr().err)
    fresh = evaluate(pack, "tiny", out_dir=tmp_path / "fresh", limit=2, params=greedy_params(12), batch_size=2)
    assert result.rows == fresh.rows


def test_journal_settings_name_the_weights_not_only_the_model_name(tmp_path: Path) -> None:
    """`tiny` names the model, not its weights: the journal keys its cache directory (named by the
    weights' content key), so answers of an older tiny are not served for a newer one."""
    from policyalign.eval_journal import journal_settings
    from policyalign.models import load_model
    from policyalign.tiny import tiny_model_path

    loaded, pack = load_model("tiny", device="cpu"), general_pack()
    settings = journal_settings(loaded, None, None, False, greedy_params(8), pack)
    assert settings["model"] == str(tiny_model_path()) and settings["pack"] == pack.digest
    assert (settings["device"], settings["dtype"]) == ("cpu", "torch.float32")
    assert journal_settings(loaded, "a", "f00", True, greedy_params(8), pack)["adapter"] == "f00"


@pytest.mark.slow
def test_pa_eval_killed_mid_generation_resumes_from_its_journal(tmp_path: Path) -> None:
    """A real kill -9 of `pa eval`: the rerun reports what it reused and ends with the same files."""
    from policyalign.eval_journal import JOURNAL

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "policyalign", "eval", "general", "--model", "tiny", "--batch-size", "1",
                "--max-new-tokens", "16", "--limit", "12", "--out", str(out)]

    env = pa_env()
    out = tmp_path / "killed"
    reused = killed_once_journaled(command(out), out / JOURNAL, 4)
    resumed = subprocess.run(command(out), env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {reused} of 24 responses from {out / JOURNAL}" in resumed.stderr
    whole = subprocess.run(command(tmp_path / "whole"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    assert (out / "responses.jsonl").read_text() == (tmp_path / "whole" / "responses.jsonl").read_text()
    assert not (out / JOURNAL).exists()
