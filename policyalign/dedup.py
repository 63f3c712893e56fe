"""Text normalisation, exact and near-duplicate detection (MinHash LSH).

Shared by synthesis (drop repeated generator outputs), decontamination (drop
synthesized instructions that copy an eval prompt) and the pack-quality tests
(no two eval items are near-copies), so all three agree on what "the same
text" means:

* **exact** duplicates have the same non-empty `normalize(text)`;
* **near** duplicates have a Jaccard similarity of their word k-shingle sets
  of at least `threshold`.

Candidates come from MinHash LSH tuned for recall (a pair exactly at the
threshold becomes a candidate with probability >= 99.5%); every reported pair
is then verified on the shingle sets themselves, so no answer contains a pair
below the threshold. Shingles are compared as 64-bit hashes of their word
sequence: two different shingles among a few dozen sharing 64 bits does not
happen in practice.

`NearDupIndex` (streaming) uses datasketch's `MinHash` and `MinHashLSH`
directly. The batch functions (`find_near_duplicates`, `dedup`) compute the
very same signatures (datasketch's affine32 scheme and permutations,
bit-for-bit; a test checks it) and the same banding, vectorised with numpy
across all texts: datasketch's per-text Python overhead (a bytes object and a
dict insert per band per text) would otherwise dominate at 100k texts.

Everything is deterministic: fixed MinHash seed, content hashes (never
Python's salted `hash`), results in input order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .textnorm import normalize

DEFAULT_K = 5
DEFAULT_THRESHOLD = 0.8
NUM_PERM = 128
MINHASH_SEED = 1
# Probability that a pair exactly at the threshold becomes an LSH candidate.
MIN_RECALL_AT_THRESHOLD = 0.995
# Candidates whose signature agreement is more than this many standard deviations below the
# threshold skip exact verification (a true pair is dropped with probability < 1e-6).
PREFILTER_SIGMAS = 5.0
# Shingles per vectorised signature chunk (temporary memory ~ chunk * num_perm * 4 bytes).
_CHUNK_SHINGLES = 1 << 16
_CHUNK_TEXTS = 1 << 16
_PAIR_CHUNK = 1 << 17

_MULT = np.uint64(0x100000001B3)          # FNV-1a 64-bit prime: folds word hashes into a shingle hash
_LENGTH_TAG = np.uint64(0x9E3779B97F4A7C15)


# --------------------------------------------------------------------------- shingles


def shingles(text: str, k: int = DEFAULT_K) -> set[str]:
    """Word k-shingles of the normalised text.

    A text with fewer than `k` words (but at least one) is a single shingle of all its words,
    so short texts still compare: equal ones match, different ones do not (a 3-word text has
    too little text for "mostly the same" to mean anything). An empty text has no shingles
    and duplicates nothing.
    """
    _check_k(k)
    words = normalize(text).split()
    if not words:
        return set()
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"shingle size k must be a positive integer, got {k!r}", where="k",
                                hint="use k=5 (word 5-grams) unless texts are very short")


def _hash64(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _fmix64(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


@dataclass(frozen=True)
class _Shingled:
    """Shingle hashes of many texts in one flat array: text i owns flat[starts[i]:starts[i+1]].

    A text's slice may repeat a hash (a repeated phrase); `unique(i)` is its shingle *set*.
    """

    flat: np.ndarray    # uint64
    starts: np.ndarray  # int64, len(texts) + 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.starts)

    def unique(self, i: int) -> np.ndarray:
        return _sorted_unique(self.flat[self.starts[i]:self.starts[i + 1]])


def _shingle_hashes(norms: Sequence[str], k: int) -> _Shingled:
    """Hash the word k-shingles of many normalised texts, a chunk of texts at a time (bounded memory)."""
    flats: list[np.ndarray] = []
    starts: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
    for begin in range(0, len(norms), _CHUNK_TEXTS):
        chunk = _shingle_chunk(norms[begin:begin + _CHUNK_TEXTS], k)
        flats.append(chunk.flat)
        starts.append(chunk.starts[1:] + starts[-1][-1])
    flat = np.concatenate(flats) if flats else np.zeros(0, dtype=np.uint64)
    return _Shingled(flat, np.concatenate(starts))


def _shingle_chunk(norms: Sequence[str], k: int) -> _Shingled:
    """Hash the word k-shingles of some texts at once (`norms` are `normalize` outputs: single spaces).

    Each distinct word is hashed once (blake2b); a shingle's hash folds its words' hashes in
    order, tagged with its length (so the single shingle of a 3-word text never equals a
    5-word window), then avalanches. The folding is vectorised over all the texts.
    """
    words = " ".join(norms).split()  # normalised texts are single-space separated
    counts = np.fromiter((norm.count(" ") + 1 if norm else 0 for norm in norms), dtype=np.int64, count=len(norms))
    vocab = {word: index for index, word in enumerate(dict.fromkeys(words))}
    word_hashes = np.fromiter((_hash64(w) for w in vocab), dtype=np.uint64, count=len(vocab))
    ids = np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=len(words))
    seq = np.append(word_hashes[ids], np.uint64(0))  # one pad slot
    word_starts = np.concatenate(([0], np.cumsum(counts)))[:-1]
    per_text = np.where(counts >= k, counts - k + 1, np.minimum(counts, 1))
    starts = np.concatenate(([0], np.cumsum(per_text))).astype(np.int64)
    total = int(starts[-1])
    owner = np.repeat(np.arange(len(norms)), per_text)
    first_word = word_starts[owner] + (np.arange(total) - starts[:-1][owner])
    length = np.minimum(counts[owner], k).astype(np.uint64)
    hashes = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(k):
            inside = np.uint64(t) < length
            word = seq[np.where(inside, first_word + t, len(seq) - 1)]
            hashes = np.where(inside, (hashes ^ word) * _MULT, hashes)
        hashes = _fmix64(hashes ^ (length * _LENGTH_TAG))
    return _Shingled(hashes, starts)


def _hashes_of(text: str, k: int) -> np.ndarray:
    """The shingle set of one text as sorted unique uint64 hashes."""
    return _shingle_hashes([normalize(text)], k).unique(0)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays (0.0 when both are empty)."""
    if a.size == 0 and b.size == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def text_similarity(a: str, b: str, k: int = DEFAULT_K) -> float:
    """Exact shingle Jaccard similarity of two texts (1.0 for equal non-empty normalised texts)."""
    _check_k(k)
    na, nb = normalize(a), normalize(b)
    if na and na == nb:
        return 1.0
    shingled = _shingle_hashes([na, nb], k)
    return jaccard(shingled.unique(0), shingled.unique(1))


