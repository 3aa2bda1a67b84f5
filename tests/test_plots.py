"""Figures: `run` leaves them in its folder, labels never overlap, the log axis has clean
ticks, flagged rows cannot squeeze the axes, and intervals and curves come from summary.csv
and history.csv."""

import csv
import itertools
from pathlib import Path

import pytest
from PIL import Image

from segbench import cli, plots

COMMITTED_CPU_RUN = (Path(__file__).resolve().parents[1] / "results"
                     / "2026-11-24_epyc-2core_cpu-profile")
RED = (214, 39, 40)  # tab:red, the Pareto front


def png_size(fig) -> tuple[int, int]:
    width, height = fig.get_size_inches()
    return round(width * plots.DPI), round(height * plots.DPI)


def overlapping_pairs(boxes) -> list:
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def drawn(fig):
    fig.canvas.draw()
    return fig


def labels_per_axes(fig) -> list[list]:
    return [plots.label_boxes(ax) for ax in fig.axes]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "folder"
    code = cli.main(["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu",
                     "--arch", "fcn,unet", "--seeds", "0,1", "--epochs", "2", "--out", str(out)])
    assert code == 0
    return out


def test_run_leaves_its_plots(smoke_run, capsys):
    code = cli.main(["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu",
                     "--arch", "fcn,unet", "--seeds", "0,1", "--epochs", "2",
                     "--out", str(smoke_run)])  # resumes: nothing to train, plots again
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    cost_png, curves_png = smoke_run / "accuracy_vs_cost.png", smoke_run / "training_curves.png"
    assert last.startswith(f"segbench: results in {smoke_run}/results.md, summary in "
                           f"{smoke_run}/summary.md; plots: ")
    assert str(cost_png) in last and str(curves_png) in last
    run = plots.read_run(smoke_run)
    expected = png_size(plots.accuracy_cost_figure([run], list(plots.COSTS)))
    with Image.open(cost_png) as image:
        assert image.size == expected and expected[0] == 2 * 6.4 * plots.DPI
        pixels = image.convert("RGB").getdata()
        assert sum(p == RED for p in pixels) > 50  # the front's points were drawn
    with Image.open(curves_png) as image:
        assert image.size == png_size(plots.curves_figure([run]))
    assert (smoke_run / "accuracy_vs_cost.svg").read_text().startswith("<?xml")


def test_curves_have_a_line_per_training(smoke_run):
    fig = plots.curves_figure([plots.read_run(smoke_run)])
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_ylabel() == "train loss"]
    assert sorted(ax.get_title() for ax in panels) == ["fcn", "unet"]
    for ax in panels:
        assert len(ax.lines) == 2  # seeds 0 and 1
        assert [len(line.get_xdata()) for line in ax.lines] == [2, 2]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1"]


@pytest.mark.parametrize("costs", [list(plots.COSTS), *([c] for c in plots.COSTS)])
def test_no_two_labels_overlap_on_the_committed_cpu_run(costs):
    fig = drawn(plots.accuracy_cost_figure([plots.read_run(COMMITTED_CPU_RUN)], costs))
    panels = labels_per_axes(fig)
    assert sum(map(len, panels)) == 11 * len(costs)
    renderer = fig.canvas.get_renderer()
    for ax, boxes in zip(fig.axes, panels, strict=True):
        assert overlapping_pairs(boxes) == []
        frame = ax.get_window_extent(renderer)
        assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)


def test_crowded_labels_are_spread_apart():
    rows = [row(f"m{i}-small", latency_ms=2.0 + 0.01 * i, mdice=0.70 + 0.002 * i)
            for i in range(8)] + [row("far", latency_ms=20.0, mdice=0.3)]
    fig = drawn(plots.accuracy_cost_figure([plots.RunData("r", rows)], ["latency"]))
    (boxes,) = labels_per_axes(fig)
    assert len(boxes) == 9 and overlapping_pairs(boxes) == []


@pytest.mark.parametrize("low, high", [(1.1, 7.2), (55.0, 96.0), (0.015, 0.62), (3.0, 9.5),
                                       (600.0, 9500.0), (0.2, 4000.0)])
def test_log_axis_has_clean_major_ticks_only(low, high):
    fig = plots._new_figure(5, 3)
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    plots.set_log_axis(ax.xaxis, low, high)
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert 4 <= len(labels) <= 12
    assert ax.xaxis.get_minor_ticks() == [] or not any(
        t.label1.get_text() for t in ax.xaxis.get_minor_ticks())
    renderer = fig.canvas.get_renderer()
    assert overlapping_pairs([t.get_window_extent(renderer) for t in labels]) == []
    assert all(float(t.get_text()) == float(f"{float(t.get_text()):.1g}") for t in labels)


