"""Intervals and paired tests the model card prints as evidence: checked against published values."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from policyalign.stats import change_verdict, format_change, format_p, format_rate, mcnemar_p, paired_changes, wilson_interval


def test_wilson_interval_matches_newcombes_worked_example() -> None:
    """Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 -> 0.2553 to 0.3662."""
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_wilson_interval_at_the_ends_is_not_degenerate() -> None:
    """0 of 12 violations does not prove a 0% rate: the interval reaches about 24%."""
    assert wilson_interval(0, 12) == (0.0, pytest.approx(0.2425, abs=1e-4))
    assert wilson_interval(12, 12) == (pytest.approx(0.7575, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize("worse,better", [(0, 6), (1, 9), (3, 3), (7, 2), (0, 0), (12, 30)])
def test_mcnemar_exact_equals_a_two_sided_binomial_test_on_the_changed_items(worse: int, better: int) -> None:
    expected = 1.0 if worse + better == 0 else binomtest(worse, worse + better, 0.5).pvalue
    assert mcnemar_p(worse, better) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("worse,better", [(400, 600), (9500, 10500), (49000, 51000), (500000, 500400)])
def test_mcnemar_on_tens_of_thousands_of_changed_items_matches_the_binomial_test(worse: int, better: int) -> None:
    """Summing exact binomial coefficients took 37 s at 20,000 changed items (`pa eval --compare` of
    two large evals) and minutes beyond."""
    assert mcnemar_p(worse, better) == pytest.approx(binomtest(worse, worse + better, 0.5).pvalue, rel=1e-8)


def test_a_p_value_below_the_smallest_double_prints_as_a_bound_not_zero() -> None:
    assert mcnemar_p(0, 1100) == 0.0 == binomtest(0, 1100, 0.5).pvalue
    assert format_p(mcnemar_p(0, 1100)) == "< 1e-300"
    assert format_p(mcnemar_p(0, 990)) == "1.91e-298" and format_p(0.0123456) == "0.0123" and format_p(None) == "–"


def test_paired_changes_count_only_items_that_changed() -> None:
    pairs = [(True, False), (True, False), (False, True), (True, True), (False, False)]
    assert paired_changes(pairs) == (1, 2)


def test_format_change_is_signed_and_prints_no_change_without_a_sign() -> None:
    """The card and `pa eval --compare` print a change one way: "+0.0 pp" (the card) and "0.0 pp"
    (--compare) told the same reader two things about the same unchanged rate."""
    assert format_change(0.5, 0.125) == "-37.5 pp"
    assert format_change(0.0, 1.0) == "+100.0 pp"
    assert format_change(1.0, 1.0) == "0.0 pp"
    assert format_change(0.5, 0.5 - 1e-5) == "0.0 pp"  # rounds to no change: not "-0.0 pp"
    assert format_change(None, 0.5) == "–" and format_change(0.5, None) == "–"


def test_format_rate_never_rounds_a_measured_rate_to_none_or_all() -> None:
    """1 violation in 2,500 items (an eval set or benchmark that large) printed as "0.0%", on the card
    and in `pa eval --compare`, as if none had been seen; 2,499 of 2,500 as "100.0%"."""
    assert format_rate(1 / 2500) == "<0.1%" and format_rate(1 / 2500, [0.0, 0.0023]) == "<0.1% [0.0–0.2]"
    assert format_rate(2499 / 2500) == ">99.9%"
    assert format_rate(0.0) == "0.0%" and format_rate(1.0) == "100.0%" and format_rate(None) == "–"
    assert format_rate(1 / 1000) == "0.1%" and format_rate(0.125, [0.051, 0.27]) == "12.5% [5.1–27.0]"


def test_change_verdict_says_which_way_a_rate_moved_by_its_direction() -> None:
    """`pa eval --compare` and the card mark each change better or worse: a rising agreement is better, a rising
    violation rate worse; a change that prints as "0.0 pp", a missing side or no direction is neither."""
    assert change_verdict(0.5, 0.25, "lower") == "better" and change_verdict(0.25, 0.5, "lower") == "worse"
    assert change_verdict(0.25, 0.5, "higher") == "better" and change_verdict(0.5, 0.25, "higher") == "worse"
    assert change_verdict(0.5, 0.5 - 1e-5, "lower") is None  # rounds to no change
    assert change_verdict(None, 0.5, "lower") is None and change_verdict(0.5, 0.25, None) is None
