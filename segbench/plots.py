"""The figures of run folders: test mDice against each cost with its Pareto front, the forest
plot of mDice intervals per architecture (from summary.csv), the training curves (from
history.csv) and inference throughput against batch size (from sweep.csv). Each figure states
its conditions and its spread; a figure whose data a folder lacks is not drawn.

Figures are built on matplotlib's object API (no pyplot, no global state) and written
atomically, PNG and SVG, beside the tables.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator
from matplotlib.transforms import Bbox

from segbench import results
from segbench.measure.flops import FLOP_CONVENTION

rcParams["svg.hashsalt"] = "segbench"  # the same figure gives the same SVG, fit to commit
DPI = 120
FRONT, OTHER, MUTED = "tab:red", "tab:blue", "0.45"
LABEL_POINTS = 7  # font size of point labels
# key fields that tell two repeats of one configuration apart
REPEAT_FIELDS = ("seed", "split_seed", "fold")
# key fields that name a training in history.csv (its rows' kernels and modes share it)
MEASURE_ONLY_FIELDS = ("kernels", "mode")
PANEL_FIELDS = ("dataset", "image_size", "device")


@dataclass(frozen=True)
class Cost:
    column: str
    title: str
    label: str
    timed: bool  # measured by a timer: a timing_unstable row is flagged on this axis


COSTS = {
    "latency": Cost("latency_ms", "latency", "latency, batch 1, median (ms)", timed=True),
    "gflops": Cost("gflops", "FLOPs", "GFLOPs per forward", timed=False),
    "params": Cost("params_m", "parameters", "parameters (M)", timed=False),
    "memory": Cost("peak_mem_mb", "memory", "inference peak memory, batch 1 (MB)",
                   timed=False),
}


@dataclass
class RunData:
    """What the figures read from one run folder; summary and history may be empty."""

    name: str
    rows: list[dict]
    summary: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    sweep: list[dict] = field(default_factory=list)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_run(folder: Path) -> RunData:
    return RunData(folder.name, [{**row, "run": folder.name} for row in results.read_rows(folder)],
                   *(_read_csv(folder / f"{name}.csv") for name in ("summary", "history", "sweep")))


def number(value) -> float:
    """A CSV cell as a float; empty or unreadable cells are NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower cost and higher accuracy)."""
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(c2 <= cost and a2 >= acc and (c2, a2) != (cost, acc) for c2, a2 in points)
        if not dominated:
            front.append(i)
    return front


def _tick_text(value: float, _position=None) -> str:
    return f"{value:g}"


def set_log_axis(axis, low: float, high: float) -> None:
    """Log scale with clean major ticks only, as few as still give four labels; no minor
    labels (they run together at the dense end of a decade)."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5, 7), range(1, 10)):
        ticks = [m * 10.0**e for e in decades for m in mantissas if low <= m * 10.0**e <= high]
        if len(ticks) >= 4:
            break
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(_tick_text))
    axis.set_minor_locator(NullLocator())


# ---------------------------------------------------------------- points of the cost figure


@dataclass
class Point:
    rows: list[dict]  # the repeats behind the point (status ok, unless none is)
    cost: float  # median over the repeats
    mdice: float  # mean over the repeats, or summary.csv's mean
    interval: tuple[float, float] | None  # error bar
    interval_kind: str  # "ci" (summary.csv), "range" (of the repeats) or "" (none)
    flag: str  # why the point is hollow and left out of the axis range and the front
    label: str = ""

    @property
    def n(self) -> int:
        return len(self.rows)


def _identity(row: dict, drop: Iterable[str]) -> tuple:
    return (row["run"], *(str(row.get(f, "")) for f in results.KEY_FIELDS if f not in drop))


def _key_fields(summary: dict) -> list[str]:
    return [f for f in results.KEY_FIELDS if f in summary]


def _summaries(runs: list[RunData]) -> dict[str, list[dict]]:
    """summary.csv rows by run, each with the key columns it is keyed by."""
    return {run.name: [{**row, "_fields": _key_fields(row)} for row in run.summary]
            for run in runs}


def _matches(row: dict, summary: dict) -> bool:
    return all(str(row.get(f, "")) == summary[f] for f in summary["_fields"])


def _summary_of(row: dict, summaries: dict[str, list[dict]]) -> dict | None:
    candidates = [s for s in summaries.get(row["run"], []) if _matches(row, s)]
    return candidates[0] if len(candidates) == 1 else None


