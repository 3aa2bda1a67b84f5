"""Result records, and what a run folder's derived files say: results.csv, results.md and
results.json are rendered here from the rows and the manifest (segbench.store writes them).

A row is keyed by every configuration field that changes a figure, and each key field is also
a column, so a row carries its own conditions and resuming with other settings adds rows
instead of relabelling old ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import subprocess
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from segbench.measure.flops import FLOP_CONVENTION

FORMAT = 2  # of run.json; format 1 (no "starts") is upgraded on reading


@dataclass
class Record:
    # identity: the row key, every field that changes a result
    arch: str
    variant: str
    kernels: str  # the backend the row was measured with
    dataset: str
    image_size: int
    device: str
    profile: str
    epochs: int = 0
    recipe: str = "family"  # "family" | "shared" (segbench.recipes)
    lr_sweep: str = ""  # "": the recipe's lr; else the lr factors tried, e.g. "0.1,1,10"
    seed: int = 0
    split_seed: int = 0
    fold: int = 0
    folds: int = 1
    mode: str = ""  # the deployment mode's label, e.g. eager-fp32
    threads: int = 0
    train_kernels: str = ""  # the backend the weights were trained with
    pretrained: str = ""
    # outcome
    status: str = "ok"  # ok | error | oom | diverged
    reason: str = ""
    run_start: int = 0  # index (from 1) of the start in run.json that measured the row
    dtype: str = ""
    params_m: float = math.nan
    gflops: float = math.nan
    flops_uncounted_ops: str = ""
    miou: float = math.nan
    mdice: float = math.nan
    pixel_accuracy: float = math.nan
    iou_per_class: str = ""
    dice_per_class: str = ""
    hd95_px: float = math.nan
    asd_px: float = math.nan
    nsd: float = math.nan  # normalised surface Dice at nsd_tolerance_px
    hd95_mm: float = math.nan
    asd_mm: float = math.nan
    majority_baseline_mdice: float = math.nan
    pixel_prior_baseline_mdice: float = math.nan  # the training split's likeliest class per pixel
    agrees_with_torch: float = math.nan  # fraction of test pixels labelled as the torch row
    latency_ms: float = math.nan
    latency_p95_ms: float = math.nan
    throughput_img_s: float = math.nan
    throughput_batch: int = 0
    energy_j_per_img: float = math.nan
    peak_mem_mb: float = math.nan
    train_peak_mem_mb: float = math.nan
    train_batch: int = 0
    train_time_s: float = math.nan
    best_epoch: int = 0
    best_val_mdice: float = math.nan
    converged: bool | None = None  # segbench.train.converged of the history; None: not trained
    # the recipe trained with: its family, optimizer, lr (the pick with --lr-sweep), decay
    recipe_name: str = ""
    optimizer: str = ""
    lr: float = math.nan
    weight_decay: float = math.nan
    recipe_description: str = ""
    lr_tried: str = ""  # with --lr-sweep: "lr:best val mDice" per lr tried, or lr:diverged
    extra: dict = field(default_factory=dict)  # columns added by later measurements
    tables: dict = field(default_factory=dict)  # name -> list of dicts, e.g. history per epoch

    @property
    def key(self) -> tuple:
        return tuple(str(getattr(self, f)) for f in KEY_FIELDS)

    def update(self, measured: dict) -> None:
        """Set the columns a measurement returned: Record fields by name, the rest in extra."""
        for name, value in measured.items():
            if name in COLUMN_FIELDS:
                setattr(self, name, value)
            else:
                self.extra[name] = value

    def failed(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason[:300]

    def to_row(self) -> dict:
        row = {name: getattr(self, name) for name in COLUMN_FIELDS}
        row.update(self.extra)
        return row


KEY_FIELDS = ("arch", "variant", "kernels", "dataset", "image_size", "device", "profile",
              "epochs", "recipe", "lr_sweep", "seed", "split_seed", "fold", "folds", "mode",
              "threads", "train_kernels", "pretrained")
COLUMN_FIELDS = tuple(f.name for f in fields(Record) if f.name not in ("extra", "tables"))
# a row counts as finished only when these are present and finite (or it failed for good)
REQUIRED_COLUMNS = ("params_m", "gflops", "miou", "mdice", "pixel_accuracy", "latency_ms",
                    "latency_p95_ms", "throughput_img_s", "train_time_s")
TERMINAL_FAILURES = ("diverged",)  # the same seed diverges again: not retried on resume


def row_key(row: dict) -> tuple:
    return tuple(str(row.get(f, "")) for f in KEY_FIELDS)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def is_finished(row: dict) -> bool:
    if row.get("status") in TERMINAL_FAILURES:
        return True
    return row.get("status") == "ok" and all(_finite(row.get(c)) for c in REQUIRED_COLUMNS)


def _columns(rows: list[dict]) -> list[str]:
    columns = list(COLUMN_FIELDS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def _plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return round(value, 6)
    return value


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or _columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _plain(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def table_csv_text(name: str, entries: list[tuple[dict, dict]]) -> str | None:
    """One CSV of a per-row table (e.g. history) over all rows, each line led by its row's key;
    None when no row has the table."""
    lines = [{**{k: row.get(k) for k in KEY_FIELDS}, **line}
             for row, tables in entries for line in tables.get(name, [])]
    if not lines:
        return None
    columns = list(KEY_FIELDS)
    for line in lines:
        columns += [c for c in line if c not in columns]
    return csv_text(lines, columns)


def read_rows(folder: Path) -> list[dict]:
    path = folder / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device_facts: dict) -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **device_facts,
    }


def upgrade_manifest(manifest: dict) -> dict:
    """A format-1 run.json (one configuration, no start history) in today's shape."""
    if manifest.get("format") == FORMAT:
        return manifest
    config = dict(manifest["config"])
    config.setdefault("seeds", [config.pop("seed", 0)])
    return {"format": FORMAT,
            "study": {k: config[k] for k in ("dataset", "device", "profile")},
            "dataset": manifest.get("dataset", {}), "method": manifest["method"],
            "starts": [{"config": config, "environment": manifest["environment"]}]}


