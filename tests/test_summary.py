"""summary.csv and summary.md from hand-made journals with known answers: the pooled mean, sd
and case-bootstrap CI, the paired difference with its Wilcoxon p and Holm's adjustment, ranks
with ties, comparison groups that are never mixed, and the files a run folder publishes."""

import csv
import io
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from test_results import SHARED, START, STUDY

from segbench import results, store, summary

CASES = [f"c{i}" for i in range(10)]


def entry(variant, cases, seed=0, fold=0, status="ok", converged=True, **row):
    """A journal entry: a finished row of `variant` and its per-case scores {case: mdice}."""
    record = results.Record(arch=variant.split("-")[0], variant=variant, kernels="torch",
                            dataset="phantom", image_size=32, device="cpu", profile="smoke",
                            seed=seed, split_seed=7, fold=fold, mode="eager-fp32", threads=2,
                            status=status, converged=converged, params_m=1.0, gflops=0.5,
                            latency_ms=10.0 + seed, train_time_s=3.0,
                            pixel_prior_baseline_mdice=0.3 + 0.01 * seed,
                            majority_baseline_mdice=0.0)
    record.update(row)
    tables = {"cases": [{"case": c, "slices": 4, "mdice": v, "miou": v / 2, "hd95_px": 1 - v,
                         "nsd": v} for c, v in cases.items()],
              "baseline_cases": [{"case": c, "mdice": 0.25} for c in cases]}
    return store.json_safe(record.to_row()), store.json_safe(tables) if status == "ok" else {}


def by_variant(rows):
    return {row["variant"]: row for row in rows}


def test_pooled_mean_sd_and_interval_have_their_known_values():
    # case a: 0 in three repeats, case b: 1 in one. Resampling whole cases gives aa -> 0,
    # ab -> 1/4, bb -> 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1].
    # Repeat means 0.5, 0, 0: sd sqrt(1/12).
    entries = [entry("unet-small", {"a": 0.0, "b": 1.0}, seed=0),
               entry("unet-small", {"a": 0.0}, seed=1), entry("unet-small", {"a": 0.0}, seed=2)]
    (row,) = summary.summarize(entries)
    assert (row["n"], row["n_cases"], row["seeds"]) == (3, 2, "0,1,2")
    assert row["mdice_mean"] == 0.25 and row["mdice_sd"] == pytest.approx(math.sqrt(1 / 12))
    assert (row["mdice_ci_low"], row["mdice_ci_high"]) == (0.0, 1.0)
    assert row["hd95_px_mean"] == 0.75 and row["miou_mean"] == 0.125
    assert row["rank"] == "1" and "mdice_diff_mean" not in row  # the best has no difference
    assert (row["latency_ms_median"], row["latency_ms_min"], row["latency_ms_max"]) == \
        (11.0, 10.0, 12.0)


SCORES = {"best-a": np.full(10, 0.9), "close-b": 0.899 + 0.02 * np.array([1, -1] * 5),
          "low-c": np.full(10, 0.5)}


def constructed_group():
    """best: 0.9 everywhere; close: 0.899 +- 0.02 (tied with best); low: 0.5 (clearly
    below); two repeats (seed 0 and 1) on the same ten cases."""
    return [entry(variant, dict(zip(CASES, values, strict=True)), seed=seed)
            for seed in (0, 1) for variant, values in SCORES.items()]


def test_paired_difference_wilcoxon_holm_and_ranks():
    rows = by_variant(summary.summarize(constructed_group()))
    assert [rows[v]["rank"] for v in ("best-a", "close-b", "low-c")] == ["1=", "1=", "3"]
    low, close = rows["low-c"], rows["close-b"]
    assert low["compared_with"] == "best-a" and low["paired_cases"] == 10
    assert low["paired_values"] == 20
    assert low["mdice_diff_mean"] == pytest.approx(-0.4)
    assert low["mdice_diff_ci_low"] == pytest.approx(-0.4)
    assert low["mdice_diff_ci_high"] == pytest.approx(-0.4)
    assert close["mdice_diff_ci_low"] < 0 < close["mdice_diff_ci_high"]
    p_low = scipy_stats.wilcoxon(SCORES["low-c"] - SCORES["best-a"]).pvalue
    p_close = scipy_stats.wilcoxon(SCORES["close-b"] - SCORES["best-a"]).pvalue
    assert low["p_wilcoxon"] == pytest.approx(p_low)
    assert close["p_wilcoxon"] == pytest.approx(p_close)
    assert p_low < p_close  # Holm: the smaller p times 2, the larger at least that
    assert low["p_holm"] == pytest.approx(min(1.0, 2 * p_low))
    assert close["p_holm"] == pytest.approx(min(1.0, max(2 * p_low, p_close)))
    assert low["tests_disagree"] is False and close["tests_disagree"] is False
    assert [row["variant"] for row in summary.summarize(constructed_group())] == \
        ["best-a", "close-b", "low-c"]  # best rank first


