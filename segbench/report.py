"""Tables and plots from one or many run folders, and the model listing of `segbench list`."""

from __future__ import annotations

import math
from pathlib import Path

from segbench import results
from segbench.config import UsageError
from segbench.measure.flops import FLOP_CONVENTION

LISTING_CLASSES, LISTING_CHANNELS = 4, 1  # the built-in brain-tissue task


def model_listing(names: list[str] | None = None, in_channels: int = LISTING_CHANNELS,
                  num_classes: int = LISTING_CLASSES, input_size: tuple[int, int] | None = None,
                  with_flops: bool = True) -> str:
    """Params and GFLOPs of registered models, at each paper's input size unless given."""
    import torch

    from segbench.measure.flops import count_flops, count_params
    from segbench.models import create_model, list_models, model_spec

    try:
        specs = [model_spec(name) for name in (names or list_models())]
    except ValueError as e:
        raise UsageError(str(e)) from None
    where = "at the paper's input size" if input_size is None else "at the given input size"
    lines = [f"Models ({in_channels} input channel(s), {num_classes} classes; GFLOPs {where}, "
             f"{FLOP_CONVENTION}; eval forward, auxiliary heads in params only):", "",
             "| name | role | params (M) | input | GFLOPs | description |",
             "|---|---|---|---|---|---|"]
    for spec in specs:
        role = "paper default" if spec.default else "small (cpu)" if spec.cpu else "variant"
        model = create_model(spec.name, num_classes, in_channels)
        height, width = input_size or (spec.paper_input_size, spec.paper_input_size)
        gflops = "–"
        if with_flops:
            x = torch.zeros(1, in_channels, height, width)
            value = count_flops(model, x)["gflops"]
            gflops = f"{value:.1f}" if value >= 10 else f"{value:.3g}"
        lines.append(f"| {spec.name} | {role} | {count_params(model) / 1e6:.2f} | "
                     f"{height}x{width} | {gflops} | {spec.description} |")
        del model
    return "\n".join(lines)


def load_runs(folders: list[Path]) -> tuple[list[dict], list[tuple[Path, dict]]]:
    rows, manifests = [], []
    for folder in folders:
        manifest = results.read_manifest(folder)
        if manifest is None or not (folder / "results.csv").is_file():
            raise UsageError(f"{folder} is not a segbench run folder (no run.json/results.csv)")
        manifests.append((folder, manifest))
        rows += [{**row, "run": folder.name} for row in results.read_rows(folder)]
    return rows, manifests


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower latency and higher accuracy)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(l2 <= lat and a2 >= acc and (l2, a2) != (lat, acc) for l2, a2 in points)
        if not dominated:
            front.append(i)
    return front


def _plot_group(ax, rows: list[dict], title: str) -> None:
    from matplotlib.ticker import ScalarFormatter

    points = [(float(r["latency_ms"]), float(r["mdice"])) for r in rows]
    front = set(pareto_front(points))
    for i, (row, (lat, acc)) in enumerate(zip(rows, points, strict=True)):
        ax.scatter(lat, acc, s=60 if i in front else 30,
                   color="tab:red" if i in front else "tab:blue", zorder=3)
        ax.annotate(f"{row['variant']} [{row['kernels']}]", (lat, acc), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ordered = sorted(points[i] for i in front)
    ax.step([p[0] for p in ordered], [p[1] for p in ordered], where="post", color="tab:red",
            alpha=0.6, label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("latency, batch 1, median (ms, log scale)")
    ax.set_ylabel("test mDice (foreground classes)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")


def plot_accuracy_latency(rows: list[dict], out: Path) -> list[Path]:
    """One panel, with its own Pareto front, per (dataset, image size, device): rows measured
    on different data or hardware are never compared on one front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and r.get("latency_ms") and r.get("mdice")]
    groups: dict[tuple, list[dict]] = {}
    for row in ok:
        groups.setdefault((row["dataset"], row["image_size"], row["device"]), []).append(row)
    if not groups:
        return []
    fig, axes = plt.subplots(1, len(groups), figsize=(8 * len(groups), 5.5), dpi=120,
                             squeeze=False)
    for ax, ((dataset, size, device), group) in zip(axes[0], sorted(groups.items()), strict=True):
        _plot_group(ax, group, f"Accuracy vs latency: {dataset}, {size} px, {device}")
    fig.tight_layout()
    paths = [out / "accuracy_vs_latency.png", out / "accuracy_vs_latency.svg"]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


REPORT_COLUMNS = [("run", "run"), ("dataset", "dataset"), *results.MARKDOWN_COLUMNS,
                  ("device", "device")]


def write_report(folders: list[Path], out: Path | None = None) -> Path:
    rows, manifests = load_runs(folders)
    out = out or folders[0]
    out.mkdir(parents=True, exist_ok=True)
    rows.sort(key=lambda r: (r["run"], -float(r.get("mdice") or -math.inf)))
    lines = ["# segbench report", ""]
    for folder, manifest in manifests:
        lines += [f"## {folder.name}", *results.method_lines(manifest), ""]
    marked, flagged = results.mark_unstable_timing(rows)
    lines += ["## All rows (sorted by mDice within each run)", "",
              results.markdown_table(marked, REPORT_COLUMNS), "", *flagged]
    plots = plot_accuracy_latency(rows, out)
    if plots:
        lines += [f"![accuracy vs latency]({plots[0].name})",
                  "Red points and line: the Pareto front (no other row is both faster and "
                  "more accurate).", ""]
    sweep_plots = plot_throughput_vs_batch(folders, out)
    if sweep_plots:
        lines += [f"![throughput vs batch]({sweep_plots[0].name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def plot_throughput_vs_batch(folders: list[Path], out: Path) -> list[Path]:
    """Throughput against batch size from the run folders' batch sweeps (sweep.csv): one line
    per row (architecture variant, kernels, mode), one panel per (dataset, image size,
    device); a line whose next batch did not fit ends in an x. Writes
    throughput_vs_batch.png/.svg into `out`; [] when no folder has a sweep."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[tuple, dict[str, list]] = {}
    for folder in folders:
        path = folder / "sweep.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            for entry in csv.DictReader(f):
                panel = (entry["dataset"], entry["image_size"], entry["device"])
                label = f"{entry['variant']} [{entry['kernels']}, {entry['mode']}]"
                if len(folders) > 1:
                    label = f"{folder.name}: {label}"
                curve = lines.setdefault(panel, {}).setdefault(label, [[], [], None])
                if entry["status"] == "ok":
                    curve[0].append(int(entry["batch"]))
                    curve[1].append(float(entry["throughput_img_s"]))
                else:
                    curve[2] = int(entry["batch"])
    if not lines:
        return []
    fig, axes = plt.subplots(1, len(lines), figsize=(8 * len(lines), 5.5), dpi=120,
                             squeeze=False)
    for ax, ((dataset, size, device), curves) in zip(axes[0], sorted(lines.items()),
                                                      strict=True):
        for label, (batches, rates, failed_at) in sorted(curves.items()):
            (drawn,) = ax.plot(batches, rates, marker="o", label=label)
            if failed_at is not None and batches:
                ax.scatter([batches[-1]], [rates[-1]], marker="x", s=80, zorder=3,
                           color=drawn.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (log2)")
        ax.set_ylabel("inference throughput (images/s, median of rounds)")
        ax.set_title(f"Throughput vs batch: {dataset}, {size} px, {device}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "throughput_vs_batch.png", out / "throughput_vs_batch.svg"]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths
