"""An evaluation's results as files and for people: the files `evaluate` writes (`EvalResult`,
`write_eval`), report.md and the charts, an eval.json read back, and two evaluations compared
(`pa eval --compare`; the model card's before/after reads the same notes and tests).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .io import iter_jsonl, output_dir, read_json, write_json, write_jsonl, write_text
from .judges import LABELS
from .metrics import BETTER, ITEM_FIELDS, RATE_METRICS, matched_rows, same_item, scoped_paired_change
from .stats import change_verdict, format_change, format_p, format_rate, is_number

@dataclass
class EvalResult:
    """What `evaluate` produced: the eval.json content, the judged rows and the files written."""

    out_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.summary["metrics"]

    @property
    def eval_json(self) -> Path:
        return self.out_dir / "eval.json"

    @property
    def responses_jsonl(self) -> Path:
        return self.out_dir / "responses.jsonl"

    @property
    def report_md(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def chart_png(self) -> Path:
        return self.out_dir / "categories.png"


def write_eval(out_dir: str | os.PathLike[str], summary: dict[str, Any], rows: list[dict[str, Any]]) -> EvalResult:
    """Write the four artifacts atomically and return the result."""
    out = output_dir(out_dir)
    result = EvalResult(out_dir=out, summary=summary, rows=rows)
    write_jsonl(result.responses_jsonl, rows)
    write_json(result.eval_json, summary)
    write_text(result.report_md, render_report(summary))
    plot_categories(summary, result.chart_png)
    return result


_TABLE_COLUMNS = (("n", "items"), ("violation_rate", "violation"), ("over_refusal_rate", "over-refusal"),
                  ("refuse_guide_agreement", "refuse/guide agree"), ("unparseable", "unparseable"),
                  ("forbidden_tool_call_rate", "forbidden tool calls"))


def _metrics_table(groups: Mapping[str, Mapping[str, Any]], first: str) -> list[str]:
    head = [first, *(title for _, title in _TABLE_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in groups.items():
        cells = [f"`{name}`" if name else "(none)"]
        for key, _ in _TABLE_COLUMNS:
            value = m.get(key)
            cells.append(str(value) if key in ("n", "unparseable") else rate_with_interval(m, key))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_report(summary: Mapping[str, Any]) -> str:
    """eval.json as Markdown: provenance, then overall / per-set / per-category tables."""
    pack = summary.get("pack", {})
    m = summary["metrics"]
    lines = [
        f"# Evaluation: {pack.get('name')}@{pack.get('version')} on `{summary.get('model')}`", "",
        f"- adapter: `{summary.get('adapter') or 'none (base model)'}`",
        f"- policy in context: {'yes (teacher reference)' if summary.get('policy_in_context') else 'no'}",
        f"- pack digest: `{pack.get('digest')}`",
        f"- judge: `{summary.get('judge')}`",
        f"- sampling: `{json.dumps(summary.get('sampling'), sort_keys=True)}`",
        *_limit_lines(summary),
        f"- timestamp: {summary.get('timestamp')}", "",
        "## Overall", "", *_metrics_table({"all": m["overall"]}, "scope"), "",
        "## Per eval set", "", *_metrics_table({k: v for k, v in m["sets"].items()}, "set"), "",
        *_inherited_lines(summary),
        "## Per category", "", *_metrics_table(m["categories"], "category"), "",
    ]
    drift = summary.get("drift")
    if drift:
        lines += ["## Drift", "", f"Mean KL(base ‖ adapted) over {drift['tokens']} completion tokens of "
                  f"{drift['prompts']} neutral prompts: **{drift['kl']:.4g}** nats/token.", ""]
    for bench in summary.get("benchmarks") or []:
        lines += [f"Benchmark `{bench['name']}`: {bench['dataset']} ({bench['split']}), revision "
                  f"`{bench.get('resolved_revision') or bench['revision']}`, licence {bench['license']}.", ""]
    lines += ["Violation: a harmful item answered with `comply`, judged unsafe, or with a forbidden tool call. "
              "Over-refusal: a benign item labelled `refuse`. Unparseable judge outputs are excluded from the "
              "rates and counted on their own. In brackets, a rate's 95% Wilson interval.", ""]
    return "\n".join(lines)


def _limit_lines(summary: Mapping[str, Any]) -> list[str]:
    """The `--limit` an evaluation ran under, with each set's items as "N of M" (as the model card
    writes them): report.md's tables gave a limited set's 4 items as if they were the whole set.
    A benchmark is limited as a set is, and named as its table rows name it (`bench:xstest`)."""
    if summary.get("limit") is None:
        return []
    benchmarks = [{**b, "name": f"bench:{b.get('name')}"} for b in summary.get("benchmarks") or [] if isinstance(b, Mapping)]
    sizes = ", ".join(f"`{e.get('name')}` {e.get('items')} of {e.get('items_in_set')}"
                      for e in [*(summary.get("sets") or []), *benchmarks]
                      if isinstance(e, Mapping) and e.get("items_in_set") is not None)
    return [f"- limit: at most {summary['limit']} items per set, {summary.get('limit_rule') or 'per set'}"
            + (f"; items evaluated: {sizes}" if sizes else "")]


def inherited_notes(summary: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(set, where it came from and which items it left out) for each inherited set an eval.json
    lists; report.md and the model card say it in the same words. Empty for a pack without parents."""
    notes = []
    for entry in (summary or {}).get("sets") or []:
        if not isinstance(entry, Mapping) or not entry.get("from"):
            continue
        dropped = {str(k): v for k, v in (entry.get("dropped") or {}).items()}
        left_out = (f"; {sum(dropped.values())} of its items left out as no longer fitting this pack: "
                    + ", ".join(f"{why} ({n})" for why, n in dropped.items())) if dropped else ""
        notes.append((str(entry.get("name")), f"from {entry['from']}{left_out}"))
    return notes


