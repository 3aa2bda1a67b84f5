"""`segbench report`: one table and the figures (segbench.plots) from one or many run folders."""

from __future__ import annotations

import math
from pathlib import Path

from segbench import plots, results
from segbench.config import UsageError


def load_runs(folders: list[Path]) -> tuple[list[plots.RunData], list[tuple[Path, dict]]]:
    runs, manifests = [], []
    for folder in folders:
        manifest = results.read_manifest(folder)
        if manifest is None or not (folder / "results.csv").is_file():
            raise UsageError(f"{folder} is not a segbench run folder (no run.json/results.csv)")
        manifests.append((folder, manifest))
        runs.append(plots.read_run(folder))
    return runs, manifests


REPORT_COLUMNS = [("run", "run"), ("dataset", "dataset"), *results.MARKDOWN_COLUMNS,
                  ("device", "device")]


def write_report(folders: list[Path], out: Path | None = None, cost: str | None = None,
                 ) -> tuple[Path, list[Path]]:
    """report.md and every figure the folders have data for; returns their paths."""
    runs, manifests = load_runs(folders)
    out = out or folders[0]
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for run in runs for row in run.rows]
    rows.sort(key=lambda r: (r["run"], -float(r.get("mdice") or -math.inf)))
    lines = ["# segbench report", ""]
    for folder, manifest in manifests:
        lines += [f"## {folder.name}", *results.method_lines(manifest, run_rows(rows, folder)),
                  ""]
    marked, flagged = results.mark_unstable_timing(rows)
    lines += ["## All rows (sorted by mDice within each run)", "",
              results.markdown_table(marked, REPORT_COLUMNS), "", *flagged]
    figures = plots.draw_figures(runs, out, cost)
    if figures:
        lines += ["## Figures", "", "Each figure states its conditions and spread in its "
                  "caption; an SVG lies beside each PNG.", ""]
        lines += [f"![{title}]({path.name})\n" for title, path in figures]
    missing = [text for name, text in (("summary", "no summary.csv: no forest plot of "
                                        "intervals"),
                                       ("history", "no history.csv: no training curves"))
               if not any(getattr(run, name) for run in runs)]
    if missing:
        lines += [f"({'; '.join(missing)})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md", [path for _, path in figures]


def run_rows(rows: list[dict], folder: Path) -> list[dict]:
    return [row for row in rows if row["run"] == folder.name]