def row(variant, **values) -> dict:
    base = {"run": "r", "arch": variant.split("-")[0], "variant": variant, "kernels": "torch",
            "dataset": "phantom", "image_size": "32", "device": "cpu", "status": "ok",
            "seed": "0", "latency_ms": "1", "gflops": "0.1", "params_m": "1",
            "peak_mem_mb": "5", "mdice": "0.5"}
    return {**base, **{k: str(v) for k, v in values.items()}}


def test_flagged_outlier_cannot_squeeze_the_axis():
    rows = [row(f"a{i}-small", latency_ms=1 + i, mdice=0.5 + 0.05 * i) for i in range(5)]
    rows += [row("slow-small", latency_ms=900, mdice=0.9, timing_unstable="True",
                 timing_reason="rounds disagree by 40%"),
             row("broken-small", latency_ms=0.5, mdice=0.2, status="error"),
             row("lost-small", latency_ms="", mdice="", status="oom")]
    fig = plots.accuracy_cost_figure([plots.RunData("r", rows)], ["latency"])
    ax = fig.axes[0]
    assert ax.get_xlim()[1] < 10 and ax.get_xlim()[0] > 0.7
    assert ax.get_ylim()[1] < 0.9  # slow-small's accuracy is kept out too
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "point-label"]
    assert "slow-small (900, mDice 0.900)" in labels
    assert "broken-small (0.5, mDice 0.200)" in labels
    hollow = [c for c in ax.collections if len(c.get_facecolors()) == 0]
    assert len(hollow) == 2
    caption = fig.texts[-1].get_text().replace("\n", " ")
    assert "slow-small: timing unstable." in caption and "40%" not in caption
    assert "Why a timing is unstable: timing_reason in results.csv" in caption
    assert "broken-small: status error" in caption
    assert "lost-small [torch] (oom)" in caption
    # off the latency axis, a timing flag is no reason to hollow a point
    fig = plots.accuracy_cost_figure([plots.RunData("r", rows)], ["gflops"])
    assert len([c for c in fig.axes[0].collections if len(c.get_facecolors()) == 0]) == 1


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def summary_run(tmp_path) -> Path:
    folder = tmp_path / "study"
    folder.mkdir()
    rows = [{**row(v, seed=s, mdice=m + 0.01 * s), "run": "study"}
            for v, m in (("unet-small", 0.9), ("fcn-small", 0.6), ("segnet-small", 0.62))
            for s in (0, 1, 2)]
    write_csv(folder / "results.csv", [{k: v for k, v in r.items() if k != "run"} for r in rows])
    summary = [{"arch": v.split("-")[0], "variant": v, "kernels": "torch", "n": 3,
                "mdice_mean": m, "mdice_sd": 0.01, "mdice_ci_low": m - 0.03,
                "mdice_ci_high": m + 0.02, "rank": rank}
               for v, m, rank in (("unet-small", 0.91, "1"), ("fcn-small", 0.61, "2="),
                                  ("segnet-small", 0.63, "2="))]
    write_csv(folder / "summary.csv", summary)
    return folder


def test_points_carry_the_summary_interval(tmp_path):
    run = plots.read_run(summary_run(tmp_path))
    points, missing = plots.cost_points(run.rows, plots.COSTS["latency"], plots._summaries([run]))
    unet = next(p for p in points if p.rows[0]["variant"] == "unet-small")
    assert (unet.n, unet.mdice, unet.interval, unet.interval_kind) == \
        (3, 0.91, (0.88, 0.93), "ci")
    assert missing == []
    fig = plots.accuracy_cost_figure([run], ["latency"])
    assert "95% bootstrap CI over test cases" in fig.texts[-1].get_text().replace("\n", " ")


def test_without_summary_the_bar_is_the_range_of_repeats(tmp_path):
    run = plots.read_run(summary_run(tmp_path))
    run.summary = []
    points, _ = plots.cost_points(run.rows, plots.COSTS["latency"], {})
    unet = next(p for p in points if p.rows[0]["variant"] == "unet-small")
    assert unet.interval == pytest.approx((0.9, 0.92)) and unet.interval_kind == "range"
    assert unet.mdice == pytest.approx(0.91)