def test_an_interval_without_support_from_the_p_value_is_flagged():
    # 5 cases, each 0.10 to 0.14 below the best: the interval excludes 0, but a Wilcoxon
    # test on 5 cases cannot go below p = 2 / 2^5 = 0.0625
    entries = [entry("best-a", dict.fromkeys(CASES[:5], 0.9)),
               entry("low-b", dict(zip(CASES[:5], [0.8, 0.79, 0.78, 0.77, 0.76], strict=True)))]
    low = by_variant(summary.summarize(entries))["low-b"]
    assert low["rank"] == "2" and low["mdice_diff_ci_high"] < 0
    assert low["p_holm"] == pytest.approx(0.0625) and low["tests_disagree"] is True


def test_pairs_only_units_every_architecture_scored():
    entries = constructed_group() + [entry("best-a", dict.fromkeys(CASES, 0.0), seed=2)]
    rows = by_variant(summary.summarize(entries))
    assert rows["best-a"]["n"] == 3 and rows["low-c"]["paired_values"] == 20  # seed 2 unpaired
    assert rows["best-a"]["mdice_mean"] == pytest.approx(0.6)  # its own mean: every repeat


def test_groups_are_never_compared_with_each_other():
    entries = constructed_group() + [entry("low-c", dict.fromkeys(CASES, 0.95), threads=1),
                                     entry("low-c", dict.fromkeys(CASES, 0.95), mode="eager-bf16")]
    rows = summary.summarize(entries)
    assert len(rows) == 5
    alone = [r for r in rows if r["threads"] == 1 or r["mode"] == "eager-bf16"]
    assert [(r["rank"], r.get("compared_with")) for r in alone] == [("1", "low-c")] * 2
    assert by_variant(rows[:3])["low-c"]["rank"] == "3"


def test_failed_and_not_converged_repeats_are_counted_not_scored():
    entries = constructed_group()
    entries[2] = entry("low-c", {}, seed=0, status="error")
    entries[3] = entry("best-a", dict.fromkeys(CASES, 0.9), seed=1, converged=False)
    entries += [entry("fcn-small", {}, status="oom")]
    rows = by_variant(summary.summarize(entries))
    assert (rows["low-c"]["n"], rows["low-c"]["n_failed"]) == (1, 1)
    assert rows["best-a"]["n_not_converged"] == 1
    fcn = rows["fcn-small"]
    assert (fcn["n"], fcn["n_failed"], fcn.get("rank")) == (0, 1, None)
    assert math.isnan(fcn["mdice_mean"])
    assert rows["low-c"]["paired_values"] == 10  # seed 1 only: low-c failed in seed 0


def test_without_a_shared_unit_nothing_is_ranked():
    entries = [entry("best-a", {"x": 0.9}, seed=0), entry("low-b", {"x": 0.5}, seed=1)]
    rows = summary.summarize(entries)
    assert [r.get("rank") for r in rows] == [None, None]
    text = summary.markdown_text("t", rows, store.json_safe({**SHARED, "starts": [START]}), [])
    assert "No ranks: the architectures share no (seed, split seed, fold, case)" in text


def test_baseline_is_pooled_over_distinct_splits():
    rows = summary.summarize(constructed_group())
    assert rows[0]["baseline_mdice_mean"] == 0.25 and rows[0]["baseline_splits"] == 1


