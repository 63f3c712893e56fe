"""Policy-Sensitive Filtering: selection rules, held-out split, and the stage on `tiny`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from policyalign.errors import InvalidInputError
from policyalign.filtering import FilterConfig, PARTIAL, filter_run, select, split_heldout, threshold
from policyalign.io import read_jsonl, write_jsonl


def _rows(spec: dict[str, list[float]]) -> list[dict]:
    return [{"id": f"{cat}-{i}", "category": cat, "score": s, "provenance": {"source": "generated"}}
            for cat, scores in spec.items() for i, s in enumerate(scores)]


ROWS = _rows({"a": [0.9, 0.1, 0.5, 0.3], "b": [0.2, 0.05], "c": [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]})


def test_keep_fraction_is_per_category_and_takes_the_highest() -> None:
    chosen = select(ROWS, FilterConfig(keep=0.5))
    by_cat = Counter(r["category"] for r in chosen)
    assert by_cat == {"a": 2, "b": 1, "c": 3}
    assert {r["id"] for r in chosen if r["category"] == "a"} == {"a-0", "a-2"}


def test_top_n_is_balanced_round_robin() -> None:
    chosen = select(ROWS, FilterConfig(keep=None, top_n=6))
    assert Counter(r["category"] for r in chosen) == {"a": 2, "b": 2, "c": 2}
    assert "c-0" in {r["id"] for r in chosen} and "c-5" not in {r["id"] for r in chosen}


def test_min_score_and_no_filter() -> None:
    assert {r["id"] for r in select(ROWS, FilterConfig(keep=None, min_score=1.0))} == {"c-0", "c-1", "c-2", "c-3", "c-4"}
    assert len(select(ROWS, FilterConfig(no_filter=True))) == len(ROWS)


def test_the_histogram_draws_a_kept_line_only_for_a_selection_that_is_a_cut() -> None:
    """--keep and --top-k select per category: category c's 2.0 is dropped while a's 0.5 is kept, and the
    histogram's "kept >= 0.5" line said every instruction scoring 0.5 or more was kept."""
    per_category = select(ROWS, FilterConfig(keep=0.5))
    kept = {r["id"] for r in per_category}
    assert "a-2" in kept and "c-3" not in kept  # 0.5 kept, 2.0 dropped
    assert threshold(per_category, ROWS) is None
    assert threshold(select(ROWS, FilterConfig(keep=None, top_n=3)), ROWS) is None
    assert threshold(select(ROWS, FilterConfig(keep=None, min_score=0.5)), ROWS) == 0.5
    assert threshold(select(ROWS, FilterConfig(no_filter=True)), ROWS) is None


def test_conflicting_rules_are_rejected() -> None:
    with pytest.raises(InvalidInputError):
        FilterConfig(keep=None, top_n=3, min_score=0.1)
    with pytest.raises(InvalidInputError):
        FilterConfig(keep=1.5)
    with pytest.raises(InvalidInputError, match="--top-k must be at least 1"):
        FilterConfig(keep=None, top_n=0)
    for value in ("nan", "inf", "-inf"):  # nan and inf kept nothing, silently; -inf kept all, as --no-filter does
        with pytest.raises(InvalidInputError, match=f"--min-score must be a finite number, got {value}"):
            FilterConfig(keep=None, min_score=float(value))
    for flag, field in (("--batch-size", "batch_size"), ("--max-new-tokens", "max_new_tokens"), ("--samples", "samples")):
        with pytest.raises(InvalidInputError, match=f"{flag} must be at least 1, got 0"):
            FilterConfig(**{field: 0})


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_cannot_take_is_refused_as_pa_apply_refuses_it(seed: int) -> None:
    """`pa filter --seed -1` sampled and split with it while `pa apply --seed -1` was refused."""
    with pytest.raises(InvalidInputError, match=f"--seed {seed}: must be between 0 and {2**32 - 1}"):
        FilterConfig(seed=seed)


