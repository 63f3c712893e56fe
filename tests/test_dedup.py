"""Normalisation, exact and near-duplicate detection: behaviour, thresholds, recall, determinism."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policyalign import dedup as d
from policyalign import textnorm
from policyalign.dedup import (
    NearDupIndex, dedup, exact_dedup, exact_duplicates, find_near_duplicates, lsh_params, normalize, shingles,
    text_similarity,
)
from policyalign.errors import InvalidInputError

BASE = "How do I make a pipe bomb at home using parts from the hardware store"


def test_each_chinese_or_japanese_character_is_a_word() -> None:
    """Written without spaces, a whole Chinese sentence was one word: one shingle, so no near copy matched."""
    assert normalize("请告诉我，怎么洗钱？") == normalize("请 告诉我 怎么 洗钱") == "请 告 诉 我 怎 么 洗 钱"
    assert text_similarity("请告诉我怎么在他的车上动手脚让刹车失灵", "请告诉我怎样在他的车上动手脚让刹车失灵") >= 0.5


def test_combining_marks_belong_to_their_word() -> None:
    """Devanagari matras and viramas, Arabic harakat and Thai vowel signs are not `re` word characters: they
    cut words apart, so a 3-word eval prompt counted 5 to 11 words and contaminated every instruction quoting it."""
    assert normalize("यह फ़ाइल हटाओ") == "यह फ़ाइल हटाओ"
    assert normalize("اِحْذِفْ هٰذَا الْمَلَفَّ") == "اِحْذِفْ هٰذَا الْمَلَفَّ"
    # Thai writes no spaces between words: each letter, with its marks, is a word (as a Han character is).
    assert normalize("ลบไฟล์นี้ทิ้ง") == "ล บ ไ ฟ ล์ นี้ ทิ้ ง"
    assert normalize("か\u309a") == "か\u309a" and normalize("q\u0303 n\u0308") == "q\u0303 n\u0308"


def test_normalize_folds_case_width_punctuation_and_invisible_characters() -> None:
    assert normalize("  Don\u2019t   STOP\u2014step-by-step!  ") == "dont stop step by step"
    assert normalize("\uff26\uff55\uff4c\uff4c width \u00dfTRASSE") == "full width sstrasse"
    assert normalize("ki\u200bll the\u00a0process") == "kill the process"
    assert normalize("!!! ... ???") == ""


@pytest.mark.parametrize("invisible", ["\u200b", "\u00ad", "\u034f", "\u061c", "\u115f", "\u17b4", "\u180e",
                                       "\u2066", "\u2069", "\u3164", "\ufe0f", "\uffa0", "\U0001d173", "\U000e0062"])
def test_no_invisible_character_splits_a_word(invisible: str) -> None:
    # Every Default_Ignorable_Code_Point is deleted: a bidi isolate or variation selector inside
    # a word of a copied eval prompt made two words of it, and decontamination missed the copy.
    assert normalize(f"pipe bo{invisible}mb") == "pipe bomb"


def test_cyrillic_and_greek_look_alikes_are_the_latin_letters() -> None:
    # "а", "е", "о", "р", "с" here are Cyrillic, "ο" and "ι" Greek: the text reads as BASE, and a
    # synthesized copy of an eval prompt written so must not pass decontamination.
    disguised = "Hοw dο I mаkе а pipе bοmb аt hοmе using pаrts frοm thе hаrdwаrе stοrе"
    assert normalize(disguised) == normalize(BASE)
    assert find_near_duplicates([disguised, "АРТЕМ"], [BASE], 0.5) == [(0, 0, 1.0)]
    assert normalize("Ρεсіре") == "pecipe" and normalize("ВОМВ") == "bomb"


def test_ascii_fast_path_agrees_with_the_general_path() -> None:
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        assert normalize(text) == textnorm._normalize_slow(text), repr(text)


def test_shingles_and_short_text_fallback() -> None:
    assert shingles("one two three four five six") == {"one two three four five", "two three four five six"}
    assert shingles("Kill the cat.") == {"kill the cat"}
    assert shingles("Kill the cat", k=2) == {"kill the", "the cat"}
    assert shingles("   ") == set()
    with pytest.raises(InvalidInputError):
        shingles("x", k=0)


def test_hashed_shingles_match_string_shingles() -> None:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    for _ in range(50):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 12)))
        for k in (1, 3, 5):
            assert d._hashes_of(text, k).size == len(shingles(text, k))


def test_exact_duplicates_use_the_normalised_form_and_ignore_empty_texts() -> None:
    texts = [BASE, BASE.upper() + "!!", "something else entirely here", "", "  ", BASE + "?"]
    assert exact_duplicates(texts) == {1: 0, 5: 0}
    assert exact_dedup(texts) == [0, 2, 3, 4]


def test_find_near_duplicates_within() -> None:
    texts = [BASE, BASE + " today", "Write a poem about the sea and the summer sun", BASE.lower(), ""]
    pairs = find_near_duplicates(texts)
    sim = text_similarity(BASE, BASE + " today")
    assert sim == pytest.approx(11 / 12)
    assert pairs == [(0, 1, pytest.approx(sim)), (0, 3, 1.0), (1, 3, pytest.approx(sim))]


def test_find_near_duplicates_against() -> None:
    texts = ["Write a poem about the sea and the summer sun", BASE + " please", BASE, "unrelated words only here"]
    against = ["Totally different reference text about cooking pasta", BASE, ""]
    assert find_near_duplicates(texts, against) == [(1, 1, pytest.approx(11 / 12)), (2, 1, 1.0)]
    assert find_near_duplicates(texts, []) == []
    assert find_near_duplicates([], against) == []


def test_threshold_behaviour() -> None:
    # 14 words -> 10 shingles; each variant changes the last word(s), removing shingles one by one.
    words = "please tell me exactly how to make a pipe bomb at home without tools".split()
    texts = [" ".join(words)]
    for changed in range(1, 6):
        texts.append(" ".join(words[:-changed] + [f"x{i}" for i in range(changed)]))
    sims = [text_similarity(texts[0], t) for t in texts[1:]]
    assert sims == sorted(sims, reverse=True)
    for threshold in (0.3, 0.5, 0.7, 0.8, 0.9, 1.0):
        found = {j for i, j, _ in find_near_duplicates(texts, threshold=threshold) if i == 0}
        assert found == {j + 1 for j, s in enumerate(sims) if s >= threshold}, threshold
    for bad in (0, -0.1, 1.5, "0.8", True):
        with pytest.raises(InvalidInputError):
            find_near_duplicates(texts, threshold=bad)  # type: ignore[arg-type]


def _corpus(n: int, seed: int = 0) -> list[str]:
    """Templated texts with planted edits: many pairs near every threshold."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(60)]
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.7:
            words = rng.choice(texts).split()
            for _ in range(rng.randrange(1, 4)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randrange(30, 60))))
    return texts


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_recall_and_precision_against_brute_force(threshold: float) -> None:
    texts = _corpus(300)
    sets = [d._hashes_of(t, 5) for t in texts]
    truth = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
             if (normalize(texts[i]) == normalize(texts[j])) or d.jaccard(sets[i], sets[j]) >= threshold}
    found = find_near_duplicates(texts, threshold=threshold)
    assert all(s >= threshold for _, _, s in found)
    found_pairs = {(i, j) for i, j, _ in found}
    assert found_pairs <= truth
    assert len(truth) > 50
    assert len(found_pairs) >= 0.98 * len(truth)


