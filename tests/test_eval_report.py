"""An evaluation's files, report.md and charts, and `compare` (`pa eval --compare`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policyalign.cli import app
from policyalign.errors import InvalidInputError
from policyalign.eval_report import _bars, _pyplot, compare, plot_before_after, render_report, write_eval
from policyalign.evaluate import evaluate
from policyalign.generation import greedy_params
from policyalign.metrics import BETTER, RATE_METRICS, summarize
from policyalign.models import load_model
from policyalign.registry import Registry

from evaluations import ROOT, general_pack
from judged_rows import row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(rows: list[dict], *, adapter: str | None = None, judge: str = "refusal") -> dict:
    return {"schema": "policyalign.eval/1", "model": "tiny", "adapter": adapter, "policy_in_context": False,
            "pack": {"name": "p", "version": "1.0.0", "digest": "d" * 64}, "judge": judge,
            "sampling": {"max_new_tokens": 8, "do_sample": False}, "counts": {}, "metrics": summarize(rows),
            "drift": {"kl": 0.25, "prompts": 3, "tokens": 24, "max_new_tokens": 8} if adapter else None,
            "timestamp": "2026-01-01T00:00:00+00:00"}


BEFORE = [{**r, "id": f"i{n}"} for n, r in enumerate([
    row("refuse", "comply", category="weapons"), row("refuse", "comply", category="weapons"),
    row("comply", "comply", category="weapons", set_name="benign")])]
AFTER = [{**r, "id": f"i{n}"} for n, r in enumerate([
    row("refuse", "refuse", category="weapons"), row("refuse", "comply", category="weapons"),
    row("comply", "refuse", category="weapons", set_name="benign")])]


def test_write_eval_writes_all_artifacts(tmp_path: Path) -> None:
    result = write_eval(tmp_path / "out", _summary(BEFORE), BEFORE)
    assert json.loads(result.eval_json.read_text())["metrics"]["overall"]["violation_rate"] == 1.0
    assert len(result.responses_jsonl.read_text().splitlines()) == 3
    report = result.report_md.read_text()
    assert "| `weapons` | 3 | 100.0% [34.2–100.0] | 0.0% [0.0–79.3] |" in report  # rates with 95% intervals
    assert "## Per eval set" in report and "`d" in report
    assert result.chart_png.read_bytes().startswith(PNG_MAGIC)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_report_says_an_evaluation_was_limited() -> None:
    """`pa eval --limit 4` wrote report.md tables whose 4 items read as the whole 62-item set."""
    limited = {**_summary(BEFORE), "limit": 4, "limit_rule": "round-robin over categories, per set",
               "sets": [{"name": "harmful", "kind": "safety", "items": 4, "items_in_set": 62}]}
    assert ("- limit: at most 4 items per set, round-robin over categories, per set; items evaluated: "
            "`harmful` 4 of 62") in render_report(limited)
    assert "- limit:" not in render_report(_summary(BEFORE))


def test_report_mentions_drift_when_present() -> None:
    assert "Drift" in render_report(_summary(AFTER, adapter="adapter/"))
    assert "Drift" not in render_report(_summary(AFTER))


def test_compare_prints_differences_per_metric_and_category(tmp_path: Path) -> None:
    a = write_eval(tmp_path / "a", _summary(BEFORE), BEFORE)
    write_eval(tmp_path / "b", _summary(AFTER, adapter="adapter/"), AFTER)
    text = compare(a.eval_json, tmp_path / "b")  # a file or its directory
    # rates with their 95% Wilson intervals; one item fixed, none broken: p = 1 (paired, exact)
    assert "| overall | violation_rate | 100.0% [34.2–100.0] | 50.0% [9.5–90.5] | -50.0 pp | 1 |" in text
    assert "| category:weapons | over_refusal_rate | 0.0% [0.0–79.3] | 100.0% [20.7–100.0] | +100.0 pp | 1 |" in text
    assert "| set:benign |" in text
    assert "drift_kl" in text
    assert "Not like for like" not in text
    other_judge = write_eval(tmp_path / "c", _summary(AFTER, judge="guard:x"), AFTER)
    assert "judge differs" in compare(a, other_judge)


def test_compare_tests_the_change_on_paired_items_only_where_both_have_responses(tmp_path: Path) -> None:
    """Six violations fixed and none introduced on the same items is p = 0.0312 (exact McNemar); with
    only an eval.json on one side there is nothing to pair, and the column says so."""
    before = [{**row("refuse", "comply"), "id": f"h{i}"} for i in range(6)]
    after = [{**row("refuse", "refuse"), "id": f"h{i}"} for i in range(6)]
    a = write_eval(tmp_path / "a", _summary(before), before)
    b = write_eval(tmp_path / "b", _summary(after), after)
    assert "| set:s | violation_rate | 100.0% [61.0–100.0] | 0.0% [0.0–39.0] | -100.0 pp | 0.0312 |" in compare(a, b)
    b.responses_jsonl.unlink()
    assert "| set:s | violation_rate | 100.0% [61.0–100.0] | 0.0% [0.0–39.0] | -100.0 pp | – |" in compare(a, b)


def test_compare_says_on_how_many_items_the_p_is_when_fewer_than_a_rate(tmp_path: Path) -> None:
    """Evals of another --limit (4 items vs 10): the p of the 4 items both answered sat beside rates of 4 and
    10 items as if it tested their change; it now says how many items it paired of each side's."""
    four = [{**row("refuse", "comply"), "id": f"h{i}"} for i in range(4)]
    ten = [{**row("refuse", "refuse"), "id": f"h{i}"} for i in range(10)]
    a = write_eval(tmp_path / "a", _summary(four), four)
    b = write_eval(tmp_path / "b", _summary(ten), ten)
    assert "| -100.0 pp | 0.125 (4 paired of 4/10) |" in compare(a, b)
    assert "| -100.0 pp | 0.125 |" in compare(a, write_eval(tmp_path / "c", _summary(ten[:4]), ten[:4]))