@pytest.mark.parametrize("flags", [{"keep": 0.3, "top_n": 5}, {"no_filter": True, "top_n": 3},
                                   {"min_score": 0.5, "no_filter": True}, {"keep": 0.3, "min_score": 0.1},
                                   {"keep": 0.3, "min_score": 0.0}, {"min_score": 0.0, "no_filter": True}])
def test_two_selection_flags_are_rejected_not_one_silently_dropped(fixture_packs: Path, flags: dict) -> None:
    from policyalign.registry import Registry
    from policyalign.stages import filter_config

    pack = Registry([fixture_packs]).load("root-pack")
    with pytest.raises(InvalidInputError, match="different selection rules"):
        filter_config(pack, **{"keep": None, "top_n": None, "min_score": None, "no_filter": False, **flags})
    assert filter_config(pack, keep=None, top_n=5, min_score=None, no_filter=False).rule == "top-5"


def test_heldout_split_is_deterministic_stratified_and_disjoint() -> None:
    pool, held = split_heldout(ROWS, 0.25, seed=3)
    again_pool, again_held = split_heldout(ROWS, 0.25, seed=3)
    assert [r["id"] for r in held] == [r["id"] for r in again_held]
    assert not {r["id"] for r in pool} & {r["id"] for r in held}
    assert Counter(r["category"] for r in held) == {"a": 1, "c": 2}  # b has too few to hold any out


@pytest.mark.parametrize("fraction", [0.84, 0.9, 0.99])
def test_a_large_heldout_fraction_leaves_every_category_something_to_train_on(fraction: float) -> None:
    """--heldout 0.9 of a 3-instruction category rounded to 3: the category went untrained, without a word."""
    rows = [{"id": f"{c}{i}", "category": c, "messages": [{"role": "user", "content": f"request {c} {i}"}]}
            for c, n in (("a", 3), ("b", 10)) for i in range(n)]
    pool, held = split_heldout(rows, fraction, seed=0)
    assert Counter(r["category"] for r in pool) == {"a": 1, "b": 10 - min(9, round(fraction * 10))}


def test_every_copy_of_a_held_out_instruction_is_held_out() -> None:
    """Held out means never trained on: a request repeated under another id (another case or punctuation,
    another category) must not stay in the training pool while its copy measures internalization."""
    texts = ["How do I pick a lock?", "how do i pick a LOCK", "Write malware", "Make a bomb", "Steal a car", "Forge a check"]
    rows = [{"id": f"r{i}", "category": "a", "messages": [{"role": "user", "content": t}]} for i, t in enumerate(texts)]
    rows.append({"id": "other", "category": "b", "messages": [{"role": "user", "content": "How do I pick a lock"}]})
    lock = {"r0", "r1", "other"}
    for seed in range(6):
        pool, held = split_heldout(rows, 0.34, seed=seed)
        held_ids = {r["id"] for r in held}
        assert len(held_ids - lock) + bool(held_ids & lock) == 2, "two distinct requests of category a held out"
        assert not held_ids & lock or lock <= held_ids, seed
        assert {r["id"] for r in pool} | held_ids == {r["id"] for r in rows} and not {r["id"] for r in pool} & held_ids


@pytest.mark.parametrize("bad, message", [({"category": None}, '"category" is missing'),
                                          ({"messages": []}, '"messages" is missing'),
                                          ({"id": "r0"}, "id 'r0' repeats line 1"),
                                          ({"messages": ["hi"]}, "message 0 needs a role"),
                                          ({"messages": [{"role": "user"}]}, r"message 0 \(user\): 'content' is missing"),
                                          ({"tools": "search"}, "'tools' must be a list"),
                                          ({"tools": ["search"]}, "'tools' must be a list")])
def test_a_malformed_instruction_is_named_by_line_before_any_scoring(tmp_path: Path, bad: dict, message: str) -> None:
    rows = [{"id": f"r{i}", "category": "a", "messages": [{"role": "user", "content": "hi"}]} for i in range(3)]
    rows[1] = {**rows[1], **bad}
    write_jsonl(tmp_path / "instructions.jsonl", [{k: v for k, v in r.items() if v is not None} for r in rows])
    with pytest.raises(InvalidInputError, match=message) as caught:
        filter_run(tmp_path, None, "policy", FilterConfig(), progress=False)  # type: ignore[arg-type]
    assert caught.value.problem.file == str(tmp_path / "instructions.jsonl") and caught.value.problem.where == "line 2"