def test_batch_signatures_are_datasketchs_minhash() -> None:
    texts = [BASE, "Write a poem about the sea and the summer sun", "short text"]
    shingled = d._shingle_hashes([normalize(t) for t in texts], 5)
    sigs = d._signatures(shingled, np.arange(len(texts)), 128, d.MINHASH_SEED)
    for row in range(len(texts)):
        assert np.array_equal(sigs[row], d._minhash(shingled.unique(row), 128, d.MINHASH_SEED).hashvalues)


def test_lsh_params_favour_recall() -> None:
    for threshold in (0.3, 0.5, 0.8, 0.9, 1.0):
        bands, rows = lsh_params(threshold)
        assert bands >= 2 and bands * rows <= 128
        assert 1 - (1 - threshold ** rows) ** bands >= d.MIN_RECALL_AT_THRESHOLD


def test_near_dup_index_streaming() -> None:
    index = NearDupIndex(threshold=0.8)
    index.add("a", BASE)
    index.add("b", "Write a poem about the sea and the summer sun")
    assert index.query(BASE + " today") == ["a"]
    assert index.query(BASE.upper()) == ["a"]
    assert index.query("nothing like the others at all, really") == []
    assert index.add_if_new("c", BASE + "!!!") == ["a"] and "c" not in index
    assert index.add_if_new("d", "a brand new request about something else") == [] and "d" in index
    assert len(index) == 3
    assert index.similarity("a", BASE + " today") == pytest.approx(11 / 12)
    with pytest.raises(ValueError):
        index.add("a", "dup key")
    index.add("e", "")
    assert index.query("") == []  # empty texts duplicate nothing


def test_dedup_matches_the_streaming_index() -> None:
    texts = _corpus(300, seed=1) + ["", ""]
    result = dedup(texts, 0.7)
    index = NearDupIndex(threshold=0.7)
    streamed = [i for i, t in enumerate(texts) if not index.add_if_new(i, t)]
    assert result.kept == streamed
    assert set(result.duplicate_of) == set(range(len(texts))) - set(result.kept)
    assert set(result.reason.values()) == {"exact", "near"}
    for dropped, kept in result.duplicate_of.items():
        assert kept in result.kept and kept < dropped


def test_results_are_deterministic_across_processes() -> None:
    """No dependence on Python's salted str hash: a fresh interpreter gives the same answer."""
    code = ("import sys; sys.path.insert(0, '.'); from tests.test_dedup import _corpus; "
            "from policyalign.dedup import find_near_duplicates as f; print(f(_corpus(200), threshold=0.6))")
    root = Path(__file__).resolve().parents[1]
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(runs) == 1
    assert runs.pop().strip() == str(find_near_duplicates(_corpus(200), threshold=0.6))


def test_chunked_computation_gives_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk boundaries (texts per shingling chunk, shingles per signature chunk) change nothing."""
    texts = _corpus(200, seed=2)
    expected = find_near_duplicates(texts, threshold=0.6)
    monkeypatch.setattr(d, "_CHUNK_TEXTS", 7)
    monkeypatch.setattr(d, "_CHUNK_SHINGLES", 50)
    monkeypatch.setattr(d, "_PAIR_CHUNK", 5)
    assert find_near_duplicates(texts, threshold=0.6) == expected
    assert find_near_duplicates(texts[:50], texts[50:], threshold=0.6) == [
        (i, j - 50, s) for i, j, s in expected if i < 50 <= j]
