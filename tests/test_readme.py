"""The README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in [b.strip() for b in _bash_blocks()], "the README's test command and .ci/run drifted apart"


def test_quick_start_has_demo_and_test_commands() -> None:
    blocks = [b.strip() for b in _bash_blocks()[:2]]
    assert all(b.startswith("pip install torch==2.13.0 && ") for b in blocks), "torch's CPU build must come first"
    assert "pytest" in blocks[1] and "pa " in blocks[0]


def test_readme_names_every_runs_status() -> None:
    """`pa runs` grew "outdated from STAGE" and the README's row still listed the statuses before it."""
    from policyalign.apply import PIPELINE, _status

    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `pa runs`"))
    done = {name: {"status": "done"} for name in PIPELINE}
    statuses = {
        _status({}),
        _status(done),
        _status(done, outdated=lambda: "filter"),
        _status({"synthesize": {"status": "running", "started": 1}}, active=True),
        _status({"synthesize": {"status": "running", "started": 1}}),
        _status({**done, "eval_after": {"status": "failed", "started": 1}}),
        _status({"synthesize": {"status": "done"}}),
    }
    for status in statuses:
        shown = re.sub(r" \(\d+/\d+ stages\)$", "", status)
        shown = re.sub(rf"\b({'|'.join(PIPELINE)})$", "STAGE", shown)
        assert shown in row, f"pa runs shows {status!r}; the README's `pa runs` row does not name {shown!r}"
