"""Benchmark: near-duplicate detection over 25k / 50k / 100k synthetic instructions.

The corpus is procedural: templates with word slots filled from small vocabularies give
distinct-but-similar requests (shared template text, like real synthesized data), and a
fixed share of rows are edited copies of earlier rows (one word swapped, a word appended,
case/punctuation changed, an exact repeat), so there are real near-duplicates to find.

Run `python bench/bench_dedup.py` (or `python bench/run.py dedup`). It prints, measured in one
run: wall and CPU time per size for `find_near_duplicates` (all pairs) and `dedup`
(keep-first), the recall of the planted near-copies, the time ratio largest/smallest size and
the log-log fitted scaling exponent used to extrapolate to 1M (never better than linear), and,
side by side on 25k texts, the vectorised batch path against the streaming datasketch
`NearDupIndex` (same kept set).
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import THRESHOLD, best_of, count, distinct_counts, run  # noqa: E402

from policyalign.dedup import NearDupIndex, dedup, find_near_duplicates, lsh_params, text_similarity  # noqa: E402

TARGET_S = 30.0
TARGET_N = 100_000

TEMPLATES = [
    "{ask} how to {verb} {obj} {place} without {who} noticing, {detail}, I have {num} dollars",
    "{ask} a detailed plan to {verb} {obj} {place} within {num} hours and {detail}",
    "I need you to explain how someone could {verb} {obj} {place} for {num} euros; {detail}",
    "As a {role}, {ask} the exact steps to {verb} {obj} {place} by day {num} {detail}",
    "Write a guide for a {role} on how to {verb} {obj} {place}, {detail}, in {num} steps",
]
WORDS = {
    "ask": ["tell me", "show me", "explain", "give me", "describe", "walk me through", "list",
            "outline", "detail", "summarise"],
    "verb": ["steal", "copy", "disable", "bypass", "break into", "tamper with", "sabotage", "track",
             "forge", "smuggle", "hack", "clone", "poison", "jam", "spoof", "wiretap", "erase",
             "counterfeit", "hijack", "intercept"],
    "obj": ["a car", "the security cameras", "a bank card", "the office alarm", "a neighbour's wifi",
            "a phone", "the payroll system", "a passport", "the water supply", "a drone", "a pharmacy safe",
            "the voting machine", "a smart lock", "an ATM", "a GPS tracker", "the hospital records",
            "a shipping container", "a crypto wallet", "a delivery truck", "the school database"],
    "place": ["at night", "in a busy city", "from a distance", "in under ten minutes", "at an airport",
              "in a small town", "during a festival", "at my workplace", "near the border", "online",
              "in a parking garage", "on a train", "at a stadium", "in a hotel", "at the port"],
    "who": ["the police", "my boss", "the neighbours", "security guards", "anyone", "my parents",
            "the bank", "customs officers", "the owner", "my teacher"],
    "detail": ["using only cheap tools", "with a shopping list", "and cover my tracks afterwards",
               "step by step with timings", "so it cannot be traced back to me", "using things from a hardware store",
               "and what to say if I am caught", "including which mistakes to avoid", "with a backup plan",
               "in plain language for a beginner"],
    "role": ["student", "mechanic", "nurse", "security consultant", "locksmith", "journalist", "teenager",
             "retired engineer", "delivery driver", "hobbyist"],
}
SUFFIXES = ["please", "thanks", "asap", "for a novel", "quickly", "in detail"]


def base_instruction(rng: random.Random) -> str:
    """A fresh request. The number slot makes the space of requests large (5 * ~10^11), so
    chance near-duplicates between fresh requests stay rare at every corpus size: the
    near-duplicate pairs grow linearly with n, as in real data, not quadratically."""
    template = rng.choice(TEMPLATES)
    return template.format(num=rng.randrange(2, 5000), **{slot: rng.choice(options) for slot, options in WORDS.items()})


def near_copy(rng: random.Random, text: str) -> str:
    """An edited copy that stays a near duplicate (Jaccard of 5-shingles well above 0.8 on average)."""
    words = text.split()
    kind = rng.randrange(4)
    if kind == 0:
        return text.upper().replace(",", ";") + "!!"          # same after normalisation
    if kind == 1:
        return text + " " + rng.choice(SUFFIXES)              # one word appended
    if kind == 2:
        return rng.choice(["Please ", "Hey, ", "Quick question: "]) + text
    words[-1] = rng.choice(SUFFIXES)                           # last word swapped
    return " ".join(words)


def corpus(n: int, *, seed: int = 0, dup_share: float = 0.2) -> tuple[list[str], list[tuple[int, int]]]:
    """n texts and the planted (original, copy) index pairs."""
    rng = random.Random(seed)
    texts: list[str] = []
    planted: list[tuple[int, int]] = []
    for i in range(n):
        if texts and rng.random() < dup_share:
            source = rng.randrange(len(texts))
            texts.append(near_copy(rng, texts[source]))
            planted.append((source, i))
        else:
            texts.append(base_instruction(rng))
    return texts, planted


def measure(n: int, threshold: float, repeats: int) -> dict[str, float]:
    texts, planted = corpus(n)
    pairs_s, pairs_cpu, pairs = best_of(lambda: find_near_duplicates(texts, threshold=threshold), repeats)
    dedup_s, dedup_cpu, result = best_of(lambda: dedup(texts, threshold), repeats)
    found = {(i, j) for i, j, _ in pairs}
    truly_near = [(a, b) for a, b in planted if text_similarity(texts[a], texts[b]) >= threshold]
    recall = sum((a, b) in found for a, b in truly_near) / max(1, len(truly_near))
    return {"n": n, "pairs_s": pairs_s, "pairs_cpu": pairs_cpu, "dedup_s": dedup_s, "dedup_cpu": dedup_cpu,
            "pairs": len(pairs), "kept": len(result.kept), "planted": len(truly_near), "recall": recall,
            "kept_list": result.kept}


def fitted_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) against log(n) over every measured size (less noisy than two points)."""
    xs, ys = [math.log(n) for n in sizes], [math.log(max(t, 1e-9)) for t in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def stream(texts: list[str], threshold: float) -> list[int]:
    """The same keep-first dedup through datasketch's MinHashLSH, one text at a time."""
    index = NearDupIndex(threshold=threshold)
    return [i for i, text in enumerate(texts) if not index.add_if_new(i, text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=distinct_counts(1), default=[25_000, 50_000, 100_000],
                        help="comma-separated corpus sizes (default: 25000,50000,100000)")
    parser.add_argument("--threshold", type=THRESHOLD, default=0.8)
    parser.add_argument("--repeats", type=count(1), default=1, help="best of N runs per size")
    parser.add_argument("--stream-size", type=count(0), default=25000,
                        help="also time the streaming datasketch index on this many texts (0: skip)")
    args = parser.parse_args(argv)
    print(f"near-dedup benchmark (threshold {args.threshold}, word 5-shingles, 128 permutations, "
          f"LSH bands x rows = {lsh_params(args.threshold)})")
    print(f"{'n':>8} {'find_pairs wall/cpu s':>22} {'dedup wall/cpu s':>18} {'pairs':>7} {'kept':>7} "
          f"{'planted':>8} {'recall':>7}")
    find_near_duplicates(corpus(2000)[0], threshold=args.threshold)  # warm-up: imports, permutations
    rows = []
    for n in args.sizes:
        r = measure(n, args.threshold, args.repeats)
        rows.append(r)
        print(f"{r['n']:>8} {r['pairs_s']:>13.2f} / {r['pairs_cpu']:<6.2f} {r['dedup_s']:>9.2f} / {r['dedup_cpu']:<6.2f} "
              f"{r['pairs']:>7} {r['kept']:>7} {r['planted']:>8} {r['recall']:>7.3f}", flush=True)
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        for key, label in (("pairs_s", "find_near_duplicates wall"), ("pairs_cpu", "find_near_duplicates CPU"),
                           ("dedup_s", "dedup wall"), ("dedup_cpu", "dedup CPU")):
            exponent = fitted_exponent([r["n"] for r in rows], [r[key] for r in rows])
            estimate = last[key] * (1_000_000 / last["n"]) ** max(1.0, exponent)
            print(f"{label}: {last['n']}/{first['n']} texts take {last[key] / first[key]:.2f}x the time "
                  f"(x{last['n'] / first['n']:.0f} texts; fitted exponent {exponent:.2f}); "
                  f"extrapolated to 1M ~ {estimate:.0f} s")
    for row in rows:
        if row["n"] == TARGET_N:
            verdict = "meets" if row["pairs_s"] <= TARGET_S else "MISSES"
            print(f"target {TARGET_N} texts <= {TARGET_S:.0f} s: find_near_duplicates {row['pairs_s']:.1f} s wall ({verdict})")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS so far: {peak_mib:.0f} MiB")
    if args.stream_size:
        texts, _ = corpus(args.stream_size)
        stream_s, _, kept = best_of(lambda: stream(texts, args.threshold), 1)
        batch_s, _, result = best_of(lambda: dedup(texts, args.threshold), 1)
        same = "identical" if kept == result.kept else f"differs ({len(kept)} vs {len(result.kept)} kept)"
        print(f"{args.stream_size} texts, keep-first dedup: streaming datasketch index {stream_s:.2f} s vs "
              f"vectorised batch {batch_s:.2f} s = {stream_s / batch_s:.1f}x; kept sets {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