def test_forest_plot_orders_by_mean_and_shows_ties(tmp_path):
    fig = plots.forest_figure([plots.read_run(summary_run(tmp_path))])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == \
        ["unet-small  n=3", "segnet-small  n=3", "fcn-small  n=3"]
    assert [t.get_text() for t in ax.texts] == ["1", "2=", "2=", "rank"]
    dots = [c for c in ax.collections if len(c.get_offsets()) == 3]
    assert len(dots) == 3  # each configuration's three repeats


def test_report_draws_every_figure_it_has_data_for(tmp_path):
    drawn_figures = plots.draw_figures([plots.read_run(summary_run(tmp_path))], tmp_path,
                                       "params")
    assert [title for title, _ in drawn_figures] == ["accuracy vs params", "mDice with 95% CIs"]
    for _, path in drawn_figures:
        with Image.open(path) as image:
            assert image.size[0] > 500 and path.with_suffix(".svg").is_file()


def test_a_folder_without_finished_rows_has_no_figures(tmp_path):
    rows = [row("lost-small", latency_ms="", mdice="", status="oom")]
    assert plots.draw_figures([plots.RunData("r", rows)], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def sweep_line(variant, batch, rate, status="ok", unstable="False") -> dict:
    return {"arch": variant.split("-")[0], "variant": variant, "kernels": "torch",
            "mode": "eager-fp32", "dataset": "phantom", "image_size": "32", "device": "cpu",
            "seed": "0", "batch": batch, "status": status, "throughput_img_s": rate,
            "timing_unstable": unstable}


def test_sweep_plot_ends_a_line_that_ran_out_of_memory(tmp_path):
    folder = summary_run(tmp_path)
    write_csv(folder / "sweep.csv", [
        sweep_line("unet-small", 1, 40.0), sweep_line("unet-small", 2, 70.0, unstable="True"),
        sweep_line("unet-small", 4, "", status="oom"),
        sweep_line("fcn-small", 1, 90.0), sweep_line("fcn-small", 2, 150.0),
        sweep_line("fcn-small", 4, 210.0)])
    run = plots.read_run(folder)
    fig = drawn(plots.sweep_figure([run]))
    (ax,) = fig.axes
    assert sorted(line.get_label() for line in ax.lines) == \
        ["fcn-small [torch, eager-fp32]", "unet-small [torch, eager-fp32]"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    crosses = [c for c in ax.collections if c.get_sizes()[0] == 80]
    assert [tuple(c.get_offsets()[0]) for c in crosses] == [(2.0, 70.0)]
    assert len([c for c in ax.collections if len(c.get_facecolors()) == 0]) == 1
    out = tmp_path / "out"
    out.mkdir()
    drawn_figures = dict(plots.draw_figures([run], out))
    with Image.open(drawn_figures["throughput vs batch"]) as image:
        assert image.size == png_size(fig)


def test_forest_plot_has_a_panel_per_comparison_group_and_the_baseline(tmp_path):
    folder = summary_run(tmp_path)
    with (folder / "summary.csv").open(newline="") as f:
        torch_rows = list(csv.DictReader(f))
    triton_rows = [{**s, "kernels": "triton", "mdice_mean": str(float(s["mdice_mean"]) - 0.01)}
                   for s in torch_rows]
    write_csv(folder / "summary.csv", [{**s, "baseline_mdice_mean": "0.2"}
                                       for s in torch_rows + triton_rows])
    fig = plots.forest_figure([plots.read_run(folder)])
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert [t.get_text() for t in ax.texts] == ["1", "2=", "2=", "rank"]
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert [tuple(line.get_xdata()) for line in dashed] == [(0.2, 0.2)]
        assert ax.get_xlim()[0] < 0.2
    triton_dots = [len(c.get_offsets()) for c in fig.axes[1].collections]
    assert 3 not in triton_dots  # results.csv holds no triton repeats


def test_sweep_plot_has_a_line_per_seed(tmp_path):
    lines = [{**sweep_line("unet-small", batch, rate), "seed": seed, "split_seed": seed}
             for seed in ("0", "1") for batch, rate in ((1, 40.0), (2, 70.0))]
    fig = plots.sweep_figure([plots.RunData("r", [], sweep=lines)])
    assert sorted(line.get_label() for line in fig.axes[0].lines) == \
        ["unet-small [torch, eager-fp32] seed 0", "unet-small [torch, eager-fp32] seed 1"]