def _flag(rows: list[dict], cost: Cost) -> str:
    statuses = sorted({r.get("status", "") for r in rows} - {"ok"})
    if statuses:
        return f"status {'/'.join(statuses)}"
    if cost.timed and any(is_true(r.get("timing_unstable")) for r in rows):
        return "timing unstable"  # its reasons run to lines of round medians: see results.md
    return ""


def _plottable(row: dict, cost: Cost) -> bool:
    return math.isfinite(number(row.get("mdice"))) and number(row.get(cost.column)) > 0


def cost_points(rows: list[dict], cost: Cost, summaries: dict[str, list[dict]],
                ) -> tuple[list[Point], list[str]]:
    """One point per configuration (its repeats pooled), and what could not be plotted."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(_identity(row, REPEAT_FIELDS), []).append(row)
    points, missing = [], []
    for group in groups.values():
        usable = [r for r in group if _plottable(r, cost)]
        ok = [r for r in usable if r.get("status") == "ok"]
        chosen = ok or usable
        if not chosen:
            statuses = "/".join(sorted({r.get("status", "") for r in group}))
            missing.append(f"{group[0]['variant']} [{group[0]['kernels']}] ({statuses})")
            continue
        points.append(_point(chosen, cost, _summary_of(chosen[0], summaries)))
    return points, missing


def _point(rows: list[dict], cost: Cost, summary: dict | None) -> Point:
    values = [number(r["mdice"]) for r in rows]
    mean, interval, kind = statistics.fmean(values), None, ""
    if summary is not None and math.isfinite(number(summary.get("mdice_mean"))):
        mean = number(summary["mdice_mean"])
        low, high = number(summary.get("mdice_ci_low")), number(summary.get("mdice_ci_high"))
        if math.isfinite(low) and math.isfinite(high):
            interval, kind = (low, high), "ci"
    elif len(values) > 1:
        interval, kind = (min(values), max(values)), "range"
    return Point(rows, statistics.median(number(r[cost.column]) for r in rows), mean,
                 interval, kind, _flag(rows, cost))


def _shared(rows: list[dict], name: str) -> str | None:
    values = {str(r.get(name, "")) for r in rows}
    return values.pop() if len(values) == 1 else None


def label_points(points: list[Point]) -> None:
    """Variant name, plus whatever else tells the panel's points apart."""
    rows = [p.rows[0] for p in points]
    varying = [f for f in ("run", *results.KEY_FIELDS)
               if f not in ("arch", "variant", *REPEAT_FIELDS, *PANEL_FIELDS)
               and _shared(rows, f) is None]
    for point, row in zip(points, rows, strict=True):
        parts = [row["variant"]]
        parts += [f"[{row[f]}]" if f == "kernels" else f"{f} {row.get(f) or '–'}"
                  for f in varying]
        point.label = " ".join(parts)


def conditions(rows: list[dict]) -> str:
    """The settings every row of a panel shares, in words."""
    parts = [f"{_shared(rows, 'dataset')}", f"{_shared(rows, 'image_size')} px"]
    device = _shared(rows, "device_name") or _shared(rows, "device")
    parts.append(device or "several devices")
    for name, text in (("dtype", "{}"), ("threads", "{} threads"), ("kernels", "kernels {}"),
                       ("mode", "{}"),
                       ("profile", "profile {}"), ("epochs", "{} epochs")):
        value = _shared(rows, name)
        if value:
            parts.append(text.format(value))
    return ", ".join(parts)


# ---------------------------------------------------------------- label placement


def _px(points_: float) -> float:
    return points_ * DPI / 72


def _overlap(a: Bbox, b: Bbox) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


LABEL_GAP = 7  # points between a point and its label, clear of the largest marker
CANDIDATES_PER_RING = 16


def _candidates(width: float, height: float, gap: float) -> list[tuple[float, float]]:
    """Lower-left corners (pixels, relative to the point) of a label's positions, in rings of
    growing distance; in each ring right, left, above and below (centred on the point, then
    shifted to either side of it), then the four diagonals."""
    spots = []
    for distance in (1, 2, 3.5, 5):
        r = gap * distance
        d = r * 0.75
        spots += [(r, -height / 2), (-r - width, -height / 2),
                  (-width / 2, r), (-width / 2, -r - height),
                  (r, -height + gap / 2), (r, -gap / 2), (-r - width, -height + gap / 2),
                  (-r - width, -gap / 2),
                  (-gap, r), (gap - width, r), (-gap, -r - height), (gap - width, -r - height),
                  (d, d), (-d - width, d), (d, -d - height), (-d - width, -d - height)]
    return spots