# --------------------------------------------------------------------------- MinHash parameters and signatures


def check_threshold(threshold: float, where: str = "threshold") -> float:
    """A Jaccard threshold in (0, 1], or InvalidInputError naming the option."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < float(threshold) <= 1.0:
        raise InvalidInputError(
            f"near-duplicate threshold must be in (0, 1], got {threshold!r}", where=where,
            hint="use a Jaccard similarity such as 0.8 (near-copies) or 0.5 (loose overlap)")
    return float(threshold)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) for LSH: the most selective banding that still has high recall at `threshold`.

    datasketch's default optimiser balances false positives against false negatives and, at
    0.8, proposes a pair sitting at the threshold only ~40% of the time. Candidates are
    verified exactly here, so a false positive costs one set intersection while a false
    negative is a missed duplicate: take the largest band size whose candidate probability at
    the threshold is still >= MIN_RECALL_AT_THRESHOLD (and at least 2 bands).
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm // 2 + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= MIN_RECALL_AT_THRESHOLD:
            best = (bands, rows)
    return best


def _low32(value: int) -> int:
    """Shingles arrive pre-hashed to 64 bits; datasketch's default affine32 scheme takes 32."""
    return value & 0xFFFFFFFF


@lru_cache(maxsize=8)
def _base_minhash(num_perm: int, seed: int) -> Any:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=_low32)


