"""The statistics of repeated runs against cases with known answers."""

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from segbench.stats import (
    aligned_scores,
    case_bootstrap,
    compare_with_best,
    holm,
    paired_difference,
    rank_with_ties,
)


def test_equal_cases_give_a_zero_width_interval():
    interval = case_bootstrap([0.7] * 12, [f"c{i % 4}" for i in range(12)], resamples=500)
    assert interval.mean == pytest.approx(0.7) and interval.low == pytest.approx(0.7)
    assert interval.high - interval.low < 1e-12
    assert (interval.n_cases, interval.n_values) == (4, 12)


def test_two_cases_resample_whole_cases_with_all_their_repeats():
    # case a: 3 repeats of 0; case b: 1 repeat of 1. Resamples: aa -> 0, ab/ba -> 1/4, bb -> 1,
    # with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1]. Resampling single values
    # instead would put the upper end at 1/2 (four draws all equal to 1 has probability 1/256).
    interval = case_bootstrap([0.0, 0.0, 0.0, 1.0], ["a", "a", "a", "b"], resamples=20_000)
    assert interval.mean == 0.25
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_matches_a_brute_force_enumeration_of_every_resample():
    # 4 cases with 1-3 repeats: all 4^4 = 256 equally likely resamples, enumerated. The 2.5%
    # and 97.5% points fall strictly between two cumulative steps of 1/256, so a seeded
    # bootstrap with enough resamples lands on the very same outcomes.
    values = [0.2, 0.4, 0.5, 0.9, 0.6, 0.1, 0.75]
    cases = ["w", "w", "x", "y", "y", "y", "z"]
    by_case = {c: [v for v, k in zip(values, cases, strict=True) if k == c] for c in "wxyz"}
    outcomes = [np.mean([v for c in draw for v in by_case[c]])
                for draw in itertools.product("wxyz", repeat=4)]
    exact_low, exact_high = np.quantile(outcomes, [0.025, 0.975], method="inverted_cdf")
    assert min(outcomes) < exact_low and exact_high < max(outcomes)  # interior points
    interval = case_bootstrap(values, cases, resamples=200_000, seed=3)
    assert interval.mean == pytest.approx(np.mean(values))
    assert interval.low == pytest.approx(exact_low) and interval.high == pytest.approx(exact_high)


def test_many_independent_cases_agree_with_the_normal_interval():
    rng = np.random.default_rng(0)
    values = rng.normal(0.5, 0.1, 400)
    interval = case_bootstrap(values, [str(i) for i in range(400)], resamples=4000)
    half = 1.96 * values.std(ddof=1) / np.sqrt(400)
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.1)


def test_seeded_and_nan_values_left_out():
    values, cases = [0.1, 0.5, np.nan, 0.9], ["a", "b", "c", "d"]
    first = case_bootstrap(values, cases, resamples=300, seed=5)
    assert first == case_bootstrap(values, cases, resamples=300, seed=5)
    assert (first.n_cases, first.n_values) == (3, 3) and first.mean == pytest.approx(0.5)


def test_holm_against_a_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.04]) == [0.04]


def test_paired_difference_with_its_wilcoxon_p_value():
    cases = [f"c{i}" for i in range(8)]
    a = np.array([0.80, 0.82, 0.78, 0.90, 0.85, 0.81, 0.79, 0.88])
    b = a - np.array([0.05, 0.04, 0.06, 0.05, 0.03, 0.07, 0.05, 0.04])
    comparison = paired_difference(a, b, cases, resamples=2000)
    assert comparison.difference.mean == pytest.approx(0.04875)
    assert comparison.difference.low > 0
    assert comparison.p_value == pytest.approx(scipy_stats.wilcoxon(a - b).pvalue)
    same = paired_difference(a, a, cases, resamples=100)
    assert same.p_value == 1.0 and same.difference.low == same.difference.high == 0.0


def _constructed_scores():
    """best: 0.9; close: 0.9 +- 0.02 (tied with best); low_a, low_b: 0.6 +- 0.02 (tied with
    each other, both clearly below); worst: 0.2."""
    rng = np.random.default_rng(1)
    n = 30
    cases = [f"case{i}" for i in range(n)]
    noise = lambda: rng.choice([-0.02, 0.02], n)  # noqa: E731
    return cases, {"best": np.full(n, 0.9) + 0.001, "close": 0.9 + noise(),
                   "low_a": 0.6 + noise(), "low_b": 0.6 + noise(), "worst": np.full(n, 0.2)}


def test_ranks_with_ties_on_constructed_data():
    cases, scores = _constructed_scores()
    ranks = rank_with_ties(scores, cases, resamples=2000)
    assert ranks == {"best": "1=", "close": "1=", "low_a": "3=", "low_b": "3=", "worst": "5"}
    single = {"best": scores["best"], "low_a": scores["low_a"], "low_b": scores["low_b"]}
    assert rank_with_ties(single, cases, resamples=2000) == {"best": "1", "low_a": "2=",
                                                             "low_b": "2="}


def test_lower_is_better_ranks_the_other_way():
    cases = ["a", "b", "c", "d"]
    ranks = rank_with_ties({"small": [1.0, 1.1, 0.9, 1.0], "large": [5.0, 5.2, 4.9, 5.1]}, cases,
                           higher_is_better=False, resamples=1000)
    assert ranks == {"small": "1", "large": "2"}


def test_compare_with_best_adjusts_across_the_comparisons():
    cases, scores = _constructed_scores()
    best, comparisons = compare_with_best(scores, cases, resamples=1000)
    assert best == "best" and set(comparisons) == {"close", "low_a", "low_b", "worst"}
    raw = [c.p_value for c in comparisons.values()]
    assert [c.p_holm for c in comparisons.values()] == pytest.approx(holm(raw))
    assert comparisons["close"].difference.contains(0.0)
    assert comparisons["worst"].difference.high < 0


def test_aligned_scores_pair_on_common_finite_units():
    rows = [
        {"system": "a", "seed": 0, "fold": 0, "case": "x", "mdice": 0.5},
        {"system": "a", "seed": 0, "fold": 0, "case": "y", "mdice": 0.6},
        {"system": "a", "seed": 1, "fold": 0, "case": "x", "mdice": 0.7},
        {"system": "b", "seed": 0, "fold": 0, "case": "x", "mdice": 0.1},
        {"system": "b", "seed": 0, "fold": 0, "case": "y", "mdice": ""},
        {"system": "b", "seed": 1, "fold": 0, "case": "x", "mdice": 0.3},
    ]
    cases, scores = aligned_scores(rows, "mdice")
    assert cases == ["x", "x"]
    assert scores["a"].tolist() == [0.5, 0.7] and scores["b"].tolist() == [0.1, 0.3]