def _text_size(ax, text: str, renderer) -> tuple[float, float]:
    probe = ax.text(0, 0, text, fontsize=LABEL_POINTS)
    box = probe.get_window_extent(renderer)
    probe.remove()
    return box.width, box.height


def _best_spot(px: float, py: float, size: tuple[float, float], frame: Bbox,
               taken: list[Bbox]) -> tuple[float, float, int]:
    """The first candidate that is free and inside the frame, else the least bad one."""
    width, height = size
    best, best_cost = None, math.inf
    for rank, (dx, dy) in enumerate(_candidates(width, height, _px(LABEL_GAP))):
        spot = Bbox.from_bounds(px + dx, py + dy, width, height)
        inside = frame.x0 <= spot.x0 and spot.x1 <= frame.x1 and frame.y0 <= spot.y0 \
            and spot.y1 <= frame.y1
        cost = sum(_overlap(spot, other) for other in taken) + (0 if inside else 1e9)
        if cost == 0:
            return dx, dy, rank
        if cost < best_cost:
            best, best_cost = (dx, dy, rank), cost
    return best


def place_labels(ax, anchors: list[tuple[float, float]], texts: list[str],
                 obstacles: list[Bbox]) -> list:
    """Annotate each anchor (data coordinates) with its text where the label box overlaps no
    label placed before it and no obstacle (markers, error bars), inside the axes: the first
    free candidate position, nearest first, else the one with least overlap. Deterministic:
    the same points give the same figure. A label away from its point gets a leader line.
    Call it once the axes' limits, scales and position are final."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = list(obstacles)
    annotations = []
    for (x, y), text in zip(anchors, texts, strict=True):
        px, py = ax.transData.transform((x, y))
        size = _text_size(ax, text, renderer)
        dx, dy, rank = _best_spot(px, py, size, frame, taken)
        leader = {"arrowstyle": "-", "color": MUTED, "lw": 0.7, "shrinkA": 1, "shrinkB": 4}
        annotations.append(ax.annotate(
            text, (x, y), xytext=(dx * 72 / DPI, dy * 72 / DPI), textcoords="offset points",
            fontsize=LABEL_POINTS, ha="left", va="bottom", zorder=5, gid="point-label",
            arrowprops=leader if rank >= CANDIDATES_PER_RING else None))
        taken.append(Bbox.from_bounds(px + dx, py + dy, *size))
    return annotations


def label_boxes(ax) -> list[Bbox]:
    """The boxes of the point labels of drawn axes: the text only, without leader lines."""
    renderer = ax.figure.canvas.get_renderer()
    return [Text.get_window_extent(text, renderer) for text in ax.texts
            if text.get_gid() == "point-label"]


# ---------------------------------------------------------------- the cost figure


def _span(values: list[float], log: bool, room_right: float = 0.08) -> tuple[float, float]:
    """The range of the values with a margin, 8% of their span (and `room_right` of it on
    the high side, where labels go first)."""
    low, high = min(values), max(values)
    if log:
        spread = max(math.log10(high) - math.log10(low), 0.5)
        return low / 10 ** (spread * 0.08), high * 10 ** (spread * room_right)
    # a range narrower than a fifth of the values' size (one point, say) is widened about its
    # middle: a lone point must not sit on an axis zoomed to its third decimal
    spread = max(high - low, 0.2 * max(abs(high), 1e-9))
    middle = (low + high) / 2
    low, high = min(low, middle - spread / 2), max(high, middle + spread / 2)
    return low - spread * 0.08, high + spread * room_right


def _axis_ranges(points: list[Point]) -> tuple[tuple[float, float], tuple[float, float], bool]:
    """x range, y range and whether x is logarithmic, from the unflagged points only (all of
    them when every point is flagged), so that a flagged outlier cannot squeeze the rest."""
    basis = [p for p in points if not p.flag] or points
    costs = [p.cost for p in basis]
    log = max(costs) / min(costs) >= 3
    accuracies = [v for p in basis for v in (p.mdice, *(p.interval or ()))]
    return _span(costs, log, room_right=0.2), _span(accuracies, False), log


def _clip(point: Point, xlim, ylim) -> tuple[float, float, str]:
    """Where a point is drawn, and its marker: an arrow at the edge when outside."""
    x, y, marker = point.cost, point.mdice, "o"
    for value, (low, high), (below, above) in ((x, xlim, "<>"), (y, ylim, "v^")):
        if value < low or value > high:
            marker = below if value < low else above
    return min(max(x, xlim[0]), xlim[1]), min(max(y, ylim[0]), ylim[1]), marker


MARKER_AREA = {True: 60, False: 30}  # on the front / not


def _step_boxes(ax, corners: list[tuple[float, float]]) -> list[Bbox]:
    """Thin boxes along the segments of the front's step line, for labels to avoid."""
    ends = [ax.transData.transform(c) for c in corners]
    boxes, half = [], _px(1.5)
    for (x0, y0), (x1, y1) in zip(ends, ends[1:], strict=False):
        for (ax0, ay0), (ax1, ay1) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1))):
            boxes.append(Bbox([[min(ax0, ax1) - half, min(ay0, ay1) - half],
                               [max(ax0, ax1) + half, max(ay0, ay1) + half]]))
    return boxes


