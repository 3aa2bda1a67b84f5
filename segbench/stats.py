"""Intervals, paired comparisons and ranks over test cases, for repeated runs (seeds x folds).

The unit of resampling is the test case (a slab of a built-in volume, an image, an nnU-Net
case: `Split.groups`), because slices of one case are not independent. Scores come as aligned
arrays: `values[i]` is the score of case `cases[i]` in one repeat (one seed and fold); a case
may appear in several repeats, and all its values travel together when it is drawn.

- `case_bootstrap`: the pooled mean over every (case, repeat) value and its percentile
  bootstrap interval: each resample draws as many cases as there are, with replacement, and
  takes the mean over all values of the drawn cases (a cluster bootstrap). Seeded.
- `paired_difference`: the same for the per-(case, repeat) difference a - b of two systems
  scored on the same test cases, with a two-sided Wilcoxon signed-rank p-value over the
  per-case mean differences (scipy; zero differences dropped, p = 1 when all are zero).
- `holm`: Holm's step-down adjustment of p-values for several comparisons.
- `compare_with_best` and `rank_with_ties`: every system against the best, and ranks that tie
  what the intervals cannot tell apart (the rule is in `rank_with_ties`).
NaN values (a case with no defined score) are left out of every computation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

RESAMPLES = 10_000
LEVEL = 0.95
CHUNK = 1_000  # resamples drawn at once, to bound memory on datasets with many cases


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n_cases: int
    n_values: int
    level: float = LEVEL

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Comparison:
    difference: Interval  # of a - b, pooled over cases and repeats
    p_value: float  # Wilcoxon signed-rank, two-sided, over per-case mean differences
    p_holm: float | None = None  # adjusted across the comparisons made together


def _case_sums(values: Sequence[float], cases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per case (in first-seen order): the sum and the count of its finite values."""
    values = np.asarray(values, dtype=np.float64)
    cases = np.asarray(cases, dtype=object)
    if values.shape != cases.shape or values.ndim != 1:
        raise ValueError(f"values and cases must be two 1-D sequences of one length, got "
                         f"shapes {values.shape} and {cases.shape}")
    finite = np.isfinite(values)
    values, cases = values[finite], cases[finite]
    names, first, index = np.unique(cases.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first)  # first-seen order keeps resamples independent of case names
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    sums = np.bincount(rank[index], weights=values, minlength=len(names))
    counts = np.bincount(rank[index], minlength=len(names)).astype(np.float64)
    return sums, counts


def case_bootstrap(values: Sequence[float], cases: Sequence[str], *, resamples: int = RESAMPLES,
                   seed: int = 0, level: float = LEVEL) -> Interval:
    """Pooled mean of `values` and its percentile case-bootstrap interval (see the module)."""
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    sums, counts = _case_sums(values, cases)
    n = len(sums)
    if n == 0:
        return Interval(np.nan, np.nan, np.nan, 0, 0, level)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, CHUNK):
        drawn = rng.integers(0, n, size=(min(CHUNK, resamples - start), n))
        means.append(sums[drawn].sum(1) / counts[drawn].sum(1))
    means = np.concatenate(means)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(sums.sum() / counts.sum()), float(low), float(high), n,
                    int(counts.sum()), level)


def paired_difference(a: Sequence[float], b: Sequence[float], cases: Sequence[str], *,
                      resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> Comparison:
    """a - b on the same (case, repeat) rows: its case-bootstrap interval and the Wilcoxon
    signed-rank p-value of the per-case mean differences."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have one shape, got {a.shape} and {b.shape}")
    difference = a - b
    interval = case_bootstrap(difference, cases, resamples=resamples, seed=seed, level=level)
    sums, counts = _case_sums(difference, cases)
    per_case = sums / np.maximum(counts, 1)
    if not np.any(per_case != 0):
        p_value = 1.0
    else:
        p_value = float(scipy_stats.wilcoxon(per_case, zero_method="wilcox").pvalue)
    return Comparison(interval, p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: sort ascending, multiply the i-th smallest
    (i from 0) by m - i, carry the running maximum forward, cap at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def _by_mean(scores: Mapping[str, np.ndarray], higher_is_better: bool) -> list[str]:
    means = {name: float(np.nanmean(v)) if np.isfinite(v).any() else -np.inf
             for name, v in scores.items()}
    sign = 1 if higher_is_better else -1
    return sorted(scores, key=lambda name: (-sign * means[name], name))


def compare_with_best(scores: Mapping[str, Sequence[float]], cases: Sequence[str], *,
                      higher_is_better: bool = True, resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> tuple[str, dict[str, Comparison]]:
    """The best system (highest mean, or lowest with higher_is_better=False; ties by name)
    and, for every other one, its paired difference (other - best) with Holm-adjusted
    p-values across these comparisons. All arrays are aligned to `cases`."""
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    best, *others = _by_mean(arrays, higher_is_better)
    comparisons = {name: paired_difference(arrays[name], arrays[best], cases,
                                           resamples=resamples, seed=seed, level=level)
                   for name in others}
    adjusted = holm([c.p_value for c in comparisons.values()])
    return best, {name: Comparison(c.difference, c.p_value, p)
                  for (name, c), p in zip(comparisons.items(), adjusted, strict=True)}


def rank_with_ties(scores: Mapping[str, Sequence[float]], cases: Sequence[str], *,
                   higher_is_better: bool = True, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> dict[str, str]:
    """Ranks such as "1", "2=", "2=", "4", from paired intervals on the same test cases.

    Rule: order the systems by mean score, best first (ties in the mean by name). The first
    unranked system in that order is the reference of a new group; every other unranked
    system joins that group when the interval of its paired difference to the reference
    contains 0. The group's members share rank 1 + (systems in earlier groups), written with
    "=" when the group has more than one member. Repeat until every system is ranked. So the
    first group is the best and everything the intervals cannot tell apart from it; a system
    outside it is ranked below only because its interval against a better one excludes 0.
    """
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    unranked = _by_mean(arrays, higher_is_better)
    ranks: dict[str, str] = {}
    while unranked:
        reference, *rest = unranked
        group = [reference] + [
            name for name in rest
            if paired_difference(arrays[name], arrays[reference], cases, resamples=resamples,
                                 seed=seed, level=level).difference.contains(0.0)]
        label = str(len(ranks) + 1) + ("=" if len(group) > 1 else "")
        ranks.update({name: label for name in group})
        unranked = [name for name in unranked if name not in group]
    return ranks


def aligned_scores(rows: Iterable[Mapping], metric: str, system: str = "system",
                   unit: tuple[str, ...] = ("seed", "fold", "case"),
                   ) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per-case rows ({system, seed, fold, case, metric, ...}) -> (case of each aligned row,
    {system: its scores}), keeping only the (seed, fold, case) units that every system scored
    with a finite value, so that every comparison is paired on the same cases."""
    table: dict[str, dict[tuple, float]] = {}
    for row in rows:
        value = float(row[metric]) if row[metric] not in (None, "") else np.nan
        table.setdefault(str(row[system]), {})[tuple(str(row[k]) for k in unit)] = value
    if not table:
        return [], {}
    common = set.intersection(*({u for u, v in t.items() if np.isfinite(v)}
                                for t in table.values()))
    units = sorted(common)
    return ([u[-1] for u in units],
            {name: np.array([t[u] for u in units]) for name, t in table.items()})
