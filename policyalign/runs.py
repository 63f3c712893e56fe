"""What runs exist and how they went: `pa runs` (find_runs, listed_summary) and `pa apply`'s summary table
(run_summary), read from each run's run.json and eval reports.

Apart from `apply`, which imports every stage (evaluation, judges, models, packs), so that `pa runs` does not
wait for them: it imported them all to read a few JSON files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import InvalidInputError, PolicyAlignError, RunError
from .run import read_manifest, run_active, started_at
from .stats import is_number


# The eval.json rates a run's summary shows.
SUMMARY_RATES = ("violation_rate", "over_refusal_rate", "forbidden_tool_call_rate")


def _metric(summary: dict[str, Any] | None, name: str) -> float | None:
    if not summary:
        return None
    return (summary.get("metrics") or {}).get("overall", {}).get(name)


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Key numbers of a run, from its files: for the end-of-apply table and `pa runs`."""
    from .io import read_json

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    stages = manifest.get("stages", {})

    def load(rel: str) -> dict[str, Any] | None:
        path = run_dir / rel
        if not path.is_file():
            return None
        data = read_json(path)
        metrics = data.get("metrics") if isinstance(data, dict) else None
        if not isinstance(metrics, dict) or not isinstance(metrics.get("overall", {}), dict):
            # A hand-edited eval.json (`[1]`, `"metrics": 5`) was an AttributeError traceback from `pa runs`.
            raise RunError("not an eval.json written by `pa eval` (no \"metrics\" object)", file=str(path),
                           hint=f"delete {path.parent} and run `pa apply` again to re-run that evaluation")
        overall = metrics.get("overall", {})
        for name in SUMMARY_RATES:  # a hand-edited "0.5abc" was a ValueError traceback from `pa runs`' table
            value = overall.get(name)
            if value is not None and not is_number(value):
                raise RunError(f"{value!r} is not a rate (a number from 0 to 1, or null)", file=str(path),
                               where=f"metrics.overall.{name}",
                               hint=f"fix the value, or delete {path.parent} and run `pa apply` again to re-run that evaluation")
        return data

    before, after = load("eval/before/eval.json"), load("eval/after/eval.json")
    filt = stages.get("filter", {}).get("results", {})
    dist = stages.get("distill", {}).get("results", {})
    synth = stages.get("synthesize", {}).get("results", {})
    inputs = manifest.get("inputs", {})
    return {
        "run_dir": str(run_dir),
        "pack": f"{(inputs.get('pack') or {}).get('name', '?')}@{(inputs.get('pack') or {}).get('version', '?')}",
        "model": inputs.get("model"),
        "status": _status(stages, run_active(run_dir), lambda: _outdated_stage(run_dir, stages)),
        "instructions": synth.get("instructions"),
        "selected": filt.get("selected"),
        "heldout": filt.get("heldout"),
        "internalization_before": dist.get("internalization_before"),
        "internalization_after": dist.get("internalization_after"),
        "violation_before": _metric(before, "violation_rate"),
        "violation_after": _metric(after, "violation_rate"),
        "over_refusal_before": _metric(before, "over_refusal_rate"),
        "over_refusal_after": _metric(after, "over_refusal_rate"),
        "forbidden_calls_before": _metric(before, "forbidden_tool_call_rate"),  # None without items naming forbidden tools
        "forbidden_calls_after": _metric(after, "forbidden_tool_call_rate"),
        "adapter": str(run_dir / "adapter") if (run_dir / "adapter" / "policyalign.json").is_file() else None,
        "card": str(run_dir / "README.md") if (run_dir / "README.md").is_file() else None,
        "url": _published_url(run_dir, stages.get("push") or {}),
    }


def adapter_hash(run_dir: Path) -> str | None:
    """The sha256 of the run's adapter weights (None before training): what the card reports and a push published."""
    from .io import sha256_file

    weights = sorted((Path(run_dir) / "adapter").glob("adapter_model.*"))
    return sha256_file(weights[0]) if weights else None


def _published_url(run_dir: Path, push: dict[str, Any]) -> str | None:
    """Where `pa apply --push-to` published this run's adapter, while it is the adapter there now. Retrained
    since (`pa apply` again without --push-to), the summary and `pa runs` still said `published: URL`, the URL of
    an adapter the run no longer holds. A record from before the push named its adapter is taken as it is."""
    pushed = push.get("adapter")
    return push.get("url") if pushed is None or pushed == adapter_hash(run_dir) else None