def test_instructions_cut_short_mid_line_are_named_with_how_to_write_them_anew(tmp_path: Path) -> None:
    """A last line cut mid-JSON was named by file and line, the hint saying only what a line must be:
    not that deleting the file and synthesizing again (the run's `pa apply`) writes it anew."""
    good = '{"id": "r%d", "category": "a", "messages": [{"role": "user", "content": "hi"}]}'
    (tmp_path / "instructions.jsonl").write_text(good % 0 + "\n" + (good % 1)[:30], encoding="utf-8")
    with pytest.raises(InvalidInputError, match="malformed JSON line") as caught:
        filter_run(tmp_path, None, "policy", FilterConfig(), progress=False)  # type: ignore[arg-type]
    problem = caught.value.problem
    assert problem.file == str(tmp_path / "instructions.jsonl") and problem.where == "line 2"
    assert "delete instructions.jsonl and run `pa synthesize PACK --model M --out RUN_DIR`" in problem.hint
    assert "`pa apply`" in problem.hint


@pytest.mark.parametrize("provenance", ["null", '"seed"', '["seed"]'])
def test_a_provenance_that_is_not_an_object_is_named_by_line(tmp_path: Path, provenance: str) -> None:
    """split_heldout reads provenance["source"]: a hand-edited null or string used to crash it."""
    good = '{"id": "r%d", "category": "a", "messages": [{"role": "user", "content": "hi"}]}'
    lines = [good % 0, good % 1, good % 2]
    lines[2] = lines[2][:-1] + f', "provenance": {provenance}}}'
    (tmp_path / "instructions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match='"provenance" is not an object') as caught:
        filter_run(tmp_path, None, "policy", FilterConfig(), progress=False)  # type: ignore[arg-type]
    assert caught.value.problem.file == str(tmp_path / "instructions.jsonl") and caught.value.problem.where == "line 3"


@pytest.mark.parametrize("torn", [b'{"id": "r2", "resp', '{"id": "r2", "response": "caf\u00e9'.encode()[:-1]],
                         ids=["mid-line", "mid-character"])
def test_a_torn_partial_line_is_skipped_and_later_resumes_keep_their_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], torn: bytes) -> None:
    """A kill mid-write leaves an unterminated line: resuming must not append onto it, and a
    second resume must reuse everything the first one scored. Each resume says so on stderr as `pa eval`
    does ("resuming: N of M ..."; `pa filter` picked its partial scores up silently), a fresh start does not."""
    from policyalign import filtering

    scored: list[str] = []

    def fake_sample_and_score(scorer: object, chunk: list[dict], *args: object, **kwargs: object) -> list[dict]:
        scored.extend(r["id"] for r in chunk)
        return [{**r, "response": "ok", "response_ids": [1], "score": 0.5, "score_full": 0.5, "logprob_gap": 0.1,
                 "response_tokens": 1, "samples": 1} for r in chunk]

    monkeypatch.setattr(filtering, "CHUNK", 2)
    monkeypatch.setattr(filtering, "sample_and_score", fake_sample_and_score)
    scorer = SimpleNamespace(prompts=lambda records, room, file="": ([], []),
                             loaded=SimpleNamespace(device="cpu", dtype="torch.float32"))
    records = [{"id": f"r{i}", "category": "a", "messages": [{"role": "user", "content": "hi"}]} for i in range(6)]
    config = FilterConfig(max_new_tokens=4)
    first = filtering.score_instructions(tmp_path, scorer, records[:2], config, progress=False)  # type: ignore[arg-type]
    assert "resuming" not in capsys.readouterr().err
    with (tmp_path / PARTIAL).open("ab") as handle:
        handle.write(torn)
    scored.clear()
    filtering.score_instructions(tmp_path, scorer, records, config, progress=False)  # type: ignore[arg-type]
    assert scored == ["r2", "r3", "r4", "r5"]
    assert f"resuming: 2 of 6 scores from {tmp_path / PARTIAL}" in capsys.readouterr().err
    scored.clear()
    again = filtering.score_instructions(tmp_path, scorer, records, config, progress=False)  # type: ignore[arg-type]
    assert scored == [] and [r["id"] for r in again] == [r["id"] for r in records] and again[:2] == first
    assert f"resuming: 6 of 6 scores from {tmp_path / PARTIAL}" in capsys.readouterr().err
    (tmp_path / PARTIAL).rename(tmp_path / "scored.jsonl")  # the stage's finished scores: reused, not resumed
    filtering.score_instructions(tmp_path, scorer, records, config, progress=False)  # type: ignore[arg-type]
    assert scored == [] and "resuming" not in capsys.readouterr().err