def read_manifest(folder: Path) -> dict | None:
    path = folder / "run.json"
    if not path.is_file():
        return None
    return upgrade_manifest(json.loads(path.read_text()))


MARKDOWN_COLUMNS = [
    ("arch", "arch"), ("variant", "variant"), ("kernels", "kernels"), ("status", "status"),
    ("params_m", "params (M)"), ("gflops", "GFLOPs"), ("mdice", "mDice"), ("miou", "mIoU"),
    ("hd95_px", "HD95 px"), ("hd95_mm", "HD95 mm"), ("nsd", "NSD"),
    ("latency_ms", "latency ms (p50)"), ("latency_p95_ms", "p95 ms"),
    ("throughput_img_s", "img/s"), ("throughput_batch", "@batch"),
    ("peak_mem_mb", "infer MB"), ("train_peak_mem_mb", "train MB"),
    ("train_img_s", "train img/s"), ("train_time_s", "train s"),
]
# shown in results.md only when some row has them
OPTIONAL_COLUMNS = [("compile_s", "compile s")]
UNSTABLE_MARK = "†"
# key columns shown in results.md only when the rows differ in them
VARYING_COLUMNS = [("seed", "seed"), ("split_seed", "split seed"), ("fold", "fold"),
                   ("mode", "mode"), ("threads", "threads"), ("train_kernels", "trained with"),
                   ("recipe", "recipe"), ("lr_sweep", "lr sweep"), ("epochs", "epochs"),
                   ("pretrained", "pretrained")]
LR_COLUMN = ("lr", "lr")  # shown when some row picked its lr by a sweep
NOT_CONVERGED_MARK = "‡"
NOT_CONVERGED_RULE = ("best val epoch in the last 20% of the epochs and val mDice up by more "
                      "than 0.005 over the last quarter (segbench.train.converged)")


def cell(value) -> str:
    if value in ("", None):
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value).replace("|", "/")
    if math.isnan(number):
        return "–"
    if number.is_integer() and abs(number) >= 1:
        return str(int(number))
    return f"{number:.3g}" if abs(number) < 100 else f"{number:.0f}"