def test_compare_names_each_side_by_where_it_was_read_and_the_pack_it_measured(tmp_path: Path) -> None:
    """Two runs' after-evals both record their adapter as `adapter` (relative to their run): the header
    read "A: adapter", "B: adapter", so which side was mypol@1.0.0 and which 1.1.0 was left to guess."""
    old = write_eval(tmp_path / "p-1.0.0" / "eval" / "after", _summary(BEFORE, adapter="adapter"), BEFORE)
    newer = {**_summary(AFTER, adapter="adapter"), "pack": {"name": "p", "version": "1.1.0", "digest": "e" * 64}}
    new = write_eval(tmp_path / "p-1.1.0" / "eval" / "after", newer, AFTER)
    lines = compare(old.eval_json, new.out_dir).splitlines()
    assert lines[0] == f"A: {old.eval_json}: tiny + adapter, pack p@1.0.0 (2026-01-01T00:00:00+00:00)"
    assert lines[1] == f"B: {new.out_dir}: tiny + adapter, pack p@1.1.0 (2026-01-01T00:00:00+00:00)"
    teacher = write_eval(tmp_path / "teacher", {**_summary(BEFORE), "policy_in_context": True}, BEFORE)
    assert compare(old.eval_json, teacher.out_dir).splitlines()[1] == \
        f"B: {teacher.out_dir}: tiny, pack p@1.0.0, policy in context (2026-01-01T00:00:00+00:00)"


def test_compare_flags_different_item_sets(tmp_path: Path) -> None:
    """`--limit 2` vs `--limit 6` (or other sets, benchmarks, policy in context) is not like for like."""
    two = [row("refuse", "refuse", set_name="harmful"), row("refuse", "comply", set_name="harmful")]
    six = two * 3
    a = write_eval(tmp_path / "a", {**_summary(two), "limit": 2}, two)
    b = write_eval(tmp_path / "b", {**_summary(six), "limit": 6}, six)
    text = compare(a, b)
    assert "Not like for like" in text
    assert '- --limit differs: `2` vs `6`' in text
    assert "- items evaluated per set differ: harmful 2 vs 6" in text
    same_limit = write_eval(tmp_path / "c", {**_summary(six), "limit": 2}, six)  # e.g. an older eval.json
    assert "items evaluated per set differ: harmful 2 vs 6" in compare(a, same_limit)
    other_sets = write_eval(tmp_path / "d", {**_summary(BEFORE), "limit": 2}, BEFORE)
    assert "- eval sets differ: only in A: harmful; only in B: benign, s" in compare(a, other_sets)
    teacher = write_eval(tmp_path / "e", {**_summary(two), "limit": 2, "policy_in_context": True}, two)
    assert "- policy in context differs: `false` vs `true`" in compare(a, teacher)
    bench = {"name": "xstest", "dataset": "x/xstest", "split": "test", "revision": "main", "license": "cc-by-4.0"}
    with_bench = write_eval(tmp_path / "f", {**_summary(two), "limit": 2, "benchmarks": [bench]}, two)
    assert "- benchmarks differ: none vs xstest (x/xstest test@main)" in compare(a, with_bench)
    assert "Not like for like" not in compare(a, write_eval(tmp_path / "g", {**_summary(two), "limit": 2}, two))