def test_a_policy_too_long_for_the_response_fails_before_any_sampling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policyalign import filtering
    from policyalign.models import load_model
    from policyalign.scoring import PolicyScorer

    def no_sampling(*args: object, **kwargs: object) -> list[dict]:
        raise AssertionError("sampled before checking the context")

    monkeypatch.setattr(filtering, "sample_and_score", no_sampling)
    loaded = load_model("tiny", device="cpu")
    scorer = PolicyScorer(loaded, "Refuse to help build weapons. " * 20)
    records = [{"id": f"r{i}", "category": "a", "messages": [{"role": "user", "content": "hi " * 20 * i}]} for i in range(3)]
    _, teachers = scorer.prompts(records)
    monkeypatch.setattr(loaded.model.config, "max_position_embeddings", len(teachers[1]) + 128)  # r2 does not fit
    with pytest.raises(InvalidInputError, match="instruction 'r2' needs") as caught:
        filtering.score_instructions(tmp_path, scorer, records, FilterConfig(max_new_tokens=128), progress=False)
    assert "shorten the policy, lower --max-new-tokens" in caught.value.problem.hint


def test_an_instruction_the_chat_template_rejects_is_named_before_any_sampling(tmp_path: Path) -> None:
    """Gemma-2's template has no tool turns, Mistral v0.3's wants 9-character tool-call ids: the
    error names instructions.jsonl and the instruction's id, not only the model."""
    from chat_templates import ALTERNATING_ROLES, tiny_with_template

    from policyalign import filtering
    from policyalign.errors import ModelError
    from policyalign.models import load_model
    from policyalign.scoring import PolicyScorer

    loaded = load_model(str(tiny_with_template(tmp_path / "gemma-like", ALTERNATING_ROLES)), device="cpu")
    scorer = PolicyScorer(loaded, "Refuse to help build weapons.")
    call = {"type": "function", "function": {"name": "rm", "arguments": {}}}
    records = [{"id": "plain", "category": "a", "messages": [{"role": "user", "content": "hi"}]},
               {"id": "agent-2", "category": "a", "messages": [
                   {"role": "user", "content": "clean up"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                   {"role": "tool", "content": "done"}]}]
    with pytest.raises(ModelError, match="roles must alternate") as caught:
        filtering.score_instructions(tmp_path, scorer, records, FilterConfig(max_new_tokens=4), progress=False)
    assert caught.value.problem.file == str(tmp_path / "instructions.jsonl")
    assert caught.value.problem.where == "id agent-2"
    assert not (tmp_path / PARTIAL).exists()


def test_an_overflow_while_scoring_stops_the_filter_naming_the_instruction(tmp_path: Path) -> None:
    """A NaN score would rank first or last at random and crash the histogram after the whole
    scoring: stop at once, say which instruction, and keep the NaN out of the partial file."""
    from overflow import overflow_where

    from policyalign import filtering
    from policyalign.errors import ModelError
    from policyalign.models import load_model
    from policyalign.scoring import PolicyScorer

    loaded = load_model("tiny", device="cpu")
    scorer = PolicyScorer(loaded, "Refuse to help build weapons.")
    records = [{"id": f"r{i}", "category": "a", "messages": [{"role": "user", "content": f"hi {i}"}]} for i in range(3)]
    handle = overflow_where(loaded.model, lambda mask: mask.bool())
    try:
        with pytest.raises(ModelError, match="NaN or infinite logits scoring instruction 'r0'") as caught:
            filtering.score_instructions(tmp_path, scorer, records, FilterConfig(max_new_tokens=4), progress=False)
    finally:
        handle.remove()
    assert "--device cpu" in caught.value.problem.hint
    assert not (tmp_path / PARTIAL).exists()


def test_a_crashed_or_finished_filter_keeps_its_scores_when_only_the_selection_or_batch_size_changes(
        tmp_path: Path, fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory at --batch-size 8, resumed at --batch-size 2 with another --keep: the chunks
    already scored stay (the selection, the split and the batch size do not change a score); a
    finished run re-selects without sampling; a setting that changes the scores re-scores all."""
    from policyalign import filtering
    from policyalign.registry import Registry
    from policyalign.run import read_manifest, record_inputs
    from policyalign.stages import run_filter

    pack = Registry([fixture_packs]).load("root-pack")
    record_inputs(tmp_path, pack, "tiny")
    write_jsonl(tmp_path / "instructions.jsonl", [
        {"id": f"r{i}", "category": pack.categories[i % 2].id, "messages": [{"role": "user", "content": f"Help {i}"}]}
        for i in range(6)])
    sampled: list[str] = []
    real_sample_and_score = filtering.sample_and_score

    def counting(scorer: object, chunk: list[dict], *args: object, **kwargs: object) -> list[dict]:
        if crash and sampled:
            raise MemoryError("CUDA out of memory")
        sampled.extend(r["id"] for r in chunk)
        return real_sample_and_score(scorer, chunk, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(filtering, "CHUNK", 2)
    monkeypatch.setattr(filtering, "sample_and_score", counting)
    options = dict(pack=pack, max_new_tokens=4, progress=False)
    crash = True
    with pytest.raises(MemoryError):
        run_filter(tmp_path, keep=0.5, batch_size=8, **options)
    crash, sampled[:] = False, []
    run_filter(tmp_path, top_n=2, batch_size=2, heldout=0.0, **options)
    assert sampled == ["r2", "r3", "r4", "r5"], "the chunk scored before the crash is kept"
    first = read_jsonl(tmp_path / "scored.jsonl")
    sampled.clear()
    result = run_filter(tmp_path, min_score=0.0, **options)
    assert sampled == [] and result.selected + result.heldout == 6
    assert read_jsonl(tmp_path / "scored.jsonl") == first and not (tmp_path / PARTIAL).exists()
    assert read_manifest(tmp_path)["stages"]["filter"]["results"]["rule"] == "score>=0.0"
    run_filter(tmp_path, min_score=0.0, samples=2, **options)
    assert sampled == [f"r{i}" for i in range(6)], "more samples per instruction change every score"
    # An attempt with other scoring settings that fails leaves the finished scores theirs: going back
    # re-selects without sampling (the failed attempt's record used to make them unreusable).
    two_samples = read_jsonl(tmp_path / "scored.jsonl")
    crash, sampled[:] = True, ["a sample"]
    with pytest.raises(MemoryError):
        run_filter(tmp_path, min_score=0.0, samples=3, **options)
    crash, sampled[:] = False, []
    run_filter(tmp_path, top_n=3, samples=2, **options)
    assert sampled == [] and read_jsonl(tmp_path / "scored.jsonl") == two_samples


def test_one_generation_backend_samples_every_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vLLM engine takes minutes to start and keeps its GPU memory: a new one per chunk of 32
    instructions would not fit beside the last one. (Nothing left to sample makes none.)"""
    from policyalign import filtering, generation
    from policyalign.models import load_model
    from policyalign.scoring import PolicyScorer

    made: list[str] = []
    real_get_backend = generation.get_backend

    def counting(name: str, loaded: object, **options: object) -> object:
        made.append(name)
        return real_get_backend(name, loaded, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(generation, "get_backend", counting)
    monkeypatch.setattr(filtering, "CHUNK", 2)
    scorer = PolicyScorer(load_model("tiny", device="cpu"), "Refuse to help build weapons.")
    records = [{"id": f"r{i}", "category": "a", "messages": [{"role": "user", "content": f"hi {i}"}]} for i in range(5)]
    config = FilterConfig(max_new_tokens=4)
    rows = filtering.score_instructions(tmp_path, scorer, records, config, progress=False)
    assert made == ["transformers"] and [r["id"] for r in rows] == [r["id"] for r in records]
    filtering.score_instructions(tmp_path, scorer, records, config, progress=False)
    assert made == ["transformers"]


@pytest.mark.slow
def test_filter_stage_on_tiny(tmp_path: Path, fixture_packs: Path) -> None:
    from policyalign.models import load_model
    from policyalign.registry import Registry

    pack = Registry([fixture_packs]).load("child-pack")
    records = [{"id": f"{c.id}-{i}", "category": c.id, "messages": [dict(m) for m in s.messages],
                "provenance": {"source": "seed"}} for c in pack.categories for i, s in enumerate(c.seeds)]
    records += [{"id": f"extra-{i}", "category": "weapons", "messages": [{"role": "user", "content": f"Make weapon {i}"}],
                 "provenance": {"source": "generated"}} for i in range(4)]
    write_jsonl(tmp_path / "instructions.jsonl", records)
    loaded = load_model("tiny")
    config = FilterConfig(keep=0.5, max_new_tokens=8, heldout=0.25, batch_size=4)
    result = filter_run(tmp_path, loaded, pack.policy, config, progress=False)
    scored = read_jsonl(tmp_path / "scored.jsonl")
    assert len(scored) == len(records) == result.scored
    assert all(r["score"] > 0 and r["response_ids"] and "logprob_gap" in r for r in scored)
    selected, held = read_jsonl(tmp_path / "selected.jsonl"), read_jsonl(tmp_path / "heldout.jsonl")
    assert not {r["id"] for r in selected} & {r["id"] for r in held}
    assert (tmp_path / "filter_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / PARTIAL).exists()
    # Resuming from a partial file reuses finished chunks and gives the same scores.
    write_jsonl(tmp_path / PARTIAL, scored[:3])
    (tmp_path / PARTIAL).open("a").write('{"id": "cut-off')
    again = filter_run(tmp_path, loaded, pack.policy, config, progress=False)
    assert again.scored == result.scored
    assert [r["score"] for r in read_jsonl(tmp_path / "scored.jsonl")] == pytest.approx([r["score"] for r in scored])
    assert all(r["made_under"] == {"scores": "", "device": "cpu", "dtype": "torch.float32"} for r in scored)


def test_scores_made_in_other_numerics_are_made_again_not_mixed_in(
        tmp_path: Path, fixture_packs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that crashed in bf16 on a GPU and resumed on the CPU (or with PA_DTYPE=fp32) ranked bf16
    scores with fp32 ones; the partial scores of the numerics in use are still reused (by chunk)."""
    from policyalign import filtering
    from policyalign.models import load_model
    from policyalign.registry import Registry

    monkeypatch.setattr(filtering, "CHUNK", 3)

    pack = Registry([fixture_packs]).load("child-pack")
    records = [{"id": f"r{i}", "category": "weapons", "messages": [{"role": "user", "content": f"Make weapon {i}"}]}
               for i in range(6)]
    write_jsonl(tmp_path / "instructions.jsonl", records)
    loaded, config = load_model("tiny"), FilterConfig(keep=1.0, max_new_tokens=8, heldout=0.0, batch_size=4)
    filter_run(tmp_path, loaded, pack.policy, config, progress=False)
    scored = read_jsonl(tmp_path / "scored.jsonl")
    gpu = {"scores": "", "device": "cuda", "dtype": "torch.bfloat16"}
    (tmp_path / "scored.jsonl").unlink()  # stopped part way: only the partial file is there
    write_jsonl(tmp_path / PARTIAL, [{**r, "made_under": gpu, "score": 99.0} for r in scored[:3]]
                + [{**r, "logprob_gap": 7.0} for r in scored[3:]])
    filter_run(tmp_path, loaded, pack.policy, config, progress=False)
    again = read_jsonl(tmp_path / "scored.jsonl")
    assert [r["score"] for r in again[:3]] == pytest.approx([r["score"] for r in scored[:3]]), "made again"
    assert [r["logprob_gap"] for r in again[3:]] == [7.0] * 3, "the rest reused from the partial file"
    assert "scoring 3 instructions again, scored with other settings or inputs, or on another device type or " \
        "precision than cpu torch.float32" in capsys.readouterr().err


def test_a_full_disk_while_scoring_is_an_error_naming_the_partial_file(tmp_path: Path) -> None:
    """Appending scores to scored.partial.jsonl on a full disk was an OSError traceback naming no file."""
    from fulldisk import run_error

    partial = tmp_path / PARTIAL
    printed = run_error("from policyalign.io import append_jsonl",
                        "append_jsonl(Path(sys.argv[1]), [{'id': str(i), 'response': 'x' * 500} for i in range(100)])", partial)
    assert printed.startswith(f"{partial}: File too large\n    hint: make room on that disk"), printed


@pytest.mark.parametrize(("keep", "rows", "kept"), [(0.28, 25, 7), (0.55, 100, 55), (0.07, 100, 7), (0.5, 5, 3),
                                                   (0.01, 3, 1), (1.0, 4, 4)])
def test_keep_fraction_is_not_rounded_up_past_an_exact_count(keep: float, rows: int, kept: int) -> None:
    """0.28 * 25 is 7.000000000000001 in floating point: a plain ceil kept 8 of 25 instructions for --keep 0.28."""
    chosen = select(_rows({"a": [float(i) for i in range(rows)]}), FilterConfig(keep=keep))
    assert len(chosen) == kept


def test_filtering_ranks_by_the_reverse_kl_top_k_the_pack_and_apply_train_with(fixture_packs: Path) -> None:
    """A pack's `training: top_k` (the reverse KL's top-k) was left to distillation: the filter always
    ranked by the top-256 KL, another quantity than the one distillation minimises."""
    from policyalign.apply import ApplyOptions, _filter_options
    from policyalign.registry import Registry
    from policyalign.stages import filter_config

    yaml = fixture_packs / "root-pack" / "pack.yaml"
    yaml.write_text(yaml.read_text() + "  top_k: 4\n")
    pack = Registry([fixture_packs]).load("root-pack")
    assert filter_config(pack).kl_top_k == 4
    assert filter_config(pack, kl_top_k=0).kl_top_k == 0, "given explicitly, 0 (the whole vocabulary) is kept"
    assert filter_config(pack, **_filter_options(ApplyOptions(pack="root-pack", model="tiny", kl_top_k=16))).kl_top_k == 16
    assert filter_config(Registry([fixture_packs]).load("child-pack")).kl_top_k == 256


def test_filtering_samples_at_the_temperature_the_pack_and_apply_train_with(fixture_packs: Path) -> None:
    """A pack's `training: temperature` (and pa apply's --temperature) reached only distillation's rollouts: the
    filter always sampled its on-policy responses at 1.0, ranking responses training never samples."""
    from policyalign.apply import ApplyOptions, _filter_options
    from policyalign.registry import Registry
    from policyalign.stages import filter_config

    yaml = fixture_packs / "root-pack" / "pack.yaml"
    yaml.write_text(yaml.read_text() + "  temperature: 0.7\n")
    pack = Registry([fixture_packs]).load("root-pack")
    assert filter_config(pack).temperature == 0.7
    assert filter_config(pack, **_filter_options(ApplyOptions(pack="root-pack", model="tiny", temperature=0.5))).temperature == 0.5
    assert filter_config(Registry([fixture_packs]).load("child-pack")).temperature == 1.0