def markdown_table(rows: list[dict], columns=MARKDOWN_COLUMNS) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _start_line(number: int, start: dict) -> str:
    cfg, env = start["config"], start["environment"]
    seeds = ",".join(map(str, cfg["seeds"]))
    split = "" if cfg.get("split_seed") is None else f", split seed {cfg['split_seed']}"
    folds = f", {cfg['folds']} folds" if cfg.get("folds", 1) > 1 else ""
    modes = f", modes {' '.join(cfg['modes'])}" if cfg.get("modes") else ""
    commit = (env.get("git_commit") or "unknown")[:10]
    return (f"- run start {number} ({env['started_utc']}, git {commit}, torch {env['torch']}, "
            f"triton {env['triton']}): seeds {seeds}{split}{folds}; kernels {cfg['kernels']}; "
            f"CPU threads: {cfg['threads']}{modes}")


def recipe_lines(manifest: dict) -> list[str]:
    """The recipes the starts trained with, architectures with one recipe named together."""
    lines = []
    for start in manifest["starts"]:
        recipes = start.get("recipes")
        if not recipes:  # a start of a segbench before recipes: its rows say "shared"
            continue
        by_description: dict[str, list[str]] = {}
        for arch, recipe in recipes.items():
            by_description.setdefault(recipe["description"], []).append(arch)
        sweep = (" and --lr-sweep (each row's lr: the pick on the validation split among 0.1x, "
                 "1x, 10x the lr below; lr_tried: what each scored)"
                 if start["config"].get("lr_sweep") else "")
        body = "; ".join(f"{', '.join(archs)}: {description}"
                         for description, archs in by_description.items())
        line = f"- recipe {start['config']['recipe']}{sweep}: {body}"
        if line not in lines:
            lines.append(line)
    return lines


def _dtype_line(rows: list[dict]) -> str:
    dtypes = sorted({str(row.get("dtype")) for row in rows if row.get("dtype")})
    if len(dtypes) == 1:
        return f"- dtype: {dtypes[0]}"
    return "- dtype: per row (columns dtype and mode)"


def _speed_lines(profile: dict, method: dict) -> list[str]:
    batches = tuple(profile["throughput_batches"])
    timing = method.get("timing")
    if timing is None:  # a folder measured before timings came in rounds
        return [f"- latency: batch 1, {profile['latency_warmup']} warm-up + "
                f"{profile['latency_repeats']} timed runs, median and p95 ({method['timer']})",
                f"- throughput: images/s at the largest of batches {batches} that fits, median "
                f"of {profile['throughput_repeats']} runs"]
    rounds = timing["rounds"]
    return [f"- latency: batch 1, {profile['latency_warmup']} warm-up, {rounds} rounds of "
            f"{profile['latency_repeats']} timed calls ({method['timer']})",
            f"- throughput: images/s at the largest of batches {batches} that fits, {rounds} "
            f"rounds of {profile['throughput_repeats']} calls; training: images/s over "
            f"{rounds} rounds of {profile['throughput_repeats']} training steps at batch "
            f"{profile['batch_size']}, eager",
            f"- timing: {timing['text']}"]


def method_lines(manifest: dict, rows: list[dict] = ()) -> list[str]:
    """The measurement context every table must carry; what varies by row is in its columns."""
    study, method = manifest["study"], manifest["method"]
    profile = study["profile"]
    device_name = manifest["starts"][-1]["environment"]["device_name"]
    return [
        f"- device: {device_name} ({study['device']})",
        f"- profile: {profile['name']} ({profile['description']}); dataset {study['dataset']} at "
        f"{profile['image_size']} px, epochs {profile['epochs']}",
        *[_start_line(i, start) for i, start in enumerate(manifest["starts"], 1)],
        *recipe_lines(manifest),
        _dtype_line(list(rows)),
        f"- FLOPs: {FLOP_CONVENTION}, one forward at {profile['image_size']} px",
        *_speed_lines(profile, method),
        f"- memory: {method['memory']}; training step at batch {profile['batch_size']}",
        f"- accuracy: {method['accuracy']}",
        f"- boundary: {method['boundary']}",
    ]