def _minhash(hashes: np.ndarray, num_perm: int, seed: int) -> Any:
    """A datasketch MinHash of pre-hashed shingles (the permutations are derived once, then copied)."""
    m = _base_minhash(num_perm, seed).copy()
    m.update_batch(hashes.tolist())
    return m


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: the pre-mix datasketch's affine32 scheme applies to each input."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def _signature_chunks(shingled: _Shingled, rows: np.ndarray, num_perm: int,
                      seed: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """MinHash signatures of texts `rows` (each with >= 1 shingle), a chunk of texts at a time.

    Yields (begin, end, signatures of rows[begin:end]) with shape (end - begin, num_perm), uint32,
    bit-identical to `datasketch.MinHash(num_perm, seed).update_batch(...)` per text (affine32:
    fmix32 pre-mix, then a*h+b mod 2^32, minimum per permutation). Permutations run along the
    first axis so each minimum is over a contiguous segment; chunking bounds memory.
    """
    a, b = (np.asarray(p, dtype=np.uint32)[:, None] for p in _base_minhash(num_perm, seed).permutations)
    sizes = shingled.sizes()[rows]
    begin = 0
    while begin < len(rows):
        end = begin + max(1, int(np.searchsorted(np.cumsum(sizes[begin:]), _CHUNK_SHINGLES, side="right")))
        parts = [shingled.flat[shingled.starts[r]:shingled.starts[r + 1]] for r in rows[begin:end]]
        flat = _fmix32((np.concatenate(parts) & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        offsets = np.concatenate(([0], np.cumsum(sizes[begin:end])[:-1]))
        permuted = np.empty((num_perm, flat.size), dtype=np.uint32)
        with np.errstate(over="ignore"):
            np.multiply(a, flat[None, :], out=permuted)
            np.add(permuted, b, out=permuted)
        yield begin, end, np.minimum.reduceat(permuted, offsets, axis=1).T
        begin = end


def _signatures(shingled: _Shingled, rows: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """All signatures of `rows` as one (len(rows), num_perm) uint32 array."""
    out = np.empty((len(rows), num_perm), dtype=np.uint32)
    for begin, end, sigs in _signature_chunks(shingled, rows, num_perm, seed):
        out[begin:end] = sigs
    return out


def _band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per (text, band): a hash of the band's `rows` signature values.

    Equal bands give equal keys; unequal bands colliding on 64 bits would only add a candidate,
    which verification rejects.
    """
    keys = np.zeros((sigs.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            band_values = sigs[:, r:bands * rows:rows][:, :bands].astype(np.uint64)
            keys = (keys ^ band_values) * _MULT
    return _fmix64(keys)


# --------------------------------------------------------------------------- streaming index


@dataclass
class NearDupIndex:
    """Streaming near-duplicate index over datasketch's MinHashLSH: `add(key, text)`, `query(text)`.

    A key matches when its text has the same non-empty normalised form as the query, or a
    verified shingle Jaccard >= `threshold`. Keys come back in insertion order. `add_if_new`
    does one-pass dedup of a stream (keep the first of every cluster).
    """

    threshold: float = DEFAULT_THRESHOLD
    k: int = DEFAULT_K
    num_perm: int = NUM_PERM
    seed: int = MINHASH_SEED
    _keys: list[Hashable] = field(default_factory=list, init=False, repr=False)
    _positions: dict[Hashable, int] = field(default_factory=dict, init=False, repr=False)
    _exact: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)
    _hashes: list[np.ndarray] = field(default_factory=list, init=False, repr=False)
    _lsh: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        self.threshold = check_threshold(self.threshold)
        _check_k(self.k)
        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm,
                               params=lsh_params(self.threshold, self.num_perm))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._positions

    def add(self, key: Hashable, text: str) -> None:
        """Index `text` under `key` (keys are unique; re-adding one is an error)."""
        if key in self._positions:
            raise ValueError(f"key {key!r} is already in the index")
        self._insert(key, normalize(text), _hashes_of(text, self.k))

    def query(self, text: str) -> list[Hashable]:
        """Keys of indexed texts that are exact or near duplicates of `text`, in insertion order."""
        return [self._keys[p] for p in self._match_positions(normalize(text), _hashes_of(text, self.k))]

    def add_if_new(self, key: Hashable, text: str) -> list[Hashable]:
        """Add `text` unless it duplicates an indexed one; returns the keys it duplicates ([] = added)."""
        norm, hashes = normalize(text), _hashes_of(text, self.k)
        found = self._match_positions(norm, hashes)
        if not found:
            if key in self._positions:
                raise ValueError(f"key {key!r} is already in the index")
            self._insert(key, norm, hashes)
        return [self._keys[p] for p in found]

    def similarity(self, key: Hashable, text: str) -> float:
        """Exact shingle Jaccard between the text indexed under `key` and `text`."""
        return jaccard(self._hashes[self._positions[key]], _hashes_of(text, self.k))

    def _insert(self, key: Hashable, norm: str, hashes: np.ndarray) -> None:
        position = len(self._keys)
        self._keys.append(key)
        self._positions[key] = position
        self._hashes.append(hashes)
        if norm:
            self._exact.setdefault(norm, []).append(position)
        if hashes.size:
            self._lsh.insert(position, _minhash(hashes, self.num_perm, self.seed), check_duplication=False)

    def _match_positions(self, norm: str, hashes: np.ndarray) -> list[int]:
        found = set(self._exact.get(norm, ())) if norm else set()
        if hashes.size:
            for position in self._lsh.query(_minhash(hashes, self.num_perm, self.seed)):
                if position not in found and jaccard(self._hashes[position], hashes) >= self.threshold:
                    found.add(position)
        return sorted(found)


# --------------------------------------------------------------------------- batch internals


@dataclass
class _Corpus:
    """Texts grouped by normalised form, with the shingles, band keys and sketches of each form.

    Only one representative per distinct form (its first occurrence) is compared; `members`
    maps it back to every index with that form. Empty forms are their own singleton groups.
    Rows are representatives in order; `keyed` are the rows with shingles, and `keys`/`sketch`
    are aligned with `keyed`.
    """

    reps: np.ndarray                      # row -> index of the form's first occurrence
    members: dict[int, list[int]]         # representative -> all indices with that form
    by_norm: dict[str, int]               # non-empty normalised form -> representative
    shingled: _Shingled
    keyed: np.ndarray                     # rows with at least one shingle
    keys: np.ndarray                      # (len(keyed), bands) uint64 band keys
    sketch: np.ndarray                    # (len(keyed), num_perm) low byte of each signature value
    _sets: dict[int, np.ndarray] = field(default_factory=dict)

    def shingle_set(self, row: int) -> np.ndarray:
        if row not in self._sets:
            self._sets[row] = self.shingled.unique(row)
        return self._sets[row]


def _corpus(texts: Sequence[str], k: int, threshold: float, num_perm: int) -> _Corpus:
    by_norm: dict[str, int] = {}
    members: dict[int, list[int]] = {}
    norms: list[str] = []
    for index, text in enumerate(texts):
        norm = normalize(text)
        rep = by_norm.setdefault(norm, index) if norm else index
        if rep == index:
            members[index] = [index]
            norms.append(norm)
        else:
            members[rep].append(index)
    by_norm.pop("", None)
    shingled = _shingle_hashes(norms, k)
    keyed = np.flatnonzero(shingled.sizes() > 0)
    bands, rows = lsh_params(threshold, num_perm)
    keys = np.empty((len(keyed), bands), dtype=np.uint64)
    sketch = np.empty((len(keyed), num_perm), dtype=np.uint8)
    for begin, end, sigs in _signature_chunks(shingled, keyed, num_perm, MINHASH_SEED):
        keys[begin:end] = _band_keys(sigs, bands, rows)
        sketch[begin:end] = sigs & np.uint32(0xFF)
    reps = np.fromiter(members, dtype=np.int64, count=len(members))
    return _Corpus(reps, members, by_norm, shingled, keyed, keys, sketch)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique without its hash-table path, which is ~10x slower on millions of int64 codes."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if values.size else values


def _encode(first: np.ndarray, second: np.ndarray, base: int) -> np.ndarray:
    return first.astype(np.int64) * base + second.astype(np.int64)


def _agreement_floor(threshold: float, num_perm: int) -> float:
    """Signature agreement below which a pair cannot plausibly reach `threshold` (PREFILTER_SIGMAS below)."""
    return threshold - PREFILTER_SIGMAS * math.sqrt(threshold * (1 - threshold) / num_perm)


def _promising(a: np.ndarray, b: np.ndarray, left_sketch: np.ndarray, right_sketch: np.ndarray,
               floor: float) -> np.ndarray:
    """Mask of candidate pairs (a[i], b[i]) whose b-bit signatures agree on at least `floor` of the values.

    A low byte agrees with probability J + (1 - J)/256, so this only ever errs towards keeping.
    Most LSH candidates of templated text (similar, but well below the threshold) stop here, before
    the exact set intersection.
    """
    needed = math.ceil(floor * left_sketch.shape[1] - 1e-9)
    keep = np.empty(a.size, dtype=bool)
    for begin in range(0, a.size, _PAIR_CHUNK):
        end = begin + _PAIR_CHUNK
        agree = np.count_nonzero(left_sketch[a[begin:end]] == right_sketch[b[begin:end]], axis=1)
        keep[begin:end] = agree >= needed
    return keep


def _position_chunks(counts: np.ndarray) -> Iterator[np.ndarray]:
    """Positions with counts > 0, in slices generating about _PAIR_CHUNK * 8 pairs each (bounded memory)."""
    positions = np.flatnonzero(counts)
    cumulative = np.cumsum(counts[positions])
    begin = 0
    while begin < positions.size:
        done = int(cumulative[begin - 1]) if begin else 0
        end = max(begin + 1, int(np.searchsorted(cumulative, done + _PAIR_CHUNK * 8, side="right")))
        yield positions[begin:end]
        begin = end


def _expand(positions: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position repeated counts times, 0..count-1 within each repeat)."""
    repeated = np.repeat(positions, counts)
    within = np.arange(repeated.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return repeated, within


def _pairs_within_bands(keys: np.ndarray, sketch: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct promising (a, b), a < b, of rows sharing a band key in any band (sorted by a, then b)."""
    n = keys.shape[0]
    found: list[np.ndarray] = []
    for band in range(keys.shape[1] if n > 1 else 0):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        new_run = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
        run_start = np.flatnonzero(new_run)
        run_of = np.cumsum(new_run) - 1
        run_len = np.diff(np.append(run_start, n))
        later = run_len[run_of] - 1 - (np.arange(n) - run_start[run_of])  # run members after each position
        for positions in _position_chunks(later):
            first, offset = _expand(positions, later[positions])
            a, b = order[first], order[first + 1 + offset]
            low, high = np.minimum(a, b), np.maximum(a, b)
            keep = _promising(low, high, sketch, sketch, floor)
            found.append(_encode(low[keep], high[keep], n))
    codes = _sorted_unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return codes // max(n, 1), codes % max(n, 1)


def _pairs_across_bands(left: np.ndarray, right: np.ndarray, left_sketch: np.ndarray, right_sketch: np.ndarray,
                        floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct promising (a, b) with left row a and right row b sharing a band key in any band."""
    base = max(right.shape[0], 1)
    found: list[np.ndarray] = []
    for band in range(left.shape[1] if right.shape[0] else 0):
        order = np.argsort(right[:, band], kind="stable")
        sorted_keys = right[order, band]
        lo = np.searchsorted(sorted_keys, left[:, band], side="left")
        counts = np.searchsorted(sorted_keys, left[:, band], side="right") - lo
        for positions in _position_chunks(counts):
            a, within = _expand(positions, counts[positions])
            b = order[lo[a] + within]
            keep = _promising(a, b, left_sketch, right_sketch, floor)
            found.append(_encode(a[keep], b[keep], base))
    codes = _sorted_unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return codes // base, codes % base


def _verify(left: _Corpus, right: _Corpus, rows_a: np.ndarray, rows_b: np.ndarray,
            threshold: float) -> list[tuple[int, int, float]]:
    """(left rep row, right rep row, exact Jaccard) for candidate row pairs at or above threshold."""
    out: list[tuple[int, int, float]] = []
    for a, b in zip(rows_a.tolist(), rows_b.tolist()):
        sim = jaccard(left.shingle_set(a), right.shingle_set(b))
        if sim >= threshold:
            out.append((a, b, sim))
    return out


def _near_rows_within(corpus: _Corpus, threshold: float) -> list[tuple[int, int, float]]:
    """Verified near-duplicate (row, row, similarity) pairs between distinct forms, row a < row b."""
    floor = _agreement_floor(threshold, corpus.sketch.shape[1])
    first, second = _pairs_within_bands(corpus.keys, corpus.sketch, floor)
    return _verify(corpus, corpus, corpus.keyed[first], corpus.keyed[second], threshold)


def _near_rows_between(left: _Corpus, right: _Corpus, threshold: float) -> list[tuple[int, int, float]]:
    if not len(left.keyed) or not len(right.keyed):
        return []
    floor = _agreement_floor(threshold, left.sketch.shape[1])
    first, second = _pairs_across_bands(left.keys, right.keys, left.sketch, right.sketch, floor)
    return _verify(left, right, left.keyed[first], right.keyed[second], threshold)


# --------------------------------------------------------------------------- batch API


def exact_duplicates(texts: Sequence[str]) -> dict[int, int]:
    """Map index -> index of its first occurrence, for every text whose non-empty normalised form repeats."""
    first: dict[str, int] = {}
    duplicate_of: dict[int, int] = {}
    for index, text in enumerate(texts):
        norm = normalize(text)
        if norm in first:
            duplicate_of[index] = first[norm]
        elif norm:  # an empty text has nothing to compare and duplicates nothing
            first[norm] = index
    return duplicate_of


def exact_dedup(texts: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of every distinct normalised text, in order."""
    dups = exact_duplicates(texts)
    return [i for i in range(len(texts)) if i not in dups]


@dataclass(frozen=True)
class DedupResult:
    """Outcome of `dedup`: kept indices, and for each dropped one the kept index it repeats and why.

    `reason` is "exact" when the text's normalised form already occurred (its `duplicate_of`
    is the kept text that first occurrence is, or nearly repeats), else "near".
    """

    kept: list[int]
    duplicate_of: dict[int, int]
    reason: dict[int, str]


def dedup(texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, *, k: int = DEFAULT_K,
          num_perm: int = NUM_PERM) -> DedupResult:
    """Keep the first text of every exact/near-duplicate cluster, greedily in input order.

    A text is dropped when it repeats (exactly or nearly) an earlier text that was kept -- the
    same answer as feeding the texts one by one to `NearDupIndex.add_if_new`.
    """
    threshold = check_threshold(threshold)
    _check_k(k)
    corpus = _corpus(texts, k, threshold, num_perm)
    earlier: dict[int, list[int]] = {}
    for a, b, _ in _near_rows_within(corpus, threshold):
        earlier.setdefault(int(corpus.reps[b]), []).append(int(corpus.reps[a]))
    duplicate_of: dict[int, int] = {}
    reason: dict[int, str] = {}
    kept: set[int] = set()
    for rep in corpus.reps.tolist():
        hits = sorted(j for j in earlier.get(rep, ()) if j in kept)
        if hits:
            duplicate_of[rep], reason[rep] = hits[0], "near"
        else:
            kept.add(rep)
        for index in corpus.members[rep][1:]:
            # An exact copy is represented by whatever kept text its first occurrence maps to.
            duplicate_of[index], reason[index] = duplicate_of.get(rep, rep), "exact"
    return DedupResult(sorted(kept), dict(sorted(duplicate_of.items())), dict(sorted(reason.items())))


def find_near_duplicates(texts: Sequence[str], against: Sequence[str] | None = None,
                         threshold: float = DEFAULT_THRESHOLD, *, k: int = DEFAULT_K,
                         num_perm: int = NUM_PERM) -> list[tuple[int, int, float]]:
    """Every near-duplicate pair, as (i, j, similarity) sorted by (i, j).

    Without `against`: pairs i < j within `texts`. With `against`: pairs (i, j) where texts[i]
    is a near duplicate of against[j] (decontamination). `similarity` is the exact shingle
    Jaccard (1.0 for equal non-empty normalised texts); LSH only proposes candidates. Each
    distinct normalised form is compared once, but all pairs are reported: a text repeated n
    times yields n*(n-1)/2 pairs, so use `dedup` to thin data rather than this.
    """
    threshold = check_threshold(threshold)
    _check_k(k)
    if against is None:
        return _within(texts, threshold, k, num_perm)
    return _between(texts, against, threshold, k, num_perm)


def _within(texts: Sequence[str], threshold: float, k: int, num_perm: int) -> list[tuple[int, int, float]]:
    corpus = _corpus(texts, k, threshold, num_perm)
    pairs: list[tuple[int, int, float]] = []
    for members in corpus.members.values():
        pairs.extend((a, b, 1.0) for x, a in enumerate(members) for b in members[x + 1:])
    for row_a, row_b, sim in _near_rows_within(corpus, threshold):
        group_a, group_b = corpus.members[int(corpus.reps[row_a])], corpus.members[int(corpus.reps[row_b])]
        pairs.extend((min(a, b), max(a, b), sim) for a in group_a for b in group_b)
    return sorted(pairs)


def _between(texts: Sequence[str], against: Sequence[str], threshold: float, k: int,
             num_perm: int) -> list[tuple[int, int, float]]:
    left, right = _corpus(texts, k, threshold, num_perm), _corpus(against, k, threshold, num_perm)
    rep_pairs = {(rep, right.by_norm[norm]): 1.0 for norm, rep in left.by_norm.items() if norm in right.by_norm}
    for row_a, row_b, sim in _near_rows_between(left, right, threshold):
        rep_pairs.setdefault((int(left.reps[row_a]), int(right.reps[row_b])), sim)
    pairs = [(i, j, sim) for (a, b), sim in rep_pairs.items() for i in left.members[a] for j in right.members[b]]
    return sorted(pairs)