def _inherited_lines(summary: Mapping[str, Any]) -> list[str]:
    notes = inherited_notes(summary)
    if not notes:
        return []
    return ["Sets named `pack/set` are the eval sets of the packs this one extends, answered under this "
            "pack's policy:", "", *(f"- `{name}`: {note}" for name, note in notes), ""]


def _pyplot() -> Any:
    """matplotlib with the file-only Agg backend, imported only when a chart is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_categories(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Bar chart per category: violation, over-refusal and unparseable rates."""
    plt = _pyplot()
    cats = summary["metrics"]["categories"]
    names = list(cats) or ["(none)"]
    series = (("violation_rate", "violation"), ("over_refusal_rate", "over-refusal"), ("unparseable_rate", "unparseable"))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2))
    for k, (key, title) in enumerate(series):
        _bars(ax, [i + (k - 1) * width for i in range(len(names))], [cats.get(n, {}).get(key) for n in names],
              width, title)
    _finish_axes(ax, names, categories_title(summary, path))
    return _save(fig, plt, path)


def categories_title(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """categories.png's title: which run stage (a run's eval/before or eval/after, as the card captions them),
    model, adapter, policy in context and pack it measured. It said only "tiny — judge refusal", the same on a
    run's before and after charts, and named no adapter: a chart opened on its own could be either."""
    out = Path(path).parent
    stage = f" {out.name} training" if out.parent.name == "eval" and out.name in ("before", "after") else ""
    adapter = f' + adapter "{summary["adapter"]}"' if summary.get("adapter") else ", no adapter (base model)"
    of_pack = f"pack {pack}, " if (pack := _pack_measured(summary)) else ""
    return (f"Per-category rates{stage}: {summary.get('model')}{adapter}{_in_context(summary)}\n"
            f"{of_pack}judge {summary.get('judge')}")


def _pack_measured(summary: Mapping[str, Any]) -> str:
    """`name@version` of the pack an eval measured, or "" where its eval.json records none."""
    pack = summary.get("pack") if isinstance(summary.get("pack"), Mapping) else {}
    return f"{pack.get('name')}@{pack.get('version')}" if pack.get("name") else ""


def _in_context(summary: Mapping[str, Any]) -> str:
    """", policy in context" for an eval of the teacher (`--policy-in-context`), which else reads as the student's."""
    return ", policy in context" if summary.get("policy_in_context") else ""


def _bars(ax: Any, xs: Sequence[float], values: Sequence[float | None], width: float, label: str) -> None:
    """Bars labelled with their value as the tables print it (`format_rate`: 0.4% is "0.4%", 1 in 2,500
    "<0.1%"; whole percents gave "0%", as if none), and "n/a" where a rate has no items: a 0% bar and a
    missing one look alike otherwise."""
    heights = [float(v) if v is not None else 0.0 for v in values]
    ax.bar(xs, heights, width, label=label)
    for x, value, height in zip(xs, values, heights):
        text = "n/a" if value is None else format_rate(value)
        ax.text(x, height + 0.01, text, ha="center", va="bottom", fontsize=6, rotation=90)


def _finish_axes(ax: Any, names: Sequence[str], title: str) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.35)
    ax.set_ylabel("rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> Path:
    import io as _io

    from .io import write_bytes

    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return Path(path)


# The parts of eval.json's "metrics" that comparing and plotting index into.
METRIC_GROUPS = ("overall", "sets", "categories")


def load_summary(source: "EvalResult | Mapping[str, Any] | str | os.PathLike[str]") -> dict[str, Any]:
    """An eval.json's content from an EvalResult, a dict, an eval.json path or its directory."""
    if isinstance(source, EvalResult):
        return source.summary
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "eval.json"
    if not path.is_file():
        raise InvalidInputError(f"no eval.json at {path}", file=str(path), hint=_no_eval_hint(path))
    data = _eval_json_data(path)
    metrics = data.get("metrics") if isinstance(data, dict) else None
    # `"metrics": 5` or metrics without "overall" passed a check for the key alone, then was an
    # AttributeError or KeyError traceback from `pa eval --compare`.
    if not isinstance(metrics, dict) or not all(isinstance(metrics.get(k), dict) for k in METRIC_GROUPS):
        raise InvalidInputError("not an eval.json written by `pa eval` (no \"metrics\" with overall, sets and "
                                "categories)", file=str(path),
                                hint="pass the eval.json from an eval output directory")
    bad = _bad_rate(metrics)
    if bad:  # a hand-edited "0.5abc" was a ValueError traceback from `pa eval --compare`
        raise InvalidInputError(f"{bad[1]!r} is not what `pa eval` writes there (a rate is a number from 0 to 1, "
                                "or null; its ci95 a [low, high] pair)", file=str(path), where=bad[0],
                                hint="fix the value, or pass an eval.json as `pa eval` wrote it")
    return data


def _no_eval_hint(path: Path) -> str:
    """What to pass instead of a folder without an eval.json: a run directory's evaluations are in
    eval/before and eval/after, and `pa eval --compare runs/demo ...` was told only to pass "an eval output
    directory", which a run directory looks like."""
    evals = [path.parent / "eval" / which for which in ("before", "after") if (path.parent / "eval" / which / "eval.json").is_file()]
    if evals:
        return f"this looks like a run directory: pass its evaluation, {' or '.join(map(str, evals))}"
    return "pass an eval output directory or its eval.json (written by `pa eval`)"


def _eval_json_data(path: Path) -> Any:
    """The JSON value of a file given as an eval.json. A file that is not JSON at all (responses.jsonl,
    report.md, categories.png passed by mistake) is not an eval.json: read_json's "invalid JSON ... fix the
    JSON syntax at that line" sent the user to repair a file that was never meant to be one."""
    try:
        return read_json(path)
    except InvalidInputError as exc:
        beside = path.parent / "eval.json"
        hint = (f"pass {beside} (the eval.json beside it) or its directory {path.parent}"
                if beside.is_file() and beside.resolve() != path.resolve() else
                "pass the eval.json that `pa eval` wrote into its output directory (--out), or that directory")
        raise InvalidInputError(
            f"not an eval.json written by `pa eval`: {path.name} is not a JSON document ({exc.problem.message})",
            file=str(path), where=exc.problem.where, hint=hint) from None


def _bad_rate(metrics: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(where, value) of the first rate or interval in `metrics` that comparing cannot format, else None:
    every scope (overall, each set, each category) an object, its rates numbers or null, and its ci95
    intervals pairs of numbers."""
    scopes = [("/metrics/overall", metrics["overall"])] + [
        (f"/metrics/{group}/{name}", scope) for group in ("sets", "categories") for name, scope in metrics[group].items()]
    for where, scope in scopes:
        if not isinstance(scope, Mapping):
            return where, scope
        intervals = scope.get("ci95") or {}
        if not isinstance(intervals, Mapping):
            return f"{where}/ci95", intervals
        for key in RATE_METRICS:
            value, interval = scope.get(key), intervals.get(key)
            if value is not None and not is_number(value):
                return f"{where}/{key}", value
            if interval and not (isinstance(interval, Sequence) and len(interval) == 2 and all(map(is_number, interval))):
                return f"{where}/ci95/{key}", interval
    return None


def plot_before_after(before: Any, after: Any, path: str | os.PathLike[str]) -> Path:
    """Violation and over-refusal per category, before vs after: the chart the model card embeds."""
    plt = _pyplot()
    a, b = load_summary(before), load_summary(after)
    names = sorted(set(a["metrics"]["categories"]) | set(b["metrics"]["categories"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) + 3), 4.2), sharey=True)
    for ax, (key, title) in zip(axes, (("violation_rate", "violation rate"), ("over_refusal_rate", "over-refusal rate"))):
        for k, (label, data) in enumerate((("before", a), ("after", b))):
            values = [data["metrics"]["categories"].get(n, {}).get(key) for n in names]
            _bars(ax, [i + (k - 0.5) * 0.4 for i in range(len(names))], values, 0.4, label)
        _finish_axes(ax, names or ["(none)"], title)
    return _save(fig, plt, path)


def _set_counts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Items evaluated per set (benchmarks included), from the metrics every eval.json has."""
    sets = (summary.get("metrics") or {}).get("sets") or {}
    return {str(name): (m or {}).get("n") for name, m in sets.items()}


def _benchmark_ids(summary: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((str(b.get("name")), str(b.get("dataset")), str(b.get("split")), str(b.get("revision")))
                  for b in summary.get("benchmarks") or [] if isinstance(b, Mapping))


def _benchmark_commit_notes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """A note for each benchmark both evaluations ran at one revision that resolved to two commits: `main` of a
    dataset moves, and xstest's items are numbered by position (`xstest-0001`), so two evals of "xstest@main"
    months apart compared other prompts under one id as like for like. Unknown commits (offline) say nothing."""
    def commits(summary: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
        return {(str(b.get("name")), str(b.get("dataset")), str(b.get("split")), str(b.get("revision"))):
                b.get("resolved_revision") for b in summary.get("benchmarks") or [] if isinstance(b, Mapping)}

    ours, theirs = commits(a), commits(b)
    return [f"- benchmark {key[0]} ({key[1]} {key[2]}@{key[3]}) is at other commits: `{ours[key]}` vs `{theirs[key]}`: "
            "items may not match" for key in sorted(set(ours) & set(theirs))
            if isinstance(ours[key], str) and isinstance(theirs[key], str) and ours[key] != theirs[key]]


def _measured_models(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[Any, Any]:
    """The models two evals measured, to compare: Hub models by repository and the commit their weights
    came from (an alias, `org/name` and `org/name@<commit>` loading one commit are one model, two
    commits of `org/name` are two), local directories by name and their files' fingerprint (two models
    saved as `m` in two places were one), else, and when either eval recorded neither, by the name given."""
    def pinned(summary: Mapping[str, Any]) -> str | None:
        info = summary.get("model_info") if isinstance(summary.get("model_info"), Mapping) else {}
        resolved = info.get("resolved") if isinstance(info.get("resolved"), Mapping) else {}
        location = resolved.get("location")
        for key, mark in (("commit", "@"), ("files", "@files:")):
            if isinstance(info.get(key), str) and isinstance(location, str):
                return f"{location}{mark}{info[key]}"
        return None

    both = pinned(a), pinned(b)
    return both if None not in both else (a.get("model"), b.get("model"))


def _judged_otherwise(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(why there is no paired p, the note) for each way two evaluations were not judged alike: another
    judge, the same model judge with other weights, or other rules. A paired test asks whether the same
    items' labels changed; labels from two judges differ by judge as well as by answer."""
    found = []
    if a.get("judge") != b.get("judge"):
        found.append(("judged by different judges",
                      f"- judge differs: `{json.dumps(a.get('judge'))}` vs `{json.dumps(b.get('judge'))}`"))
    if "judge_weights" in a and "judge_weights" in b and a["judge_weights"] != b["judge_weights"]:
        found.append(("judged by other judge weights",
                      f"- judge weights differ: `{json.dumps(a['judge_weights'])}` vs `{json.dumps(b['judge_weights'])}` "
                      f"(the same judge `{a.get('judge')}` loaded other files)"))
    if a.get("judge") == b.get("judge") and a.get("judge_rules") != b.get("judge_rules"):
        # `pa eval` records them for every judge (`judges.judge_rules`): none recorded is unknown rules
        rules = [f"`{s['judge_rules']}`" if s.get("judge_rules") else "not recorded" for s in (a, b)]
        found.append(("judged by other judge rules",
                      f"- judge rules differ: {rules[0]} vs {rules[1]} (the same judge `{a.get('judge')}` with another "
                      "version of the refusal detector's rules, a guard's output parsing or an llm: judge's prompt: "
                      "the same answer may get another label)"))
    return found


def comparable_notes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """How two evaluations were not measured alike (judge, sampling, model, --limit, pack, sets, ...);
    `pa eval --compare` prints them, and the model card refuses a before/after pair that has any."""
    return [note for _, note in _judged_otherwise(a, b)] + _measured_otherwise(a, b)


def _measured_otherwise(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """`comparable_notes` but the judge's: sampling, model, --limit, pack, benchmarks and sets."""
    notes: list[str] = []
    for key, title in (("sampling", "sampling"), ("model", "model"),
                       ("limit", "--limit"), ("policy_in_context", "policy in context")):
        value_a, value_b = _measured_models(a, b) if key == "model" else (a.get(key), b.get(key))
        if value_a != value_b:
            notes.append(f"- {title} differs: `{json.dumps(value_a)}` vs `{json.dumps(value_b)}`")
    pack_a, pack_b = a.get("pack") or {}, b.get("pack") or {}
    if pack_a.get("digest") != pack_b.get("digest"):
        notes.append(f"- pack differs: {pack_a.get('name')}@{pack_a.get('version')} vs "
                     f"{pack_b.get('name')}@{pack_b.get('version')} (digests differ): items may not match")
    bench_a, bench_b = _benchmark_ids(a), _benchmark_ids(b)
    if bench_a != bench_b:
        fmt = lambda ids: ", ".join(f"{n} ({d} {s}@{r})" for n, d, s, r in ids) or "none"  # noqa: E731
        notes.append(f"- benchmarks differ: {fmt(bench_a)} vs {fmt(bench_b)}")
    notes += _benchmark_commit_notes(a, b)
    counts_a, counts_b = _set_counts(a), _set_counts(b)
    only_a, only_b = sorted(set(counts_a) - set(counts_b)), sorted(set(counts_b) - set(counts_a))
    if only_a or only_b:
        notes.append(f"- eval sets differ: only in A: {', '.join(only_a) or 'none'}; "
                     f"only in B: {', '.join(only_b) or 'none'}")
    changed = [f"{name} {counts_a[name]} vs {counts_b[name]}" for name in sorted(set(counts_a) & set(counts_b))
               if counts_a[name] != counts_b[name]]
    if changed:
        notes.append(f"- items evaluated per set differ: {', '.join(changed)}")
    return notes


def rate_with_interval(metrics: Mapping[str, Any], key: str) -> str:
    """`metrics[key]` as a percentage, with its 95% interval when the metrics carry one."""
    return format_rate(metrics.get(key), (metrics.get("ci95") or {}).get(key))


def responses_beside(source: Any) -> list[dict[str, Any]] | None:
    """The judged rows written next to an eval.json (`responses.jsonl`), for paired comparisons;
    None when there are none (a bare eval.json, or a dict)."""
    if isinstance(source, EvalResult):
        source = source.out_dir
    if isinstance(source, Mapping):
        return None
    path = Path(source)
    path = (path if path.is_dir() else path.parent) / "responses.jsonl"
    return _paired_rows(path) if path.is_file() else None


def _paired_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a responses.jsonl, each (set, id) once: pairing keeps the last copy of a repeated
    item on one side and pairs every copy on the other, so a hand-edited file with a row pasted twice
    gave a p-value from lopsided, double-counted pairs without a word."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, Any], int] = {}
    for lineno, row in iter_jsonl(path):
        _check_label(row, path, lineno)
        key = (row.get("set"), row.get("id"))
        if key[1] is not None and key in seen:
            raise InvalidInputError(
                f"item {key[1]!r} of set {key[0]!r} is here twice (first on line {seen[key]}): a paired "
                "comparison needs each item once", file=str(path), where=f"line {lineno}",
                hint="delete one of the two lines, or run `pa eval` again to write the file afresh")
        seen[key] = lineno
        rows.append(row)
    return rows


def _check_label(row: Mapping[str, Any], path: Path, lineno: int) -> None:
    """Refuse a row whose label no judge gives (`judges.LABELS`): a harmful item labelled "Comply" by hand
    was neither a violation nor unparseable in the paired test, so it counted as safe."""
    if row.get("label") not in LABELS:
        raise InvalidInputError(
            f"label {row.get('label')!r} of item {row.get('id')!r} is not one a judge gives "
            f"({', '.join(LABELS[:-1])} or {LABELS[-1]})", file=str(path), where=f"line {lineno}",
            hint="fix the label, or run `pa eval` again to write the file afresh")


def _compare_label(source: Any, summary: Mapping[str, Any]) -> str:
    """One side of a comparison: where it was read, then the model, adapter and pack it measured. A run's
    eval.json names its adapter `adapter` (relative to the run), so the after-evals of two runs (mypol@1.0.0
    and mypol@1.1.0) read "A: adapter", "B: adapter", told apart only by their timestamps."""
    where = f"{source}: " if isinstance(source, (str, os.PathLike)) else ""
    adapter = f" + {summary['adapter']}" if summary.get("adapter") else ""
    of_pack = f", pack {pack}" if (pack := _pack_measured(summary)) else ""
    return f"{where}{summary.get('model')}{adapter}{of_pack}{_in_context(summary)} ({summary.get('timestamp')})"


def _no_paired_p(judged: list[tuple[str, str]], a: Mapping[str, Any], b: Mapping[str, Any],
                 rows_a: list[dict[str, Any]] | None, rows_b: list[dict[str, Any]] | None) -> str | None:
    """Why two evaluations get no paired p at all, or None: they were judged otherwise (`judged`, their
    `_judged_otherwise`: `pa eval --compare` printed a McNemar p across two judges' labels beside the note
    saying so), or their packs differ and their responses do not record what each item asked, so one id may
    be two items."""
    if judged:
        return judged[0][0]
    if rows_a is None or rows_b is None or (a.get("pack") or {}).get("digest") == (b.get("pack") or {}).get("digest"):
        return None
    recorded = all(field in row for row in (*rows_a, *rows_b) for field in ITEM_FIELDS)
    return None if recorded else "other packs, items not recorded"


def _reworded_notes(rows_a: list[dict[str, Any]] | None, rows_b: list[dict[str, Any]] | None) -> list[str]:
    """The note on items of one set and id that ask other things in A and B (`metrics.same_item`), which the
    paired p leaves out: an eval item reworded in another pack version keeps its id."""
    if rows_a is None or rows_b is None:
        return []
    other = [(y.get("set"), y["id"]) for x, y in matched_rows(rows_a, rows_b) if not same_item(x, y)]
    if not other:
        return []
    return [f"- {len(other)} item(s) have one set and id in A and B but ask other things (first: {other[0][0]} "
            f"{other[0][1]}): the paired p leaves them out"]


def _p_cell(change: Mapping[str, Any] | None, unpaired: str | None = None) -> str:
    """The paired p, and on how many items when fewer than a side measured: evals of another --limit (8 items
    vs 80) showed a p of the 8 both answered beside a change of rates on 8 and 80, as if it tested that.
    `unpaired`: why there is none to give (`_no_paired_p`), said in its place."""
    if unpaired is not None:
        return f"n/a: {unpaired}"
    if change is None:
        return format_p(None)
    fewer = change["items"] < max(change["measured"])
    return format_p(change["p"]) + (f" ({change['items']} paired of {'/'.join(map(str, change['measured']))})"
                                    if fewer else "")


def comparison(a_eval_json: Any, b_eval_json: Any) -> dict[str, Any]:
    """Two evaluations compared, as data: `compare`'s table, and what `pa eval --compare --json` prints, so a
    script reads the numbers rather than parsing Markdown. Each side's label; the notes on how the two were
    not measured alike; why there is no paired p at all (`no_paired_p`, else None); a row per rate, overall,
    per set and per category (`a`, `b` and `change` as fractions, each side's 95% interval, and the exact
    McNemar test of the change on the items both measured, `paired`, where both directories hold
    responses.jsonl; which way the rate improves, `better`, "lower" or "higher", and whether B moved that way,
    `verdict`, "better" or "worse", None for no change); and the drift KL of each side (`drift_kl`, None when neither measured it)."""
    a, b = load_summary(a_eval_json), load_summary(b_eval_json)
    rows_a, rows_b = responses_beside(a_eval_json), responses_beside(b_eval_json)
    judged = _judged_otherwise(a, b)
    notes = [note for _, note in judged] + _measured_otherwise(a, b) + _reworded_notes(rows_a, rows_b)
    unpaired = _no_paired_p(judged, a, b, rows_a, rows_b)
    scopes: list[tuple[str, Mapping[str, Any], Mapping[str, Any], tuple[str, str] | None]] = [
        ("overall", a["metrics"]["overall"], b["metrics"]["overall"], None)]
    for group, field_name in (("sets", "set"), ("categories", "category")):
        for name in sorted(set(a["metrics"][group]) | set(b["metrics"][group])):
            scopes.append((f"{group[:-1] if group == 'sets' else 'category'}:{name}",
                           a["metrics"][group].get(name, {}), b["metrics"][group].get(name, {}), (field_name, name)))
    rows = []
    for scope, ma, mb, select in scopes:
        for key in RATE_METRICS:
            x, y = ma.get(key), mb.get(key)
            if x is None and y is None:
                continue
            paired = None if unpaired else scoped_paired_change(rows_a, rows_b, key, select)
            rows.append({"scope": scope, "metric": key, "a": x, "b": y,
                         "a_ci95": (ma.get("ci95") or {}).get(key), "b_ci95": (mb.get("ci95") or {}).get(key),
                         "change": None if x is None or y is None else float(y) - float(x),
                         "better": BETTER.get(key), "verdict": change_verdict(x, y, BETTER.get(key)),
                         "paired": None if paired is None else {**paired, "measured": list(paired["measured"])}})
    da, db = (a.get("drift") or {}).get("kl"), (b.get("drift") or {}).get("kl")
    return {"a": _compare_label(a_eval_json, a), "b": _compare_label(b_eval_json, b),
            "notes": [note.removeprefix("- ") for note in notes],
            "no_paired_p": unpaired, "rows": rows,
            "drift_kl": None if da is None and db is None else
            {"a": da, "b": db, "change": None if da is None or db is None else db - da}}


def compare(a_eval_json: Any, b_eval_json: Any, *, colour: bool = False) -> str:
    """A Markdown table of every rate, overall, per set and per category, A vs B with the change
    in percentage points and whether B is better or worse for it (which way each rate improves is said
    above the table; `colour`: the verdict in green or red, for a terminal); notes first when the two
    runs are not like for like. Outcome rates show
    their 95% interval, and, where both directories hold responses.jsonl, the exact McNemar p of
    the change on the items both measured: a 10-point drop on 48 items can be noise. Not where the
    two were judged otherwise: the cell says why (`_no_paired_p`). The numbers are `comparison`'s."""
    compared = comparison(a_eval_json, b_eval_json)
    lines = [f"A: {compared['a']}", f"B: {compared['b']}", ""]
    if compared["notes"]:
        lines += ["Not like for like:", *(f"- {note}" for note in compared["notes"]), ""]
    lines += [*_direction_lines(compared["rows"]), "",
              "| scope | metric | A [95% CI] | B [95% CI] | Δ (B−A) | p (paired) | B vs A |",
              "|---|---|---|---|---|---|---|"]
    for row in compared["rows"]:
        lines.append(f"| {row['scope']} | {row['metric']} | {format_rate(row['a'], row['a_ci95'])} | "
                     f"{format_rate(row['b'], row['b_ci95'])} | {format_change(row['a'], row['b'])} | "
                     f"{_p_cell(row['paired'], compared['no_paired_p'])} | {_verdict_cell(row['verdict'], colour)} |")
    if (drift := compared["drift_kl"]) is not None:
        fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
        change = "–" if drift["change"] is None else f"{drift['change']:+.4g}"
        lines.append(f"| overall | drift_kl | {fmt(drift['a'])} | {fmt(drift['b'])} | {change} | – | – |")
    return "\n".join(lines) + "\n"


def _direction_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which way each rate in the table improves (`metrics.BETTER`), one line per direction: the table's
    signed changes left it to the reader that refuse_guide_agreement is better higher and the rest lower."""
    metrics = list(dict.fromkeys(row["metric"] for row in rows if row.get("better")))
    return [f"- {way} is better: {', '.join(m for m in metrics if BETTER[m] == way)}"
            for way in ("lower", "higher") if any(BETTER[m] == way for m in metrics)] + (
        ["- B vs A: which way B moved; with p above 0.05 the move may be noise"] if metrics else [])


def _verdict_cell(verdict: str | None, colour: bool) -> str:
    """A row's "better" or "worse" ("–" for no change), green or red on a terminal (`colour`)."""
    if verdict is None:
        return "–"
    if not colour:
        return verdict
    import click

    return click.style(verdict, fg="green" if verdict == "better" else "red")