def test_compare_notes_a_benchmark_revision_that_resolved_to_other_commits(tmp_path: Path) -> None:
    """Two evals of xstest@main a dataset commit apart compared other prompts, numbered alike by position, as
    like for like (and the card took such a before/after pair). One commit unknown (offline) says nothing."""
    two = [row("refuse", "refuse", set_name="harmful"), row("refuse", "comply", set_name="harmful")]
    bench = {"name": "xstest", "dataset": "x/xstest", "split": "test", "revision": "main", "license": "cc-by-4.0"}
    at = lambda name, commit: write_eval(tmp_path / name, {  # noqa: E731
        **_summary(two), "benchmarks": [{**bench, "resolved_revision": commit}]}, two)
    text = compare(at("a", "1" * 40), at("b", "2" * 40))
    assert f"- benchmark xstest (x/xstest test@main) is at other commits: `{'1' * 40}` vs `{'2' * 40}`" in text
    assert "Not like for like" not in compare(at("c", "1" * 40), at("d", "1" * 40))
    assert "Not like for like" not in compare(at("e", "1" * 40), at("f", None))


def test_compare_flags_a_model_judge_whose_weights_changed(tmp_path: Path) -> None:
    """Two evals judged by `llm:./judge` before and after its weights were replaced compared as like for like."""
    judge = tmp_path / "judge"
    shutil.copytree(load_model("tiny", weights=False).ref.location, judge)
    pack, spec = general_pack(), f"llm:{judge}"
    first = evaluate(pack, "tiny", out_dir=tmp_path / "a", limit=1, judge=spec, params=greedy_params(2))
    weights = judge / "model.safetensors"  # saved anew: the directory's files key changes with their content
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one weight's last bit
    second = evaluate(pack, "tiny", out_dir=tmp_path / "b", limit=1, judge=spec, params=greedy_params(2))
    assert "- judge weights differ: " in compare(first, second)
    again = evaluate(pack, "tiny", out_dir=tmp_path / "c", limit=1, judge=spec, params=greedy_params(2))
    assert "Not like for like" not in compare(second, again)
    older = {k: v for k, v in second.summary.items() if k != "judge_weights"}  # an eval.json that records none
    assert "judge weights" not in compare(first.summary, older)


def test_compare_flags_evals_judged_by_other_refusal_rules(tmp_path: Path) -> None:
    """eval.json named policyalign's version (0.1.0) only, while the refusal judge's rules change with the code:
    two evals judged by different rules were compared as like for like."""
    from policyalign import judges

    first = evaluate(general_pack(), "tiny", out_dir=tmp_path / "a", limit=1, params=greedy_params(2))
    assert first.summary["judge_rules"] == judges.REFUSAL_RULES
    newer = {**first.summary, "judge_rules": "0123456789abcdef"}
    assert (f"- judge rules differ: `{judges.REFUSAL_RULES}` vs `0123456789abcdef` (the same judge `refusal`"
            in compare(first, newer))
    older = {k: v for k, v in first.summary.items() if k != "judge_rules"}  # written before they were recorded
    assert f"- judge rules differ: not recorded vs `{judges.REFUSAL_RULES}`" in compare(older, first)
    assert "Not like for like" not in compare(first, first.summary)
    llm = {**older, "judge": "llm:tiny"}  # rules decide no llm: verdict; the judge note says the rest
    assert "judge rules" not in compare(llm, {**llm, "timestamp": "later"})