def is_not_converged(row: dict) -> bool:
    return str(row.get("converged")).lower() == "false"


def mark_not_converged(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows that had not converged get their mDice cell marked; and the line that says what
    the mark means, to go under the table ([] when no row is marked)."""
    marked = [{**row, "mdice": f"{cell(row.get('mdice'))} {NOT_CONVERGED_MARK}"}
              if is_not_converged(row) else row for row in rows]
    if marked == rows:
        return rows, []
    return marked, [f"{NOT_CONVERGED_MARK} not converged: {NOT_CONVERGED_RULE}; more epochs "
                    "could change its score.", ""]


def _baseline_range(rows: list[dict], column: str) -> str | None:
    """'0.412 on this test split' or '0.398 to 0.431 across the test splits'; None when no
    row has it."""
    values = sorted({round(float(r[column]), 3) for r in rows if _finite(r.get(column))})
    if not values:
        return None
    if len(values) == 1:
        return f"{values[0]:.3f} on this test split"
    return f"{values[0]:.3f} to {values[-1]:.3f} across the test splits"


def baseline_lines(rows: list[dict]) -> list[str]:
    prior = _baseline_range(rows, "pixel_prior_baseline_mdice")
    majority = _baseline_range(rows, "majority_baseline_mdice")
    lines = []
    if prior:
        lines.append(f"Baseline: predicting the training split's most frequent class at each "
                     f"pixel scores mDice {prior}.")
    if majority:
        lines.append(f"Majority-class baseline (the training split's most frequent class "
                     f"everywhere): mDice {majority}.")
    return [*lines, ""] if lines else []


def _failure_line(row: dict) -> str:
    fold = f", fold {row['fold']}" if str(row.get("folds", "1")) not in ("", "1") else ""
    return (f"- {row['variant']} ({row['kernels']}, seed {row['seed']}{fold}): "
            f"{row['status']}: {row.get('reason', '')}")


def is_timing_unstable(row: dict) -> bool:
    return str(row.get("timing_unstable")).lower() == "true"


def mark_unstable_timing(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows whose timing was flagged get their speed cells marked; and the lines that say why,
    to go under the table ([] when none is flagged)."""
    marked, reasons = [], []
    for row in rows:
        if not is_timing_unstable(row):
            marked.append(row)
            continue
        marked.append({**row, **{key: f"{cell(row.get(key))} {UNSTABLE_MARK}"
                                 for key in ("latency_ms", "throughput_img_s", "train_img_s")}})
        reasons.append(f"- {row['variant']} ({row['kernels']}, {row['mode']}, seed "
                       f"{row['seed']}): {row.get('timing_reason', '')}")
    if not reasons:
        return marked, []
    return marked, [f"{UNSTABLE_MARK} timing unstable (re-time with `segbench measure`):",
                    *reasons, ""]


def markdown_text(title: str, rows: list[dict], manifest: dict) -> str:
    varying = [(key, name) for key, name in VARYING_COLUMNS
               if len({str(row.get(key)) for row in rows}) > 1]
    varying += [LR_COLUMN] * any(row.get("lr_sweep") for row in rows)
    optional = [(key, name) for key, name in OPTIONAL_COLUMNS
                if any(_finite(row.get(key)) for row in rows)]
    columns = MARKDOWN_COLUMNS[:3] + varying + MARKDOWN_COLUMNS[3:] + optional
    marked, not_converged = mark_not_converged(rows)
    marked, flagged = mark_unstable_timing(marked)
    lines = [f"# segbench results: {title}", "", *method_lines(manifest, rows), "",
             markdown_table(marked, columns), "", *not_converged, *flagged,
             *baseline_lines(rows)]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["Failures:", *map(_failure_line, failed), ""]
    return "\n".join(lines)


def json_text(rows: list[dict], manifest: dict) -> str:
    return json.dumps({"manifest": manifest, "rows": rows}, indent=2, default=str) + "\n"
