"""How much a rate measured on a few dozen eval items can be trusted.

A pack's eval set holds 48-80 items per kind, so a violation rate of 10% has a 95% interval
about 15 points wide, and a drop from 20% to 10% may be noise. The model card is the evidence a
user reads before trusting an adapter: it states each rate's interval and, for the change
before -> after on the same items, the exact paired (McNemar) p-value.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def is_number(value: Any) -> bool:
    """A JSON number: Python's bool is an int, so a hand-edited `true` would pass a plain isinstance check."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of `successes / total`; None when nothing was measured.

    Wilson, not the normal approximation: at 0 of 12 the latter claims [0, 0], while the true
    rate could well be 20%."""
    if total <= 0:
        return None
    if not 0 <= successes <= total:
        raise ValueError(f"{successes} successes out of {total}")
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no float dust at 0 or n
    return low, 1.0 if successes == total else min(1.0, centre + half)


EXACT_UP_TO = 1000  # changed items: McNemar's exact integer sums take about 10 ms here


def mcnemar_p(worse: int, better: int) -> float:
    """Exact two-sided McNemar p-value for paired outcomes on the same items.

    `worse` items went from good to bad, `better` from bad to good; items that did not change
    carry no evidence about the change. Under "no effect" each changed item is a fair coin."""
    if worse < 0 or better < 0:
        raise ValueError(f"negative counts: {worse}, {better}")
    n, k = worse + better, min(worse, better)
    if n == 0:
        return 1.0
    if n <= EXACT_UP_TO:  # exact: 1/32 is 0.03125, and a float-dusted 0.0312500000000001 printed as 0.0313
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return min(1.0, 2 * _binomial_tail(n, k))


def _binomial_tail(n: int, k: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), k <= n / 2, to about 1e-9 relative: its largest term
    C(n, k) / 2^n, times the sum of the terms relative to it. The exact integer sum took 37 s at 20,000
    changed items (`pa eval --compare` of two large evals); the relative terms shrink fast below k,
    so at most a few thousand of them reach double precision. A p-value below the smallest double is
    0.0, as scipy's is."""
    top = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2))
    total, term = 0.0, 1.0
    for i in range(k, -1, -1):
        total += term
        term *= i / (n - i + 1)  # C(n, i - 1) / C(n, i)
        if term < 1e-17 * total:
            break
    return top * total


def paired_changes(pairs: Iterable[tuple[bool, bool]]) -> tuple[int, int]:
    """(worse, better) from (bad before, bad after) per item."""
    worse = better = 0
    for before, after in pairs:
        worse += not before and after
        better += before and not after
    return worse, better


def format_rate(value: Any, interval: Sequence[float] | None = None) -> str:
    """A rate as a percentage, with its interval when known: `12.5% [5.1–27.0]`; `–` for none. A rate
    that rounds to 0.0% or 100.0% without being it prints as `<0.1%` or `>99.9%`: 1 violation in 2,500
    items read "0.0%", none seen."""
    if value is None:
        return "–"
    rate = float(value)
    text = f"{100 * rate:.1f}%"
    if text in ("0.0%", "100.0%") and 0 < rate < 1:
        text = "<0.1%" if rate < 0.5 else ">99.9%"
    return f"{text} [{100 * interval[0]:.1f}–{100 * interval[1]:.1f}]" if interval else text


def format_change(before: Any, after: Any) -> str:
    """The change of a rate in percentage points, signed (`-37.5 pp`); an unchanged rate, or one
    that rounds to no change, is `0.0 pp`, never `+0.0`/`-0.0`; `–` when either side is missing.
    The model card and `pa eval --compare` both print changes this way."""
    if before is None or after is None:
        return "–"
    text = f"{100 * (float(after) - float(before)):+.1f}"
    return "0.0 pp" if float(text) == 0 else f"{text} pp"


def change_verdict(before: Any, after: Any, better: str | None) -> str | None:
    """"better" or "worse": which way a rate that improves `better` ("lower" or "higher") moved. None where
    there is nothing to judge: either side missing, a change that rounds to none (`format_change`'s "0.0 pp"),
    or a quantity without a direction."""
    if better not in ("lower", "higher") or format_change(before, after) in ("–", "0.0 pp"):
        return None
    return "better" if (float(after) < float(before)) == (better == "lower") else "worse"


def format_p(p: float | None) -> str:
    """A p-value to three significant digits; `–` when nothing could be tested. One too small for a
    double is 0.0, which is not a p-value anyone observed: it prints as a bound."""
    if p is None:
        return "–"
    return "< 1e-300" if p < 1e-300 else f"{p:.3g}"