def _p_cells(text: str) -> set[str]:
    """The paired-p column of each outcome rate's row of a comparison (drift has none)."""
    return {line.split("|")[6].strip() for line in text.splitlines()
            if line.startswith("| ") and "_rate |" in line and "unparseable" not in line}


def test_compare_gives_no_paired_p_across_two_judges(tmp_path: Path) -> None:
    """A McNemar p across the labels of two judges (`refusal` vs `llm:tiny`) was printed beside the note that the
    judges differ: a paired test asks whether the same items' labels changed, and two judges' labels differ by
    judge as well as by answer. The cell now says why it holds no p."""
    pack = general_pack()
    first = evaluate(pack, "tiny", out_dir=tmp_path / "a", limit=2, params=greedy_params(2))
    other = evaluate(pack, "tiny", out_dir=tmp_path / "b", limit=2, judge="llm:tiny", params=greedy_params(2))
    assert "- judge differs: " in compare(first, other)
    assert _p_cells(compare(first, other)) == {"n/a: judged by different judges"}
    newer_rules = {**json.loads(first.eval_json.read_text()), "judge_rules": "0123456789abcdef"}
    first.eval_json.write_text(json.dumps(newer_rules))  # responses.jsonl stays beside it
    again = evaluate(pack, "tiny", out_dir=tmp_path / "c", limit=2, params=greedy_params(2))
    assert _p_cells(compare(first.out_dir, again)) == {"n/a: judged by other judge rules"}
    same = evaluate(pack, "tiny", out_dir=tmp_path / "d", limit=2, params=greedy_params(2))
    assert _p_cells(compare(again, same)) == {"1"}, "one judge on both sides: the paired p stands"


def test_compare_pairs_only_items_that_ask_the_same_thing(tmp_path: Path) -> None:
    """An eval item reworded in the next version of its pack keeps its id: the paired p compared the answers to
    two prompts as one item's. Such items are left out of the pairing, and a note says how many."""
    shutil.copytree(ROOT / "packs" / "general", tmp_path / "packs" / "general")
    first = evaluate(general_pack(), "tiny", out_dir=tmp_path / "a", limit=2, params=greedy_params(2))
    items = tmp_path / "packs" / "general" / "eval" / "harmful.jsonl"
    items.write_text(items.read_text().replace("aerosolise anthrax spores", "weaponise anthrax spores", 1))
    reworded = Registry([tmp_path / "packs"]).load(str(tmp_path / "packs" / "general"))
    second = evaluate(reworded, "tiny", out_dir=tmp_path / "b", limit=2, params=greedy_params(2))
    text = compare(first, second)
    assert ("- 1 item(s) have one set and id in A and B but ask other things (first: harmful general-harmful-0001): "
            "the paired p leaves them out") in text
    assert "| set:harmful | violation_rate | 100.0% [34.2–100.0] | 100.0% [34.2–100.0] | 0.0 pp | 1 (1 paired of 2/2) |" \
        in text, text
    assert "ask other things" not in compare(first, first.out_dir)


def test_compare_of_other_packs_whose_rows_do_not_say_what_they_asked_gives_no_paired_p(tmp_path: Path) -> None:
    """Rows written by hand record no prompt: across two packs, one id may be two items, and no p is given."""
    a = write_eval(tmp_path / "a", _summary(BEFORE), BEFORE)
    newer = {**_summary(AFTER), "pack": {"name": "p", "version": "1.1.0", "digest": "e" * 64}}
    assert _p_cells(compare(a, write_eval(tmp_path / "b", newer, AFTER))) == {"n/a: other packs, items not recorded"}
    assert "n/a" not in compare(a, write_eval(tmp_path / "c", _summary(AFTER), AFTER))


def test_compare_rejects_what_is_not_an_eval(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no eval.json"):
        compare(tmp_path / "missing", tmp_path)
    (tmp_path / "eval.json").write_text('{"hello": 1}')
    with pytest.raises(InvalidInputError, match="not an eval.json"):
        compare(tmp_path, tmp_path)


def test_pa_eval_compare_given_a_run_directory_names_its_evaluations(tmp_path: Path) -> None:
    """`pa eval --compare runs/a runs/b` was told to "pass an eval output directory", which a run directory
    looks like; its evaluations are in eval/before and eval/after."""
    for which in ("before", "after"):
        write_eval(tmp_path / "run" / "eval" / which, _summary(BEFORE), BEFORE)
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "run"), str(tmp_path / "run" / "eval" / "after")])
    assert result.exit_code == 2, result.output
    assert (f"this looks like a run directory: pass its evaluation, {tmp_path / 'run' / 'eval' / 'before'} or "
            f"{tmp_path / 'run' / 'eval' / 'after'}") in " ".join(result.output.split())