def test_summary_csv_keeps_the_contract_and_small_p_values():
    text = summary.csv_text(summary.summarize(constructed_group()))
    header = text.splitlines()[0].split(",")
    metrics = [f"{m}_{s}" for m in ("mdice", "miou", "hd95_px", "nsd")
               for s in ("mean", "sd", "ci_low", "ci_high")]
    assert header[:5 + len(metrics)] == ["arch", "variant", "kernels", "mode", "n", *metrics]
    costs = [c for c in header if c.endswith(("_median", "_min", "_max"))]
    assert costs == [f"{c}_{s}" for c in summary.COSTS for s in ("median", "min", "max")]
    assert {"rank", "params_m", "gflops", "dataset", "threads", "recipe"} <= set(header)
    low = {r["variant"]: r for r in csv.DictReader(io.StringIO(text))}["low-c"]
    assert float(low["p_wilcoxon"]) > 0  # not rounded to 0


def test_every_group_field_has_words_in_the_heading():
    assert set(summary.GROUP_WORDS) == set(summary.GROUP)


@pytest.fixture
def folder(tmp_path):
    with store.open_run_folder(tmp_path / "run", STUDY) as run_folder:
        run_folder.begin(SHARED, START)
        yield run_folder


def append(folder, row, tables):
    record = results.Record(**{k: row[k] for k in results.KEY_FIELDS})
    record.update({k: v for k, v in row.items() if k not in results.KEY_FIELDS})
    record.tables = tables
    folder.append(record)


def test_publish_writes_the_summary_and_marks_what_did_not_converge(folder):
    for row, tables in constructed_group()[:3]:
        append(folder, row, tables)
    append(folder, *entry("best-a", dict.fromkeys(CASES, 0.9), seed=1, converged=False))
    rows = list(csv.DictReader((folder.path / "summary.csv").open()))
    assert [(r["variant"], r["n"], r["rank"]) for r in rows] == \
        [("best-a", "2", "1="), ("close-b", "1", "1="), ("low-c", "1", "3")]
    text = (folder.path / "summary.md").read_text()
    assert "| 1= | best-a ‡1 | 2 | 10 | 0.900 ± 0.000 [0.900, 0.900] |" in text
    assert "| 3 | low-c | 1 | 10 | 0.500 ± – [0.500, 0.500] |" in text
    assert "‡k: k of the n repeats had not converged" in text
    assert "interval against it contains 0 share rank 1" in text  # the rule, in words
    assert "## phantom, 32 px, cpu, profile smoke, epochs 0, recipe family" in text
    assert "scores mDice 0.250 [0.250, 0.250] on these test splits" in text
    results_md = (folder.path / "results.md").read_text()
    assert "‡ not converged: best val epoch in the last 20% of the epochs" in results_md
    assert ("predicting the training split's most frequent class at each pixel scores mDice "
            "0.300 to 0.310 across the test splits.") in results_md
    assert "most frequent class everywhere): mDice 0.000 on this test split." in results_md
    assert (folder.path / "cases.csv").read_text().count("\n") == 1 + 4 * 10


def test_summary_files_are_regenerated_on_start(tmp_path):
    with store.open_run_folder(tmp_path, STUDY) as run_folder:
        run_folder.begin(SHARED, START)
        append(run_folder, *constructed_group()[0])
    before = (tmp_path / "summary.csv").read_text()
    (tmp_path / "summary.csv").unlink()
    (tmp_path / "summary.md").write_text("")
    with store.open_run_folder(tmp_path, STUDY):
        pass
    assert (tmp_path / "summary.csv").read_text() == before
    assert "best-a" in (tmp_path / "summary.md").read_text()


def test_unstable_timing_counts_in_the_costs_and_marks_their_cells():
    entries = [entry("unet-small", dict.fromkeys(CASES, 0.9), seed=0, train_img_s=40.0),
               entry("unet-small", dict.fromkeys(CASES, 0.9), seed=1, train_img_s=60.0,
                     timing_unstable=True, timing_reason="latency: rounds differ by 30%")]
    (row,) = summary.summarize(entries)
    assert row["n_timing_unstable"] == 1
    assert (row["latency_ms_median"], row["latency_ms_min"], row["latency_ms_max"]) == \
        (10.5, 10.0, 11.0)  # the unstable repeat still counts
    assert (row["train_img_s_median"], row["train_img_s_max"]) == (50.0, 60.0)
    text = summary.markdown_text("t", [row], store.json_safe({**SHARED, "starts": [START]}), [])
    line = next(line for line in text.splitlines() if "| unet-small |" in line)
    assert "10.5 (10–11) †1" in line and "50 (40–60) †1" in line
    assert line.endswith("| 3 |")  # train s: an untimed cost is never marked
    assert "†k: k of the n repeats had their timing flagged unstable" in text