def draw_cost_panel(ax, points: list[Point], cost: Cost, title: str) -> None:
    xlim, ylim, log = _axis_ranges(points)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    if log:
        ax.set_xscale("log")
        set_log_axis(ax.xaxis, *xlim)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(6))
    solid = [p for p in points if not p.flag]
    front = {id(solid[i]) for i in pareto_front([(p.cost, p.mdice) for p in solid])}
    anchors, texts, obstacles = [], [], []
    for point in sorted(points, key=lambda p: (id(p) not in front, -p.mdice, p.label)):
        on_front = id(point) in front
        color = FRONT if on_front else OTHER
        x, y, marker = _clip(point, xlim, ylim)
        if point.interval and marker == "o":
            ax.errorbar(x, point.mdice, yerr=[[point.mdice - point.interval[0]],
                                               [point.interval[1] - point.mdice]],
                        fmt="none", ecolor=color, elinewidth=0.9, capsize=2, alpha=0.7, zorder=2)
            low, high = (ax.transData.transform((x, v))[1] for v in point.interval)
            cx = ax.transData.transform((x, y))[0]
            obstacles.append(Bbox([[cx - _px(2), low], [cx + _px(2), high]]))
        area = MARKER_AREA[on_front]
        face = "none" if point.flag else color
        ax.scatter(x, y, s=area, marker=marker, facecolors=face, edgecolors=color,
                   linewidths=1.2, zorder=4, clip_on=False)
        cx, cy = ax.transData.transform((x, y))
        radius = _px(math.sqrt(area) / 2 + 1)
        obstacles.append(Bbox([[cx - radius, cy - radius], [cx + radius, cy + radius]]))
        text = point.label
        if marker != "o":
            text += f" ({point.cost:g}, mDice {point.mdice:.3f})"
        anchors.append((x, y))
        texts.append(text)
    ordered = sorted((p.cost, p.mdice) for p in solid if id(p) in front)
    ax.step([c for c, _ in ordered], [a for _, a in ordered], where="post", color=FRONT,
            alpha=0.5, lw=1.2, zorder=1)
    obstacles += _step_boxes(ax, ordered)
    ax.set_xlabel(cost.label + (" (log scale)" if log else ""))
    ax.set_ylabel("test mDice (foreground classes)")
    ax.set_title("\n".join(_wrap([title], ax.get_position().width * ax.figure.get_figwidth())),
                 fontsize=9)
    ax.grid(alpha=0.3)
    place_labels(ax, anchors, texts, obstacles)


def _caption_spread(points: list[Point]) -> str:
    kinds = {p.interval_kind for p in points}
    counts = sorted({p.n for p in points})
    n = f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]} to {counts[-1]}"
    parts = []
    if "ci" in kinds:
        parts.append("error bars: 95% bootstrap CI over test cases, pooled over seeds and "
                     "folds (summary.csv)")
    if "range" in kinds:
        parts.append("error bars: lowest to highest repeat (no summary.csv)")
    if "" in kinds:
        parts.append("no bar: one repeat and no summary.csv, so no interval")
    return f"Each point: mean test mDice of its repeats ({n}); " + "; ".join(parts) + "."


