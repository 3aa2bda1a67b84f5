"""summary.md of one scripts/gpu_check.sh run: one table per kernel, the end-to-end table, the
goals of issue 17 with their figures, and each step's outcome.

    python benchmarks/gpu_summary.py results/gpu/<date>_<gpu>

Reads, in that folder: run.tsv and steps.tsv (the script's record of the run and of each step),
kernels_*.json (rows of benchmarks/_roofline.py) and e2e/results.csv (segbench run --kernels
both). A ratio is
printed as a difference only when the two timings' p20-p80 intervals do not overlap; otherwise
it is marked "~" (a tie at this spread). What is missing is said, never left out.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

RATIO_PREFIX = "ratio_vs_"

# (what, kernel, case starts with, dtype, passes, implementation, figure, at least)
GOALS = [
    ("window attention >= 4x eager", "window_attention", "canonical", "bf16", "fwd", "triton",
     "ratio_vs_eager", 4.0),
    ("window attention >= 1.5x SDPA (bias+mask materialised)", "window_attention", "canonical",
     "bf16", "fwd", "triton", "ratio_vs_sdpa", 1.5),
    ("unpool >= 1.5x F.max_unpool2d", "max_unpool", "unpool canonical", "bf16", "fwd",
     "triton-int64", "ratio_vs_eager", 1.5),
    ("dwsep conv >= 2.5x eager", "dwsep_conv", "canonical", "bf16", "fwd", "triton",
     "ratio_vs_eager", 2.5),
    ("dwsep conv >= 1.5x torch.compile", "dwsep_conv", "canonical", "bf16", "fwd", "triton",
     "ratio_vs_compile", 1.5),
    ("dwsep conv >= 70% of the bandwidth floor", "dwsep_conv", "canonical", "bf16", "fwd",
     "triton", "pct_of_copy_bw", 70.0),
]
END_TO_END_GOAL = 1.15  # Triton over torch latency, per architecture


def _read_tsv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def run_facts(folder: Path) -> dict:
    """run.tsv (mode, device, commit, started) and steps.tsv, as scripts/gpu_check.sh wrote
    them."""
    facts = {key: value for key, value in _read_tsv(folder / "run.tsv")}
    steps = _read_tsv(folder / "steps.tsv")[1:]
    facts["steps"] = [{"name": name, "exit": int(code), "seconds": int(seconds),
                       "limit_s": int(limit), "timed_out": int(code) in (124, 137)}
                      for name, code, seconds, limit in steps]
    return facts


def kernel_rows(folder: Path) -> tuple[list[dict], list[dict]]:
    """Every roofline row, and the method block of each file."""
    rows, methods = [], []
    for path in sorted(folder.glob("kernels_*.json")):
        data = json.loads(path.read_text())
        rows += data["rows"]
        methods.append(data["method"] | {"file": path.name, "copy_gb_s": data["copy_gb_s"]})
    return rows, methods


def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _overlap(a: dict, b: dict) -> bool:
    return a["p20_ms"] <= b["p80_ms"] and b["p20_ms"] <= a["p80_ms"]


def _ratio_cell(row: dict, baseline: str, by_impl: dict) -> str:
    value = row.get(RATIO_PREFIX + baseline)
    if value is None:
        return ""
    other = by_impl.get(baseline)
    mark = "~" if other is not None and _overlap(row, other) else ""
    return f"{mark}{value:.2f}x"


def kernel_table(rows: list[dict]) -> list[str]:
    """One markdown table: a row per implementation of each case, ratios on the candidates."""
    baselines = sorted({k[len(RATIO_PREFIX):] for r in rows for k in r if
                        k.startswith(RATIO_PREFIX)})
    head = ["case", "dtype", "passes", "implementation", "ms (p20-p80)",
            *[f"vs {b}" for b in baselines], "GB/s", "% of copy", "TFLOP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["case"], r["dtype"], r["passes"]), {})[r["implementation"]] = r
    for (case, dtype, passes), by_impl in cases.items():
        for impl, r in by_impl.items():
            timing = f"{r['ms']:.4f} ({r['p20_ms']:.4f}-{r['p80_ms']:.4f})"
            cells = [case, dtype, passes, impl, timing,
                     *[_ratio_cell(r, b, by_impl) for b in baselines],
                     _fmt(r["gb_s"], 0), _fmt(r["pct_of_copy_bw"], 0), _fmt(r.get("tflop_s"))]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def end_to_end(folder: Path) -> list[dict]:
    """Per architecture: torch and triton rows of the same weights, and their ratios."""
    path = folder / "e2e" / "results.csv"
    if not path.exists():
        return []
    with path.open() as f:
        records = list(csv.DictReader(f))
    by_variant: dict[str, dict] = {}
    for r in records:
        by_variant.setdefault(r["variant"], {})[r["kernels"]] = r
    table = []
    for variant, both in by_variant.items():
        torch_row, triton_row = both.get("torch"), both.get("triton")
        entry = {"variant": variant, "arch": (torch_row or triton_row)["arch"],
                 "status": "/".join(r["status"] for r in (torch_row, triton_row) if r)}
        for name, r in (("torch", torch_row), ("triton", triton_row)):
            entry[f"{name}_latency_ms"] = _float(r, "latency_ms")
            entry[f"{name}_p95_ms"] = _float(r, "latency_p95_ms")
            entry[f"{name}_throughput"] = _float(r, "throughput_img_s")
        entry["agrees_with_torch"] = _float(triton_row, "agrees_with_torch")
        entry["latency_ratio"] = entry["torch_latency_ms"] / entry["triton_latency_ms"]
        entry["throughput_ratio"] = entry["triton_throughput"] / entry["torch_throughput"]
        table.append(entry)
    return table


def _float(row: dict | None, key: str) -> float:
    try:
        return float(row[key]) if row and row.get(key) not in (None, "") else math.nan
    except ValueError:
        return math.nan


def end_to_end_table(entries: list[dict]) -> list[str]:
    head = ["arch", "variant", "torch ms (p95)", "triton ms (p95)", "latency ratio",
            "throughput ratio", "agrees with torch", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        lines.append("| " + " | ".join([
            e["arch"], e["variant"],
            f"{_fmt(e['torch_latency_ms'])} ({_fmt(e['torch_p95_ms'])})",
            f"{_fmt(e['triton_latency_ms'])} ({_fmt(e['triton_p95_ms'])})",
            f"{_fmt(e['latency_ratio'])}x", f"{_fmt(e['throughput_ratio'])}x",
            _fmt(e["agrees_with_torch"], 4), e["status"]]) + " |")
    return lines


def goal_lines(rows: list[dict], entries: list[dict]) -> list[str]:
    lines = []
    for what, kernel, case, dtype, passes, impl, figure, least in GOALS:
        found = [r for r in rows if r["kernel"] == kernel and r["case"].startswith(case)
                 and r["dtype"] == dtype and r["passes"] == passes
                 and r["implementation"] == impl and figure in r]
        if not found:
            lines.append(f"- {what}: not measured in this run")
            continue
        for r in found:
            verdict = "met" if r[figure] >= least else "MISSED"
            unit = "%" if figure == "pct_of_copy_bw" else "x"
            lines.append(f"- {what}: {verdict}, {r[figure]:.2f}{unit} ({r['case']})")
    for e in entries:
        ratio = e["latency_ratio"]
        verdict = ("not measured" if math.isnan(ratio)
                   else "met" if ratio >= END_TO_END_GOAL else "MISSED")
        lines.append(f"- {e['variant']} end to end >= {END_TO_END_GOAL}x with Triton: {verdict}, "
                     f"{_fmt(ratio)}x")
    if not entries:
        lines.append("- end to end: not measured in this run")
    return lines


def step_lines(steps: list[dict]) -> list[str]:
    lines = ["| step | exit | seconds | limit s |", "|---|---|---|---|"]
    for s in steps:
        status = "timed out" if s["timed_out"] else str(s["exit"])
        lines.append(f"| {s['name']} | {status} | {s['seconds']:.0f} | {s['limit_s']} |")
    return lines


def summary(folder: Path) -> str:
    manifest = run_facts(folder)
    rows, methods = kernel_rows(folder)
    entries = end_to_end(folder)
    out = [f"# GPU check: {folder.name}", "",
           f"Mode: {manifest.get('mode', 'unknown')}; device: {manifest.get('device', 'unknown')}; "
           f"commit: {manifest.get('commit', 'unknown')}; started {manifest.get('started', '?')}.",
           ""]
    if manifest.get("mode") == "dry-run":
        out += ["A CPU rehearsal in the Triton interpreter on tiny shapes: it shows that every "
                "step runs; none of its figures is a measurement.", ""]
    out += ["## Steps", "", *step_lines(manifest["steps"]), ""]
    out += ["## Kernels", ""]
    for m in methods:
        out.append(f"- {m['file']}: {m['device']}, {m['timer']}, {m['warmup']} warm-up and "
                   f"{m['repeats']} timed calls, median (p20-p80), L2 {m['l2']}, FLOPs "
                   f"{m['flop_convention']}, copy bandwidth {m['copy_gb_s']:.0f} GB/s measured "
                   f"in the same run, torch {m['torch']}, {m['threads']} threads")
    out += ["", "Ratios: baseline ms / candidate ms; '~' marks overlapping p20-p80 intervals "
            "(no difference at this spread).", ""]
    if not rows:
        out += ["No kernel benchmark rows (see the steps above).", ""]
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        out += [f"### {kernel}", "", *kernel_table([r for r in rows if r["kernel"] == kernel]),
                ""]
    out += ["## End to end (segbench run --kernels both, the same weights)", ""]
    out += (end_to_end_table(entries) if entries
            else ["No end-to-end results (see the steps above)."])
    out += ["", "Latency ratio: torch ms / triton ms (batch 1, median); throughput ratio: "
            "triton / torch images per second.", "", "## Goals (issue 17)", "",
            *goal_lines(rows, entries), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/gpu_summary.py RESULTS_FOLDER (a folder that "
              "scripts/gpu_check.sh wrote)", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    (folder / "summary.md").write_text(summary(folder))
    print(f"gpu summary: wrote {folder / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