def listed_summary(run_dir: Path) -> dict[str, Any]:
    """`run_summary`, or a row saying why not: one hand-edited run.json must not hide every other run."""
    try:
        return run_summary(run_dir)
    except PolicyAlignError as exc:
        return {key: None for key in _SUMMARY_KEYS} | {"run_dir": str(run_dir), "pack": "?", "status": "unreadable",
                                                        "problem": str(exc)}


_SUMMARY_KEYS = ("run_dir", "pack", "model", "status", "instructions", "selected", "heldout", "internalization_before",
                 "internalization_after", "violation_before", "violation_after", "over_refusal_before",
                 "over_refusal_after", "forbidden_calls_before", "forbidden_calls_after", "adapter", "card", "url")
PIPELINE = ("synthesize", "filter", "eval_before", "distill", "eval_after", "card")


def _status(stages: dict[str, Any], active: bool = False, outdated: Callable[[], str | None] = lambda: None) -> str:
    """`active`: a process holds the run now, so the run is running whatever its stage records say: a
    stage marked running is running, not interrupted, and between two stages (no stage marked running
    for a moment) `pa apply` was "partial (3/6 stages)", or "failed at" an earlier attempt's stage, so
    `pa runs` in a loop flickered. A lock whose holder died is no hold (the kernel released it).
    Of the stages that failed or stopped, the one that started last tells: an evaluation that failed
    once stays recorded as failed while a later attempt is killed in synthesis, and the run read
    "failed at eval_after". `outdated`: for a run otherwise complete, the stage whose inputs changed
    after it ran (`stages.outdated_stage`), asked only then (it hashes the run's files)."""
    done = [n for n in PIPELINE if stages.get(n, {}).get("status") == "done"]
    if active:
        current = _current_stage(stages)
        return f"running {current}" if current else f"running ({len(done)}/{len(PIPELINE)} stages done)"
    stopped = [n for n in PIPELINE if stages.get(n, {}).get("status") in ("failed", "running", "interrupted")]
    if stopped:
        last = _started_last(stopped, stages)
        return f"{'failed at' if stages[last]['status'] == 'failed' else 'interrupted in'} {last}"
    if len(done) == len(PIPELINE):
        stale = outdated()
        return f"outdated from {stale}" if stale else "complete"
    return f"partial ({len(done)}/{len(PIPELINE)} stages)" if done else "empty"


def _current_stage(stages: dict[str, Any]) -> str | None:
    """The stage the process holding the run is in: the running record that started last, if no other
    stage's record started after it. An earlier attempt killed in eval_after leaves that stage "running";
    a new `pa apply` re-running filter showed "running eval_after" between its stages until it got there.
    Compared by `started`, which every record of this process is newer than (the lock's time is not
    recorded where `pa runs` can read it); only until this process starts its first stage may such a
    record still show, and it is then the stage the run stopped at. Records without a time (0) tie, and
    a tie is no later start: the running one stands."""
    running = [n for n in PIPELINE if stages.get(n, {}).get("status") == "running"]
    if not running:
        return None
    latest = _started_last(running, stages)
    newer = [n for n in PIPELINE if n in stages and started_at(stages[n]) > started_at(stages[latest])]
    return None if newer else latest


def _started_last(names: list[str], stages: dict[str, Any]) -> str:
    """Of the stages `names`, the one whose record started last; a tie (records without a time) goes to the
    earlier stage of the pipeline."""
    return max(names, key=lambda n: (started_at(stages[n]), -PIPELINE.index(n)))


def find_runs(roots: list[Path], *, must_exist: bool = False) -> list[Path]:
    """Run directories (holding run.json) directly under, or equal to, each root.

    `must_exist` for roots the user named: a mistyped path must not read as "no runs yet".
    """
    found: list[Path] = []
    for root in roots:
        if must_exist and not root.is_dir():
            # A file (`pa runs runs/demo/run.json`) was told "no such directory", though it is right there.
            raise InvalidInputError("not a directory" if root.exists() else "no such directory", file=str(root),
                                    hint=f"pass its directory, {root.parent}" if root.name == "run.json" else
                                    "pass a run directory, or a folder holding run directories (e.g. runs/)")
        if (root / "run.json").is_file():
            found.append(root)
        elif root.is_dir():
            found += sorted(p for p in root.iterdir() if (p / "run.json").is_file())
    return found


def _outdated_stage(run_dir: Path, stages: dict[str, Any]) -> str | None:
    """`stages.outdated_stage`, imported when asked (for a complete run only): stages imports judges and models."""
    from .stages import outdated_stage

    return outdated_stage(run_dir, stages)