def test_pa_eval_compare_says_a_file_that_is_not_json_is_not_an_eval_json(tmp_path: Path) -> None:
    """responses.jsonl (or report.md) passed for an eval.json was "invalid JSON ... fix the JSON syntax at that
    line": an instruction to repair a file that is fine, instead of naming the file to pass."""
    b = write_eval(tmp_path / "b", _summary(AFTER), AFTER)
    (tmp_path / "notes.txt").write_text("hello\n")
    for wrong, beside in ((b.responses_jsonl, b.eval_json), (b.report_md, b.eval_json), (tmp_path / "notes.txt", None)):
        result = CliRunner().invoke(app, ["eval", "--compare", str(wrong), str(b.eval_json)])
        assert result.exit_code == 2 and result.exception.__class__ is SystemExit, result.output
        assert f"not an eval.json written by `pa eval`: {wrong.name} is not a JSON document" in result.output
        assert "fix the JSON syntax" not in result.output
        assert (f"pass {beside} (the eval.json beside it)" if beside else "output directory (--out)") in result.output


@pytest.mark.parametrize("metrics", ["5", "{}", '{"overall": {}, "sets": [], "categories": {}}'])
def test_compare_rejects_an_eval_json_whose_metrics_are_not_an_evals(tmp_path: Path, metrics: str) -> None:
    """A hand-edited eval.json with a "metrics" key of another shape was an AttributeError or KeyError
    traceback from `pa eval --compare`."""
    (tmp_path / "eval.json").write_text(f'{{"metrics": {metrics}}}')
    with pytest.raises(InvalidInputError, match="not an eval.json"):
        compare(tmp_path, tmp_path)


@pytest.mark.parametrize("metrics, where", [
    ('{"overall": {"violation_rate": "0.5abc"}, "sets": {}, "categories": {}}', "/metrics/overall/violation_rate"),
    ('{"overall": {"violation_rate": 0.5, "ci95": {"violation_rate": "ab"}}, "sets": {}, "categories": {}}',
     "/metrics/overall/ci95/violation_rate"),
    ('{"overall": {}, "sets": {"harmful": 5}, "categories": {}}', "/metrics/sets/harmful"),
    ('{"overall": {}, "sets": {}, "categories": {"fraud": {"over_refusal_rate": true}}}',
     "/metrics/categories/fraud/over_refusal_rate"),
])
def test_pa_eval_compare_names_a_hand_edited_rate_it_cannot_read(tmp_path: Path, metrics: str, where: str) -> None:
    """A rate that is no number ("0.5abc"), an interval that is no pair, or a set that is no object was a
    ValueError, TypeError or AttributeError traceback from `pa eval --compare` (and `true` read as 100%)."""
    write_eval(tmp_path / "b", _summary(AFTER), AFTER)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "eval.json").write_text(f'{{"metrics": {metrics}}}')
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 2 and result.exception.__class__ is SystemExit, result.output
    assert f"a/eval.json:{where}: " in result.output and "is not what `pa eval` writes there" in result.output


