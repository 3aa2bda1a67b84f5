"""Result records and the files of a run folder: results.csv, results.md, run.json.

Every write goes to a temporary file that replaces the real one, so an interrupted or failing
run leaves the earlier rows intact; rows are keyed so that a re-run resumes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch

from segbench.measure.flops import FLOP_CONVENTION


@dataclass
class Record:
    arch: str
    variant: str
    kernels: str
    dataset: str
    image_size: int
    device: str
    profile: str
    status: str = "ok"  # ok | error | oom | interrupted
    reason: str = ""
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
    epochs: int = 0
    best_epoch: int = 0
    extra: dict = field(default_factory=dict)  # metrics added by later measurements

    KEY_FIELDS = ("arch", "variant", "kernels", "dataset", "image_size", "device")

    @property
    def key(self) -> tuple:
        return tuple(str(getattr(self, f)) for f in self.KEY_FIELDS)

    def to_row(self) -> dict:
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        row.update(self.extra)
        return row


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def read_rows(folder: Path) -> list[dict]:
    path = folder / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def row_key(row: dict) -> tuple:
    return tuple(str(row.get(f, "")) for f in Record.KEY_FIELDS)


def _columns(rows: list[dict]) -> list[str]:
    columns = [f.name for f in fields(Record) if f.name != "extra"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def write_csv(folder: Path, rows: list[dict]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(folder / "results.csv", buffer.getvalue())


def upsert(folder: Path, record: Record) -> list[dict]:
    """Add a row to the folder's results.csv, replacing an earlier row with the same key."""
    rows = [r for r in read_rows(folder) if row_key(r) != record.key]
    rows.append({k: _plain(v) for k, v in record.to_row().items()})
    write_csv(folder, rows)
    return rows


def _plain(value):
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float):
        return round(value, 6)
    return value


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device_facts: dict) -> dict:
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


def write_manifest(folder: Path, manifest: dict) -> None:
    _atomic_write(folder / "run.json", json.dumps(manifest, indent=2, default=str) + "\n")


def read_manifest(folder: Path) -> dict | None:
    path = folder / "run.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


MARKDOWN_COLUMNS = [
    ("arch", "arch"), ("variant", "variant"), ("kernels", "kernels"), ("status", "status"),
    ("params_m", "params (M)"), ("gflops", "GFLOPs"), ("mdice", "mDice"), ("miou", "mIoU"),
    ("hd95_px", "HD95 px"), ("nsd", "NSD"),
    ("latency_ms", "latency ms (p50)"), ("latency_p95_ms", "p95 ms"),
    ("throughput_img_s", "img/s"), ("throughput_batch", "@batch"),
    ("peak_mem_mb", "infer MB"), ("train_peak_mem_mb", "train MB"),
    ("train_time_s", "train s"),
]


def _cell(value) -> str:
    if value in ("", None):
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value).replace("|", "/")
    if number.is_integer() and abs(number) >= 1:
        return str(int(number))
    return f"{number:.3g}" if abs(number) < 100 else f"{number:.0f}"


def markdown_table(rows: list[dict], columns=MARKDOWN_COLUMNS) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def method_lines(manifest: dict) -> list[str]:
    """The measurement context every table must carry."""
    cfg, method = manifest["config"], manifest["method"]
    profile = cfg["profile"]
    return [
        f"- device: {manifest['environment']['device_name']} ({cfg['device']}); "
        f"torch {manifest['environment']['torch']}, triton {manifest['environment']['triton']}",
        f"- profile: {profile['name']} ({profile['description']}); dataset {cfg['dataset']} at "
        f"{profile['image_size']} px; seed {cfg['seed']}",
        f"- dtype: {method['dtype']}; CPU threads: {cfg['threads']}",
        f"- FLOPs: {FLOP_CONVENTION}, one forward at {profile['image_size']} px",
        f"- latency: batch 1, {profile['latency_warmup']} warm-up + {profile['latency_repeats']} "
        f"timed runs, median and p95 ({method['timer']})",
        f"- throughput: images/s at the largest of batches {profile['throughput_batches']} that "
        f"fits, median of {profile['throughput_repeats']} runs",
        f"- memory: {method['memory']}; training step at batch {profile['batch_size']}",
        f"- accuracy: {method['accuracy']}",
        f"- boundary: {method['boundary']}",
    ]


def write_markdown(folder: Path, rows: list[dict], manifest: dict) -> None:
    failed = [r for r in rows if r.get("status") != "ok"]
    lines = [f"# segbench results: {folder.name}", "", *method_lines(manifest), "",
             markdown_table(rows), ""]
    baseline = [r.get("majority_baseline_mdice") for r in rows if r.get("majority_baseline_mdice")]
    if baseline:
        lines += [f"Majority-class baseline on the test split: mDice {float(baseline[0]):.3f}.", ""]
    if failed:
        lines += ["Failures:", *[f"- {r['variant']} ({r['kernels']}): {r['status']}: "
                                 f"{r.get('reason', '')}" for r in failed], ""]
    _atomic_write(folder / "results.md", "\n".join(lines))


def write_json(folder: Path, rows: list[dict], manifest: dict) -> None:
    _atomic_write(folder / "results.json",
                  json.dumps({"manifest": manifest, "rows": rows}, indent=2, default=str) + "\n")


def record_from_failure(base: Record, status: str, reason: str) -> Record:
    return Record(**{**asdict(base), "status": status, "reason": reason[:300]})
