"""The summary of a run folder: summary.csv and summary.md, regenerated with every derived file.

One summary row per (arch, variant, kernels, mode) within a comparison group, from the rows of
its repeats (seeds x folds) and their per-case scores (the `cases` table, cases.csv):

- Comparison groups: rows are compared only with rows that share every key field except the
  architecture (arch, variant) and the repeat (seed, split seed, fold): dataset, image size,
  device, profile, epochs, recipe, lr sweep, folds, kernels backend, mode, threads, training
  backend and pretrained weights. Each group has its own best, comparisons and ranks.
- The unit is the test case (a slab of a built-in volume, an image of folder:, a case of
  nnunet:, with all its slices), never a single slice.
- `<metric>_mean`: the mean over every (repeat, case) score of the system; `<metric>_sd`: the
  sample sd across its repeats of each repeat's mean over its cases (blank for one repeat);
  `<metric>_ci_low/high`: the 95% case bootstrap of the mean (`stats.case_bootstrap`: cases
  drawn with replacement, each with its scores from every repeat, so seeds and folds are
  pooled and a case counts as one unit however many repeats scored it).
- Paired comparisons (Dice): every system against the group's best, on the (seed, split seed,
  fold, case) units that every system of the group scored: the per-case Dice difference
  (system - best) with its bootstrap CI, the two-sided Wilcoxon signed-rank p over per-case
  mean differences, Holm-adjusted across the group's comparisons (`stats.compare_with_best`).
- Ranks (`stats.rank_with_ties` on the same units): "1", "2=", ... ; a system ranks below
  another only where the interval of their paired difference excludes 0.
- A comparison whose interval and Holm-adjusted p disagree (one says a difference, the other
  does not, at the 5% level) is flagged (`tests_disagree`): too few cases to be sure.
- Costs: the median, min and max across the repeats; params and GFLOPs: the median.
- Baseline: the pixel prior (the training split's most frequent class at each pixel) scored
  per case on the group's test splits, pooled and bootstrapped as the systems are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from segbench import results, stats

METRICS = ("mdice", "miou", "hd95_px", "nsd")
HIGHER_IS_BETTER = {"mdice": True, "miou": True, "hd95_px": False, "nsd": True}
COSTS = ("latency_ms", "latency_p95_ms", "throughput_img_s", "train_img_s", "peak_mem_mb",
         "train_peak_mem_mb", "train_time_s", "energy_j_per_img")
# the timed costs: a repeat whose timing was flagged unstable still counts, its cells are marked
TIMED_COSTS = ("latency_ms", "throughput_img_s", "train_img_s")
FACTS = ("params_m", "gflops")
SYSTEM = ("arch", "variant")
REPEAT = ("seed", "split_seed", "fold")
GROUP = tuple(f for f in results.KEY_FIELDS if f not in SYSTEM + REPEAT)
PAIRING_UNIT = ("seed", "split_seed", "fold", "case")
RANK_METRIC = "mdice"
ALPHA = 1 - stats.LEVEL
COMPARISON_COLUMNS = ("compared_with", "paired_cases", "paired_values", "mdice_diff_mean",
                      "mdice_diff_ci_low", "mdice_diff_ci_high", "p_wilcoxon", "p_holm",
                      "tests_disagree")
BASELINE_COLUMNS = ("baseline_mdice_mean", "baseline_mdice_ci_low", "baseline_mdice_ci_high",
                    "baseline_splits")
COLUMNS = ("arch", "variant", "kernels", "mode", "n",
           *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd", "ci_low", "ci_high")),
           "n_cases", "rank", *COMPARISON_COLUMNS, *FACTS,
           *(f"{c}_{s}" for c in COSTS for s in ("median", "min", "max")),
           "n_failed", "n_not_converged", "n_timing_unstable", "seeds", *BASELINE_COLUMNS,
           *(f for f in GROUP if f not in ("kernels", "mode")))

Entry = tuple[dict, dict]  # a journal row and its tables


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(values: Iterable) -> list[float]:
    return [v for v in map(_number, values) if math.isfinite(v)]


def group_key(row: dict) -> tuple[str, ...]:
    return tuple(str(row.get(f, "")) for f in GROUP)


def _by_group_and_variant(entries: Sequence[Entry]) -> dict[tuple, dict[str, list[Entry]]]:
    groups: dict[tuple, dict[str, list[Entry]]] = {}
    for row, tables in entries:
        groups.setdefault(group_key(row), {}).setdefault(row["variant"], []).append((row, tables))
    return groups


def _scored(entries: Sequence[Entry]) -> list[Entry]:
    """The finished repeats that carry per-case scores."""
    return [(row, tables) for row, tables in entries
            if row.get("status") == "ok" and tables.get("cases")]


def metric_columns(scored: Sequence[Entry], metric: str) -> dict:
    """Mean, sd across repeats and case-bootstrap CI of one metric, pooled over repeats."""
    values, cases, repeat_means = [], [], []
    for _, tables in scored:
        scores = [(case["case"], _number(case.get(metric))) for case in tables["cases"]]
        values += [v for _, v in scores]
        cases += [c for c, _ in scores]
        finite = [v for _, v in scores if math.isfinite(v)]
        if finite:
            repeat_means.append(float(np.mean(finite)))
    interval = stats.case_bootstrap(values, cases)
    sd = float(np.std(repeat_means, ddof=1)) if len(repeat_means) > 1 else math.nan
    return {f"{metric}_mean": interval.mean, f"{metric}_sd": sd,
            f"{metric}_ci_low": interval.low, f"{metric}_ci_high": interval.high,
            "n_cases": interval.n_cases}


def cost_columns(rows: Sequence[dict]) -> dict:
    columns = {fact: _median(row.get(fact) for row in rows) for fact in FACTS}
    for cost in COSTS:
        values = _finite(row.get(cost) for row in rows)
        columns.update({f"{cost}_median": _median(values),
                        f"{cost}_min": min(values, default=math.nan),
                        f"{cost}_max": max(values, default=math.nan)})
    return columns


def _median(values: Iterable) -> float:
    finite = _finite(values)
    return float(np.median(finite)) if finite else math.nan


def _case_rows(scored_by_variant: dict[str, list[Entry]]) -> list[dict]:
    return [{"system": variant, **{k: row[k] for k in REPEAT}, **case}
            for variant, scored in scored_by_variant.items()
            for row, tables in scored for case in tables["cases"]]


def comparison_columns(scored_by_variant: dict[str, list[Entry]]) -> dict[str, dict]:
    """Per variant: its rank and its paired comparison with the best, on the units every
    variant scored; {} when the variants share no unit (nothing can be compared)."""
    present = {v: s for v, s in scored_by_variant.items() if s}
    cases, scores = stats.aligned_scores(_case_rows(present), RANK_METRIC, unit=PAIRING_UNIT)
    if not cases:
        return {}
    ranks = stats.rank_with_ties(scores, cases)
    best, comparisons = stats.compare_with_best(scores, cases)
    columns = {}
    for variant, rank in ranks.items():
        columns[variant] = {"rank": rank, "compared_with": best,
                            "paired_cases": len(set(cases)), "paired_values": len(cases)}
        if variant in comparisons:
            c = comparisons[variant]
            differs_by_ci = not c.difference.contains(0.0)
            columns[variant].update(
                mdice_diff_mean=c.difference.mean, mdice_diff_ci_low=c.difference.low,
                mdice_diff_ci_high=c.difference.high, p_wilcoxon=c.p_value, p_holm=c.p_holm,
                tests_disagree=differs_by_ci != (c.p_holm < ALPHA))
    return columns


def baseline_columns(entries: Iterable[Entry]) -> dict:
    """The pixel prior's per-case Dice on the group's distinct test splits, pooled."""
    splits: dict[tuple, list[dict]] = {}
    for row, tables in entries:
        if tables.get("baseline_cases"):
            splits.setdefault((str(row["split_seed"]), str(row["fold"])),
                              tables["baseline_cases"])
    values = [_number(case.get("mdice")) for split in splits.values() for case in split]
    cases = [case["case"] for split in splits.values() for case in split]
    interval = stats.case_bootstrap(values, cases)
    return {"baseline_mdice_mean": interval.mean, "baseline_mdice_ci_low": interval.low,
            "baseline_mdice_ci_high": interval.high, "baseline_splits": len(splits)}


def _rank_order(row: dict) -> tuple:
    """Ranked rows first, by rank; then by mean Dice, best first; then by name."""
    rank, mean = str(row.get("rank") or ""), _number(row.get("mdice_mean"))
    return (int(rank.rstrip("=")) if rank else math.inf,
            -mean if math.isfinite(mean) else math.inf, row["variant"])


def summarize(entries: Sequence[Entry]) -> list[dict]:
    """The summary rows of a folder's latest entries, group by group (in the order the
    groups first appear), best rank first."""
    summary = []
    for variants in _by_group_and_variant(entries).values():
        scored = {variant: _scored(group) for variant, group in variants.items()}
        compared = comparison_columns(scored)
        baseline = baseline_columns(e for group in variants.values() for e in group)
        rows = []
        for variant, group in variants.items():
            first = group[0][0]
            ok_rows = [row for row, _ in scored[variant]]
            row = {**{f: first.get(f, "") for f in (*SYSTEM, *GROUP)}, "n": len(ok_rows)}
            for metric in METRICS:
                row.update(metric_columns(scored[variant], metric))
            row.update(compared.get(variant, {}))
            row.update(cost_columns(ok_rows))
            row.update(n_failed=sum(r.get("status") != "ok" for r, _ in group),
                       n_not_converged=sum(map(results.is_not_converged, ok_rows)),
                       n_timing_unstable=sum(map(results.is_timing_unstable, ok_rows)),
                       seeds=",".join(dict.fromkeys(str(r["seed"]) for r in ok_rows)),
                       **baseline)
            rows.append(row)
        summary += sorted(rows, key=_rank_order)
    return summary


P_COLUMNS = ("p_wilcoxon", "p_holm")


def csv_text(summary: list[dict]) -> str:
    """summary.csv; p-values to 3 significant digits (a fixed number of decimals would
    write a small p as 0)."""
    rows = [{**row, **{p: f"{row[p]:.3g}" for p in P_COLUMNS if row.get(p) is not None}}
            for row in summary]
    return results.csv_text(rows, list(COLUMNS))


# --- summary.md ----------------------------------------------------------------------------

DISAGREE_MARK = "§"


def _estimate(row: dict, metric: str) -> str:
    """'0.812 ± 0.010 [0.790, 0.830]' (sd '–' for one repeat)."""
    digits = 2 if metric == "hd95_px" else 3
    mean, sd, low, high = (_number(row.get(f"{metric}_{s}"))
                           for s in ("mean", "sd", "ci_low", "ci_high"))
    if not math.isfinite(mean):
        return "–"
    spread = f"{sd:.{digits}f}" if math.isfinite(sd) else "–"
    return f"{mean:.{digits}f} ± {spread} [{low:.{digits}f}, {high:.{digits}f}]"


def _difference(row: dict) -> str:
    mean = _number(row.get("mdice_diff_mean"))
    if not math.isfinite(mean):
        return "best" if row.get("rank") else "–"
    low, high = _number(row["mdice_diff_ci_low"]), _number(row["mdice_diff_ci_high"])
    mark = f" {DISAGREE_MARK}" if row.get("tests_disagree") else ""
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def _p_value(row: dict) -> str:
    p = _number(row.get("p_holm"))
    return f"{p:.2g}" if math.isfinite(p) else "–"


def _cost(row: dict, cost: str) -> str:
    """'12.3 (11.9–13.0)': median (min–max) across the repeats; marked †k when k of them had
    their timing flagged unstable."""
    median, low, high = (_number(row.get(f"{cost}_{s}")) for s in ("median", "min", "max"))
    if not math.isfinite(median):
        return "–"
    text = results.cell(median) if low == high else \
        f"{results.cell(median)} ({results.cell(low)}–{results.cell(high)})"
    unstable = int(row.get("n_timing_unstable") or 0)
    return f"{text} {results.UNSTABLE_MARK}{unstable}" if cost in TIMED_COSTS and unstable \
        else text


def _variant_cell(row: dict) -> str:
    n_not = int(row.get("n_not_converged") or 0)
    return f"{row['variant']} {results.NOT_CONVERGED_MARK}{n_not}" if n_not else row["variant"]


TABLE = [
    ("rank", "rank", lambda r: r.get("rank") or "–"),
    ("variant", "variant", _variant_cell),
    ("n", "n", lambda r: str(r["n"]) + (f" (+{r['n_failed']} failed)" if r["n_failed"] else "")),
    ("cases", "cases", lambda r: results.cell(r.get("n_cases"))),
    *[(m, title, lambda r, m=m: _estimate(r, m)) for m, title in
      (("mdice", "mDice"), ("miou", "mIoU"), ("hd95_px", "HD95 px"), ("nsd", "NSD"))],
    ("diff", "Δ mDice vs best [95% CI]", _difference),
    ("p", "p Holm", _p_value),
    ("params", "params (M)", lambda r: results.cell(r.get("params_m"))),
    ("gflops", "GFLOPs", lambda r: results.cell(r.get("gflops"))),
    *[(c, title, lambda r, c=c: _cost(r, c)) for c, title in
      (("latency_ms", "latency ms"), ("throughput_img_s", "img/s"),
       ("train_img_s", "train img/s"), ("peak_mem_mb", "infer MB"),
       ("train_peak_mem_mb", "train MB"),
       ("train_time_s", "train s"))],
]


def _table(rows: list[dict]) -> list[str]:
    head = "| " + " | ".join(title for _, title, _ in TABLE) + " |"
    rule = "|" + "|".join("---" for _ in TABLE) + "|"
    body = ["| " + " | ".join(cell(row).replace("|", "/") for _, _, cell in TABLE) + " |"
            for row in rows]
    return [head, rule, *body]


# each group field in words, in the order of the table's heading
GROUP_WORDS = {"dataset": "{}", "image_size": "{} px", "device": "{}", "profile": "profile {}",
               "epochs": "epochs {}", "recipe": "recipe {}", "lr_sweep": "lr sweep {} x lr",
               "folds": "folds {}", "kernels": "kernels {}", "mode": "mode {}",
               "threads": "threads {}", "train_kernels": "trained with {}",
               "pretrained": "pretrained {}"}


def _group_heading(row: dict) -> str:
    """'## phantom, 32 px, cpu, profile smoke, 1 epochs, recipe family, ...': the fields
    every row of the table shares."""
    parts = [words.format(row[f]) for f, words in GROUP_WORDS.items()
             if str(row.get(f, "")) != ""]
    return "## " + ", ".join(parts)


def _baseline_line(row: dict) -> str:
    mean = _number(row.get("baseline_mdice_mean"))
    if not math.isfinite(mean):
        return ""
    low, high = _number(row["baseline_mdice_ci_low"]), _number(row["baseline_mdice_ci_high"])
    return (f"Baseline: predicting the training split's most frequent class at each pixel "
            f"scores mDice {mean:.3f} [{low:.3f}, {high:.3f}] on these test splits (per-case "
            f"mean over {row['baseline_splits']} split(s), pooled and bootstrapped as above).")


def _notes(rows: list[dict]) -> list[str]:
    notes = []
    if any(int(r.get("n_not_converged") or 0) for r in rows):
        notes.append(f"{results.NOT_CONVERGED_MARK}k: k of the n repeats had not converged "
                     f"({results.NOT_CONVERGED_RULE}): more epochs could change the score.")
    if any(int(r.get("n_timing_unstable") or 0) for r in rows):
        notes.append(f"{results.UNSTABLE_MARK}k: k of the n repeats had their timing flagged "
                     "unstable (results.md lists why); they still count in the median and "
                     "range; re-time with `segbench measure`.")
    if any(r.get("tests_disagree") for r in rows):
        notes.append(f"{DISAGREE_MARK}: the interval and the Holm-adjusted Wilcoxon p disagree "
                     f"at the {ALPHA:.0%} level: too few cases to call this difference.")
    if not any(r.get("rank") for r in rows) and sum(r["n"] > 0 for r in rows) > 1:
        notes.append("No ranks: the architectures share no (seed, split seed, fold, case) "
                     "that every one of them scored, so nothing can be compared.")
    return notes


def how_to_read() -> list[str]:
    return [
        "How to read this table:",
        "- n: repeats (seed x fold) with a finished row; cases: distinct test cases pooled "
        "(a case is a slab of a built-in volume, an image, an nnU-Net case: all its slices).",
        "- metric: mean over every (repeat, case) score ± sd across the n repeats (of each "
        f"repeat's mean over its cases) [{stats.LEVEL:.0%} CI: case bootstrap, "
        f"{stats.RESAMPLES} resamples, each case drawn with its scores from every repeat]. "
        "Per-case scores; results.csv's mdice pools each whole test split instead.",
        "- Δ mDice vs best: paired per-case Dice difference (this - best) on the (seed, split "
        "seed, fold, case) units that every architecture of the table scored, with its "
        "bootstrap CI; p Holm: two-sided Wilcoxon signed-rank over the per-case differences, "
        "Holm-adjusted across the table's comparisons.",
        "- rank: order by mean paired Dice, best first; the best and every architecture whose "
        "interval against it contains 0 share rank 1 (\"1=\"); the next unranked one starts "
        "the next group the same way, ranked 1 + the architectures above it. A rank is lower "
        "only where the paired interval excludes 0; otherwise it is a tie.",
        "- Only rows of one table are compared: same dataset, image size, device, profile, "
        "recipe, mode, kernels, threads (the heading); never across tables.",
        "- costs: median (min–max) across the repeats.",
        "",
    ]


def markdown_text(title: str, summary: list[dict], manifest: dict, rows: list[dict]) -> str:
    lines = [f"# segbench summary: {title}", "", *results.method_lines(manifest, rows), "",
             *how_to_read()]
    groups: dict[tuple, list[dict]] = {}
    for row in summary:
        groups.setdefault(group_key(row), []).append(row)
    for group in groups.values():
        lines += [_group_heading(group[0]), "", *_table(group), ""]
        baseline = _baseline_line(group[0])
        lines += [baseline, ""] if baseline else []
        notes = _notes(group)
        lines += [*notes, ""] if notes else []
    if not groups:
        lines += ["No rows yet.", ""]
    return "\n".join(lines)