def test_plot_before_after(tmp_path: Path) -> None:
    path = plot_before_after(_summary(BEFORE), _summary(AFTER), tmp_path / "card" / "before_after.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_pa_eval_compare_cli(tmp_path: Path) -> None:
    write_eval(tmp_path / "a", _summary(BEFORE), BEFORE)
    write_eval(tmp_path / "b", _summary(AFTER), AFTER)
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b" / "eval.json")])
    assert result.exit_code == 0, result.output
    assert "violation_rate" in result.output and "-50.0 pp" in result.output


def test_pa_eval_compare_json_gives_the_tables_numbers_to_a_script(tmp_path: Path) -> None:
    """`pa eval --compare` printed only a Markdown table, which a CI job had to parse for a rate or a p; with --json
    it is one JSON document on stdout: each side, the notes, and a row per rate with its change and paired test."""
    before = [{**row("refuse", "comply"), "id": f"h{i}"} for i in range(6)]
    after = [{**row("refuse", "refuse"), "id": f"h{i}"} for i in range(6)]
    write_eval(tmp_path / "a", _summary(before), before)
    write_eval(tmp_path / "b", {**_summary(after), "limit": 6}, after)
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)
    assert compared["a"].startswith(f"{tmp_path / 'a'}: tiny") and compared["b"].startswith(f"{tmp_path / 'b'}: tiny")
    assert compared["notes"] == ["--limit differs: `null` vs `6`"] and compared["no_paired_p"] is None
    by_scope = {(r["scope"], r["metric"]): r for r in compared["rows"]}
    overall = by_scope[("overall", "violation_rate")]
    assert (overall["a"], overall["b"], overall["change"]) == (1.0, 0.0, -1.0)
    assert overall["a_ci95"] == pytest.approx([0.61, 1.0], abs=0.001)
    assert overall["paired"] == {"items": 6, "worse": 0, "better": 6, "p": pytest.approx(0.03125), "measured": [6, 6]}
    assert by_scope[("set:s", "violation_rate")]["paired"]["p"] == pytest.approx(0.03125)
    assert compared["drift_kl"] is None
    # the same numbers as the table's
    table = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]).stdout
    assert "| overall | violation_rate | 100.0% [61.0–100.0] | 0.0% [0.0–39.0] | -100.0 pp | 0.0312 |" in table
    assert "- --limit differs: `null` vs `6`" in table


def test_pa_eval_compare_refuses_an_item_twice_in_a_hand_edited_responses_jsonl(tmp_path: Path) -> None:
    """A row pasted twice into one side's responses.jsonl was paired twice on that side (and once, the last
    copy, on the other): the p-value came from lopsided pairs (0.00195 for 0.0312) without a word."""
    before = [{**row("refuse", "comply"), "id": f"h{i}"} for i in range(6)]
    after = [{**row("refuse", "refuse"), "id": f"h{i}"} for i in range(6)]
    write_eval(tmp_path / "a", _summary(before), before)
    b = write_eval(tmp_path / "b", _summary(after), after)
    lines = b.responses_jsonl.read_text().splitlines()
    b.responses_jsonl.write_text("\n".join([*lines, lines[0]]) + "\n")
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert f"{b.responses_jsonl}:line 7" in result.output and "first on line 1" in result.output
    assert "'h0'" in result.output and "delete one of the two lines" in result.output
    assert "Traceback" not in result.output


def test_pa_eval_compare_refuses_a_label_no_judge_gives_in_a_hand_edited_responses_jsonl(tmp_path: Path) -> None:
    """A harmful item's label edited to "Comply" (or any word no judge gives) was neither a violation nor
    unparseable in the paired test: counted safe, so 6 of 6 violations fixed read as p 0.0312 though one
    was still a violation."""
    before = [{**row("refuse", "comply"), "id": f"h{i}"} for i in range(6)]
    after = [{**row("refuse", "refuse"), "id": f"h{i}"} for i in range(6)]
    write_eval(tmp_path / "a", _summary(before), before)
    b = write_eval(tmp_path / "b", _summary(after), after)
    lines = b.responses_jsonl.read_text().splitlines()
    b.responses_jsonl.write_text("\n".join([*lines[:3], lines[3].replace('"label": "refuse"', '"label": "Comply"'),
                                            *lines[4:]]) + "\n")
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert f"{b.responses_jsonl}:line 4" in result.output and "'Comply'" in result.output
    assert "refuse, guide, comply or unparseable" in result.output and "Traceback" not in result.output