def cost_caption(points: list[Point], missing: list[str]) -> list[str]:
    lines = [_caption_spread(points),
             "Filled red: the Pareto front (no other filled point is both cheaper and more "
             "accurate). Hollow: flagged (timing unstable, or a status other than ok), kept "
             "out of the axis ranges and the front; a triangle at the edge lies beyond it.",
             f"Costs: median over the repeats. FLOPs: {FLOP_CONVENTION}."]
    flagged = sorted({f"{p.label}: {p.flag}" for p in points if p.flag})
    if flagged:
        lines.append("Flagged: " + "; ".join(flagged) + ".")
        if any(p.flag == "timing unstable" for p in points):
            lines.append("Why a timing is unstable: timing_reason in results.csv, listed under "
                         "the table of results.md; `segbench measure` re-times the rows.")
    if missing:
        lines.append("Not plotted (no accuracy or cost): " + "; ".join(sorted(missing)) + ".")
    return lines


def _panel_groups(rows: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Rows measured on different data or hardware are never compared on one front."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(f)) for f in PANEL_FIELDS), []).append(row)
    return sorted(groups.items())


def _new_figure(width: float, height: float) -> Figure:
    """A figure of whole pixels (the PNG is then exactly the figure's size)."""
    fig = Figure(figsize=(round(width * DPI) / DPI, round(height * DPI) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _wrap(lines: list[str], width: float) -> list[str]:
    import textwrap

    chars = max(int(width * 14), 40)  # about 14 characters per inch at 7.5 pt
    return [part for line in lines for part in textwrap.wrap(line, chars)]


CAPTION_LINE_IN = 0.17


def accuracy_cost_figure(runs: list[RunData], costs: list[str]) -> Figure | None:
    """mDice against each cost in `costs`, one panel per (dataset, image size, device) and
    cost; a 2x2 block per group for all four costs."""
    rows = [row for run in runs for row in run.rows]
    groups = _panel_groups(rows)
    summaries = _summaries(runs)
    panels, captions = [], []
    for _, group in groups:
        for name in costs:
            points, missing = cost_points(group, COSTS[name], summaries)
            if points:
                label_points(points)
                title = f"mDice vs {COSTS[name].title}"
                if len(groups) > 1:
                    title += f": {conditions(group)}"
                panels.append((points, COSTS[name], title))
                captions += cost_caption(points, missing)
    if not panels:
        return None
    columns = 2 if len(costs) == 4 else min(len(panels), 3)
    lines_count = len(panels) // columns + (len(panels) % columns > 0)
    width = 6.4 * columns
    caption = _wrap(list(dict.fromkeys(captions)), width)
    caption_in = CAPTION_LINE_IN * len(caption) + 0.25
    height = 4.7 * lines_count + caption_in
    fig = _new_figure(width, height)
    axes = fig.subplots(lines_count, columns, squeeze=False, gridspec_kw={
        "left": 0.75 / width, "right": 1 - 0.25 / width, "top": 1 - 0.6 / height,
        "bottom": (caption_in + 0.55) / height, "wspace": 0.22, "hspace": 0.38})
    if len(groups) == 1:
        fig.suptitle("\n".join(_wrap([f"Test mDice against cost: {conditions(rows)}"],
                                      width * 0.8)), fontsize=10, y=1 - 0.1 / height, va="top")
    for ax, (points, cost, title) in zip(axes.flat, panels, strict=False):
        draw_cost_panel(ax, points, cost, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.text(0.75 / width, (caption_in - 0.1) / height, "\n".join(caption), fontsize=7.5,
             va="top", linespacing=1.35)
    return fig


# ---------------------------------------------------------------- forest plot


def _comparison_groups(run: RunData) -> list[list[dict]]:
    """summary.csv's rows by comparison group (every key field but the architecture): each
    group has its own best and ranks, so each gets its own panel; best mean first."""
    groups: dict[tuple, list[dict]] = {}
    for summary in run.summary:
        if math.isfinite(number(summary.get("mdice_mean"))):
            group = tuple(str(summary.get(f)) for f in results.KEY_FIELDS
                          if f in summary and f not in ("arch", "variant"))
            groups.setdefault(group, []).append(summary)
    return [sorted(entries, key=lambda s: -number(s["mdice_mean"]))
            for entries in groups.values()]


def forest_figure(runs: list[RunData]) -> Figure | None:
    """Test mDice per configuration with its 95% CI (summary.csv), one panel per run and
    comparison group; the single repeats as dots, the summary's rank (ties marked "=") at the
    right and the pixel-prior baseline, where the summary has one, as a grey line."""
    panels = [(run, entries) for run in runs for entries in _comparison_groups(run)]
    if not panels:
        return None
    heights = [0.32 * len(entries) + 1.1 for _, entries in panels]
    caption = ["Bars: 95% bootstrap CI over test cases, pooled over seeds and folds; dots: "
               "single repeats (results.csv). Rank: paired comparison with the best on the "
               "same test cases; '=' marks a tie (the interval of the difference contains 0). "
               "Grey dashed: the pixel-prior baseline (the training split's most frequent class "
               "at each pixel), where summary.csv has it."]
    width = 8.0
    caption = _wrap(caption, width)
    caption_in = CAPTION_LINE_IN * len(caption) + 0.3
    height = sum(heights) + caption_in + 0.4
    fig = _new_figure(width, height)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={
        "height_ratios": heights, "left": 2.3 / width, "right": 1 - 0.6 / width,
        "top": 1 - 0.4 / height, "bottom": (caption_in + 0.6) / height, "hspace": 0.9 / 2})
    for ax, (run, entries) in zip(axes[:, 0], panels, strict=True):
        _draw_forest(ax, run, entries)
    fig.text(0.3 / width, (caption_in - 0.1) / height, "\n".join(caption), fontsize=7.5,
             va="top", linespacing=1.35)
    return fig


def _repeats_of(summary: dict, rows: list[dict]) -> list[float]:
    fields = _key_fields(summary)
    return [number(r["mdice"]) for r in rows
            if r.get("status") == "ok" and all(str(r.get(f, "")) == summary[f] for f in fields)
            and math.isfinite(number(r.get("mdice")))]


def _draw_forest(ax, run: RunData, entries: list[dict]) -> None:
    varying_kernels = len({s.get("kernels") for s in entries}) > 1
    ys = range(len(entries), 0, -1)
    values = []
    for y, summary in zip(ys, entries, strict=True):
        mean = number(summary["mdice_mean"])
        low, high = number(summary.get("mdice_ci_low")), number(summary.get("mdice_ci_high"))
        color = FRONT if y == len(entries) else OTHER
        if math.isfinite(low) and math.isfinite(high):
            ax.plot([low, high], [y, y], color=color, lw=2, solid_capstyle="butt")
            values += [low, high]
        repeats = _repeats_of(summary, run.rows)
        ax.scatter(repeats, [y] * len(repeats), s=10, color=MUTED, zorder=3)
        ax.scatter([mean], [y], s=40, color=color, zorder=4, marker="D")
        values += [mean, *repeats]
        if summary.get("rank"):
            ax.annotate(summary["rank"], (1.01, y), xycoords=("axes fraction", "data"),
                        va="center", fontsize=8)
    baseline = number(entries[0].get("baseline_mdice_mean"))
    if math.isfinite(baseline):
        ax.axvline(baseline, color=MUTED, lw=1, ls="--", zorder=1)
        values.append(baseline)
    labels = [f"{s['variant']}{' [' + s['kernels'] + ']' if varying_kernels else ''}  "
              f"n={s.get('n', '?')}" for s in entries]
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set_ylim(0.4, len(entries) + 0.6)
    low, high = _span(values, False)
    ax.set_xlim(low, high)
    ax.axvline(number(entries[0]["mdice_mean"]), color=FRONT, lw=0.8, ls=":", zorder=1)
    ax.set_xlabel("test mDice (foreground classes)")
    ax.grid(axis="x", alpha=0.3)
    rows = [r for r in run.rows if any(_matches(r, {**s, "_fields": _key_fields(s)})
                                       for s in entries)]
    ax.set_title(f"{run.name}: {conditions(rows or run.rows)}", fontsize=9)
    if any(s.get("rank") for s in entries):
        ax.annotate("rank", (1.01, len(entries) + 0.5), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8, style="italic")


# ---------------------------------------------------------------- training curves


def _trainings(run: RunData) -> dict[str, dict[tuple, list[dict]]]:
    """history.csv by architecture, then by training (one per seed/fold/variant/...)."""
    by_arch: dict[str, dict[tuple, list[dict]]] = {}
    seen: set[tuple] = set()
    for line in run.history:
        training = tuple(str(line.get(f, "")) for f in results.KEY_FIELDS
                         if f not in MEASURE_ONLY_FIELDS)
        key = (*training, line.get("epoch"))
        if key in seen:  # the same training's curve, repeated for each measured row
            continue
        seen.add(key)
        by_arch.setdefault(line["arch"], {}).setdefault(training, []).append(line)
    return by_arch


def _split_follows_seed(rows: list[dict]) -> bool:
    """Each row's split seed is its seed (the default: one split per seed), so naming the
    split seed too says nothing."""
    return all(str(r.get("split_seed")) == str(r.get("seed")) for r in rows)


def _training_label(lines: list[dict], trainings: list[list[dict]]) -> str:
    first = [t[0] for t in trainings]
    parts = []
    if _shared(first, "variant") is None:
        parts.append(lines[0]["variant"])
    for name in ("seed", "split_seed", "fold", "recipe", "threads", "train_kernels"):
        if name == "split_seed" and _split_follows_seed(first):
            continue
        if _shared(first, name) is None:
            parts.append(f"{name.replace('_', ' ')} {lines[0].get(name)}")
    return ", ".join(parts) or f"seed {lines[0].get('seed')}"


def curves_figure(runs: list[RunData]) -> Figure | None:
    """Train loss and val mDice per epoch, one panel per architecture (and run), one colour
    per training (seed, fold)."""
    panels = [(run, arch, trainings) for run in runs
              for arch, trainings in _trainings(run).items()]
    if not panels:
        return None
    columns = min(4, len(panels))
    lines_count = len(panels) // columns + (len(panels) % columns > 0)
    width, panel_height = 4.2 * columns, 3.0
    caption = _wrap(["Solid: training loss (left axis); dashed: validation mDice (right axis, "
                     "the epoch with the best one gives the test weights); one colour per "
                     "training."], width)
    caption_in = CAPTION_LINE_IN * len(caption) + 0.2
    height = panel_height * lines_count + caption_in + 0.3
    fig = _new_figure(width, height)
    axes = fig.subplots(lines_count, columns, squeeze=False, gridspec_kw={
        "left": 0.6 / width, "right": 1 - 0.6 / width, "top": 1 - 0.35 / height,
        "bottom": (caption_in + 0.5) / height, "wspace": 0.55, "hspace": 0.6})
    several_runs = len(runs) > 1
    for ax, (run, arch, trainings) in zip(axes.flat, panels, strict=False):
        _draw_curves(ax, list(trainings.values()))
        ax.set_title(f"{run.name}: {arch}" if several_runs else arch, fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.text(0.6 / width, (caption_in - 0.05) / height, "\n".join(caption), fontsize=7.5,
             va="top", linespacing=1.35)
    return fig


def _draw_curves(ax, trainings: list[list[dict]]) -> None:
    right = ax.twinx()
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, lines in enumerate(trainings):
        lines = sorted(lines, key=lambda line: number(line["epoch"]))
        epochs = [number(line["epoch"]) for line in lines]
        color = colors[i % len(colors)]
        ax.plot(epochs, [number(line.get("train_loss")) for line in lines], color=color,
                lw=1.2, marker="." if len(epochs) < 3 else None)
        right.plot(epochs, [number(line.get("val_mdice")) for line in lines], color=color,
                   lw=1.2, ls="--", marker="." if len(epochs) < 3 else None)
        handles.append(Line2D([], [], color=color, label=_training_label(lines, trainings)))
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("train loss", fontsize=8)
    right.set_ylabel("val mDice", fontsize=8)
    right.set_ylim(0, 1)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in (ax, right):
        axis.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(trainings) > 1:
        ax.legend(handles=handles, fontsize=6.5, loc="upper right", framealpha=0.8)


# ---------------------------------------------------------------- throughput vs batch


def _sweep_label(line: dict, varying: list[str]) -> str:
    return " ".join([line["variant"], f"[{line['kernels']}, {line['mode']}]",
                     *(f"{f.replace('_', ' ')} {line.get(f)}" for f in varying)])


def _sweep_curves(lines: list[dict]) -> dict[str, dict]:
    """One panel's sweep.csv lines by row: the batches that ran, their throughputs, whether
    each was flagged unstable, and the batch that did not fit (None when every batch ran)."""
    rows: dict[tuple, list[dict]] = {}
    for line in lines:
        rows.setdefault(_identity(line, ()), []).append(line)
    firsts = [row_lines[0] for row_lines in rows.values()]
    varying = [f for f in ("run", *results.KEY_FIELDS)
               if f not in ("arch", "variant", "kernels", "mode", *PANEL_FIELDS)
               and _shared(firsts, f) is None
               and not (f == "split_seed" and _split_follows_seed(firsts))]
    curves = {}
    for row_lines in rows.values():
        ran = sorted((line for line in row_lines if line.get("status") == "ok"),
                     key=lambda line: int(line["batch"]))
        failed = [int(line["batch"]) for line in row_lines if line.get("status") != "ok"]
        curves[_sweep_label(row_lines[0], varying)] = {
            "batches": [int(line["batch"]) for line in ran],
            "rates": [number(line["throughput_img_s"]) for line in ran],
            "unstable": [is_true(line.get("timing_unstable")) for line in ran],
            "failed_at": min(failed) if failed else None}
    return curves


def sweep_figure(runs: list[RunData]) -> Figure | None:
    """Inference throughput against batch size, one line per row (variant, kernels, mode, and
    seed or whatever else tells the rows apart), one panel per (dataset, image size, device);
    an x ends a line whose next batch did not fit and a hollow marker is a batch whose timing
    was unstable."""
    lines = [{**line, "run": run.name} for run in runs for line in run.sweep]
    panels = _panel_groups(lines)
    if not panels:
        return None
    rows = [row for run in runs for row in run.rows]
    width = 7.0 * len(panels)
    caption = _wrap(["Each point: images/s = batch / median forward latency over the timing "
                     "rounds (sweep.csv). x: the next batch of the sweep did not fit (out of "
                     "memory, or not tried because the extrapolated memory exceeded what was "
                     "free). Hollow: timing flagged unstable at that batch."], width)
    caption_in = CAPTION_LINE_IN * len(caption) + 0.25
    height = 4.7 + caption_in
    fig = _new_figure(width, height)
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={
        "left": 0.75 / width, "right": 1 - 0.25 / width, "top": 1 - 0.45 / height,
        "bottom": (caption_in + 0.55) / height, "wspace": 0.22})
    for ax, (panel, panel_lines) in zip(axes[0], panels, strict=True):
        _draw_sweep(ax, _sweep_curves(panel_lines))
        measured = [r for r in rows if tuple(str(r.get(f)) for f in PANEL_FIELDS) == panel
                    and _identity(r, ()) in {_identity(line, ()) for line in panel_lines}]
        title = f"Throughput vs batch: {conditions(measured or panel_lines)}"
        ax.set_title("\n".join(_wrap([title], 0.8 * width / len(panels))), fontsize=9)
    fig.text(0.75 / width, (caption_in - 0.1) / height, "\n".join(caption), fontsize=7.5,
             va="top", linespacing=1.35)
    return fig


def _draw_sweep(ax, curves: dict[str, dict]) -> None:
    batches = []
    for label, curve in sorted(curves.items()):
        if not curve["batches"]:
            continue
        (drawn,) = ax.plot(curve["batches"], curve["rates"], lw=1.2, label=label)
        color = drawn.get_color()
        for batch, rate, unstable in zip(curve["batches"], curve["rates"], curve["unstable"],
                                         strict=True):
            ax.scatter(batch, rate, s=25, facecolors="none" if unstable else color,
                       edgecolors=color, zorder=3)
        if curve["failed_at"] is not None:
            ax.scatter(curve["batches"][-1], curve["rates"][-1], marker="x", s=80, zorder=4,
                       color=color)
        batches += curve["batches"]
    ax.set_xscale("log", base=2)
    if batches:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(batches))))
        ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size (log2 scale)")
    ax.set_ylabel("inference throughput (images/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ---------------------------------------------------------------- writing


def save(fig: Figure, stem: Path) -> list[Path]:
    """PNG and SVG of the figure, each written whole or not at all."""
    paths = []
    for ext in ("png", "svg"):
        path = stem.with_name(f"{stem.name}.{ext}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=DPI, metadata={"Software": None} if ext == "png"
                    else {"Date": None, "Creator": None})
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
        paths.append(path)
    return paths


def cost_stem(cost: str | None) -> str:
    return f"accuracy_vs_{cost}" if cost else "accuracy_vs_cost"


def draw_figures(runs: list[RunData], out: Path, cost: str | None = None,
                 ) -> list[tuple[str, Path]]:
    """Every figure the runs have data for, as (what it shows, PNG path); SVGs beside."""
    figures = [
        (f"accuracy vs {cost or 'cost'}", cost_stem(cost),
         accuracy_cost_figure(runs, [cost] if cost else list(COSTS))),
        ("mDice with 95% CIs", "mdice_forest", forest_figure(runs)),
        ("training curves", "training_curves", curves_figure(runs)),
        ("throughput vs batch", "throughput_vs_batch", sweep_figure(runs)),
    ]
    drawn = []
    for title, stem, fig in figures:
        if fig is not None:
            drawn.append((title, save(fig, out / stem)[0]))
    return drawn


def draw_folder(folder: Path) -> list[Path]:
    """The figures of one run folder, written into it: what `segbench run` ends with."""
    return [path for _, path in draw_figures([read_run(folder)], folder)]
