"""What counts as the same text: `normalize`, the canonical form that exact-duplicate detection, decontamination
and the pack checks (`pa validate`'s repeated seeds) compare, and the script ranges word counting shares.

Apart from `dedup` (the MinHash near-duplicate search, which needs numpy) so that loading a pack, which
normalizes its seeds, and parsing, which counts words by these ranges, do not import numpy: it was a third of
the start of `pa list`, `pa show` and `pa render`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from functools import lru_cache

# Deleted outright: apostrophes, and every invisible character (Unicode's Default_Ignorable_Code_Point
# set: zero-width spaces/joiners, soft hyphen, bidi marks and isolates, BOM, variation selectors,
# the combining grapheme joiner, Hangul fillers, tag characters), so none can split a word and hide
# a copy. A partial list let U+2066 (a bidi isolate) or U+FE0F inside "bomb" make it two words.
_DELETED = re.compile("['\u2018\u2019\u02bc\u0060\u00b4\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                      "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
                      "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
# Han and kana: each character is a word (as parsing's word count has it). Chinese and Japanese write no
# spaces, so a whole sentence was one "word": one shingle, and a copy of an eval prompt with one character
# changed, or inside a longer request, was no copy at all (only exact copies were caught).
IDEOGRAPHS = "\u2e80-\u2fdf\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # a regex class's contents; parsing counts words by it too
# Thai, Lao, Myanmar and Khmer write no spaces between words either (parsing's UNSPACED): once combining
# marks no longer cut their words apart, a whole sentence would be one word, so each letter is one, as
# each Han character is.
UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u19e0-\u19ff\ua9e0-\ua9ff\uaa60-\uaa7f"
# Cyrillic and Greek letters that look like a Latin letter (after casefold, so capitals too: "В" -> "в" -> "b"),
# mapped to it: "cаt" with a Cyrillic "а" is "cat" to a reader, and must be to decontamination. No two
# letters of one script map to the same Latin letter, so text wholly in Cyrillic or Greek compares as before.
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "і": "i", "ј": "j", "к": "k", "м": "m", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "m", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ζ": "z",
})
# ASCII fast path (bytes.translate): apostrophe and backtick deleted, other non-alphanumerics a space.
_ASCII_TABLE = bytes(c if chr(c).isalnum() else 32 for c in range(128)) + bytes(range(128, 256))


def normalize(text: str) -> str:
    """Canonical form for comparing texts: NFKC, casefolded, punctuation stripped, whitespace collapsed.

    Apostrophes are deleted (so "don't" == "dont"); every other run of punctuation, symbols,
    control characters or whitespace becomes one space (so "step-by-step" == "step by step").
    NFKC folds full-width and compatibility forms; casefold handles "ß"/"ss" and other
    non-ASCII case pairs; combining marks (vowel signs, viramas, harakat) belong to their word; each Chinese
    or Japanese character, and each Thai, Lao, Myanmar or Khmer letter, is a word of its own; Cyrillic and Greek look-alikes of Latin letters become those letters
    and invisible characters are deleted, so neither disguises a copy. ASCII text takes an
    equivalent fast path (a test checks it).
    """
    if text.isascii():
        return b" ".join(text.encode().lower().translate(_ASCII_TABLE, b"'`").split()).decode()
    return _normalize_slow(text)


def _normalize_slow(text: str) -> str:
    """The general path alone (what the ASCII fast path must agree with)."""
    letter, non_word = _word_patterns()
    text = _DELETED.sub("", unicodedata.normalize("NFKC", text).casefold().translate(_CONFUSABLES))
    return non_word.sub(" ", letter.sub(r" \g<0> ", text)).strip()


@lru_cache(maxsize=1)
def combining_marks() -> str:
    """Unicode's combining marks (category M) as a regex class's contents, as IDEOGRAPHS is: word characters
    that `re`'s \\w leaves out. Built on first use, from planes 0 and 1 (the higher planes hold ideographs,
    and variation selectors that _DELETED removes first)."""
    return "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in _ranges(
        c for c in range(0x20000) if unicodedata.category(chr(c)).startswith("M")))


@lru_cache(maxsize=1)
def _word_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(a letter that is a word by itself, a run of non-word characters), both with combining marks as word
    characters. Devanagari matras and viramas, Arabic harakat and Thai vowel signs cut words apart: a 3-word
    Hindi or Arabic eval prompt was 5 to 11 "words", and contaminated every instruction quoting it."""
    marks = combining_marks()
    return (re.compile(f"[{IDEOGRAPHS}{UNSPACED}][{marks}]*"), re.compile(f"(?:[^\\w{marks}]|_)+"))


def _ranges(code_points: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Runs of consecutive code points, as (first, last)."""
    first = last = None
    for code in code_points:
        if last is not None and code == last + 1:
            last = code
            continue
        if first is not None:
            yield first, last
        first = last = code
    if first is not None:
        yield first, last