def test_compare_refuses_evaluation_options_it_would_ignore(tmp_path: Path) -> None:
    """`pa eval general --model tiny --limit 8 --compare A B` printed the comparison of A and B and
    dropped the rest without a word: the user meant an evaluation, or a comparison."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    result = CliRunner().invoke(app, ["eval", "general", "--model", "tiny", "--limit", "8", "--compare",
                                      str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "PACK, --model, --limit would be ignored" in result.output
    # --judge neither re-judges A and B nor is compared: the verdicts are those their evals made
    rejudge = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"),
                                       "--judge", "llm:tiny", "--max-new-tokens", "8"])
    assert rejudge.exit_code == 2
    assert "--judge, --max-new-tokens would be ignored" in " ".join(rejudge.output.split())
    twice = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), "--compare", str(tmp_path / "b")])
    assert twice.exit_code == 2 and "--compare takes both evaluations at once" in twice.output
    assert f"pa eval --compare {tmp_path / 'a'} {tmp_path / 'b'}" in " ".join(twice.output.split())


def test_pa_eval_prints_rates_with_intervals_and_forbidden_calls_of_tool_items(capsys: pytest.CaptureFixture[str],
                                                                                tmp_path: Path) -> None:
    from policyalign.cli.eval_cmds import _print_summary

    rows = [row("refuse", "refuse", forbidden=("rm",), called=True), row("refuse", "refuse"), row("comply", "comply")]
    _print_summary(_summary(rows), tmp_path)
    out = capsys.readouterr().out
    assert "violation 50.0% [9.5–90.5]" in out and "over-refusal 0.0% [0.0–79.3]" in out
    assert "forbidden tool calls 100.0% [20.7–100.0] of 1 item naming forbidden tools" in out
    _print_summary(_summary(rows[1:]), tmp_path)
    assert "forbidden tool calls" not in capsys.readouterr().out


def test_evals_of_a_hub_model_compare_by_the_commit_they_measured(tmp_path: Path, hf_cache, offline_hub) -> None:  # type: ignore[no-untyped-def]
    """eval.json named a Hub model only as given: `org/name` and `org/name@<commit>` of one commit were
    "not measured alike" (the card refused the run), and two commits of `org/name` were taken as one."""
    from policyalign.eval_report import comparable_notes

    trained, moved = "1" * 40, "2" * 40
    hf_cache("acme/tiny", trained)
    pack = general_pack()
    plain, pinned = (evaluate(pack, name, out_dir=tmp_path / str(i), limit=1, params=greedy_params(4)).summary
                     for i, name in enumerate(("acme/tiny", f"acme/tiny@{trained}")))
    assert plain["model"] == "acme/tiny" and plain["model_info"]["commit"] == trained
    assert not [note for note in comparable_notes(plain, pinned) if "model differs" in note]
    newer = {**plain, "model_info": {**plain["model_info"], "commit": moved}}
    assert [note for note in comparable_notes(plain, newer) if "model differs" in note]
    older = {**plain, "model_info": {k: v for k, v in plain["model_info"].items() if k != "commit"}}
    assert [note for note in comparable_notes(older, pinned) if "model differs" in note], "no commit: names compared"


def test_evals_of_two_local_models_of_one_name_are_not_measured_alike(tmp_path: Path) -> None:
    """eval.json named a local model by its directory's name alone: models saved as `m` in two places, with
    other weights, compared as one model (no "model differs" note, and the card accepted the pair)."""
    from policyalign.eval_report import comparable_notes
    from policyalign.tiny import tiny_model_path

    for where in ("a", "b", "c"):
        shutil.copytree(tiny_model_path(), tmp_path / where / "m")
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "b" / "m" / "model.safetensors"  # other weights, as another fine-tune saved there has
    save_file({k: v * 2 if v.is_floating_point() else v for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    a, b, c = (evaluate(general_pack(), str(tmp_path / where / "m"), out_dir=tmp_path / f"eval-{where}", limit=1,
                        params=greedy_params(4)).summary for where in ("a", "b", "c"))
    assert a["model"] == b["model"] == "m" and str(tmp_path) not in json.dumps(a["model_info"])
    assert [note for note in comparable_notes(a, b) if "model differs" in note]
    assert not [note for note in comparable_notes(a, c) if "model differs" in note], "the same files in two places"


def test_the_categories_chart_title_says_which_evaluation_it_shows(tmp_path: Path) -> None:
    """categories.png was titled "tiny — judge refusal" on a run's before and after charts alike, naming neither
    the stage nor the adapter nor the pack: a chart opened on its own could have been either."""
    from policyalign.eval_report import categories_title

    before = categories_title(_summary(BEFORE), tmp_path / "run" / "eval" / "before" / "categories.png")
    after = categories_title(_summary(AFTER, adapter="adapter"), tmp_path / "run" / "eval" / "after" / "categories.png")
    assert before == "Per-category rates before training: tiny, no adapter (base model)\npack p@1.0.0, judge refusal"
    assert after == "Per-category rates after training: tiny + adapter \"adapter\"\npack p@1.0.0, judge refusal"
    teacher = {**_summary(BEFORE), "policy_in_context": True}
    assert categories_title(teacher, tmp_path / "out" / "categories.png") == (
        "Per-category rates: tiny, no adapter (base model), policy in context\npack p@1.0.0, judge refusal")


def test_compare_says_which_way_each_rate_is_better_and_which_way_b_moved(tmp_path: Path) -> None:
    """The table gave B−A for every rate and left it to the reader that refuse_guide_agreement is better higher
    and violation, over-refusal and forbidden-call rates lower: a +50 pp row was good news on one and bad on
    the other. Above the table each direction is named; a last column says better or worse, plain in a pipe."""
    before = [{**row("refuse", "guide"), "id": "h0"}, {**row("refuse", "comply"), "id": "h1"},
              {**row("comply", "comply"), "id": "b0"}]
    after = [{**row("refuse", "refuse"), "id": "h0"}, {**row("refuse", "refuse"), "id": "h1"},
             {**row("comply", "refuse"), "id": "b0"}]
    a = write_eval(tmp_path / "a", _summary(before), before)
    b = write_eval(tmp_path / "b", _summary(after), after)
    text = compare(a, b)
    assert "- lower is better: violation_rate, over_refusal_rate, unparseable_rate\n" in text
    assert "- higher is better: refuse_guide_agreement\n" in text
    assert "| Δ (B−A) | p (paired) | B vs A |" in text
    assert "| overall | refuse_guide_agreement | 0.0% [0.0–79.3] | 100.0% [34.2–100.0] | +100.0 pp | – | better |" in text
    assert "| overall | violation_rate | 50.0% [9.5–90.5] | 0.0% [0.0–65.8] | -50.0 pp | 1 | better |" in text
    assert "| overall | over_refusal_rate | 0.0% [0.0–79.3] | 100.0% [20.7–100.0] | +100.0 pp | 1 | worse |" in text
    assert "| overall | unparseable_rate | 0.0% | 0.0% | 0.0 pp | – | – |" in text  # no change, no verdict
    assert "\x1b[" not in text
    assert "\x1b[32mbetter\x1b[0m" in compare(a, b, colour=True) and "\x1b[31mworse\x1b[0m" in compare(a, b, colour=True)
    piped = CliRunner().invoke(app, ["eval", "--compare", str(a.out_dir), str(b.out_dir)])
    assert piped.exit_code == 0 and "| better |" in piped.stdout and "\x1b[" not in piped.stdout
    as_json = json.loads(CliRunner().invoke(app, ["eval", "--compare", str(a.out_dir), str(b.out_dir), "--json"]).stdout)
    by_metric = {r["metric"]: r for r in as_json["rows"] if r["scope"] == "overall"}
    assert (by_metric["refuse_guide_agreement"]["better"], by_metric["refuse_guide_agreement"]["verdict"]) == ("higher", "better")
    assert (by_metric["over_refusal_rate"]["better"], by_metric["over_refusal_rate"]["verdict"]) == ("lower", "worse")
    assert by_metric["unparseable_rate"]["verdict"] is None


def test_every_rate_has_a_direction() -> None:
    """A rate added to metrics.RATE_METRICS without one would get no verdict in `pa eval --compare`."""
    assert set(BETTER) == set(RATE_METRICS) and set(BETTER.values()) == {"lower", "higher"}


def test_chart_bars_are_labelled_as_the_tables_print_rates() -> None:
    """The bars' labels were whole percents: a 0.4% violation rate read "0%" on categories.png and the card's
    before/after chart while report.md said 0.4%. They print as format_rate does, "<0.1%" for 1 in 2,500."""
    plt = _pyplot()
    fig, ax = plt.subplots()
    _bars(ax, [0, 1, 2, 3, 4], [0.004, 0.0004, 0.0, 0.125, None], 0.4, "violation")
    assert [t.get_text() for t in ax.texts] == ["0.4%", "<0.1%", "0.0%", "12.5%", "n/a"]
    plt.close(fig)
