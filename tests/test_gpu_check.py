"""scripts/gpu_check.sh and its summary: benchmarks/gpu_summary.py on a synthetic results folder,
and the whole script rehearsed on the CPU (--dry-run: tiny shapes in the Triton interpreter)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks/gpu_summary.py")
gpu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_summary)

METHOD = {"device": "NVIDIA H200", "timer": "CUDA events", "warmup": 25, "repeats": 100,
          "l2": "flushed before each timed call", "flop_convention": "2 per multiply-add",
          "torch": "2.11.0", "threads": 16}


def row(kernel, case, impl, ms, spread, **ratios):
    return {"kernel": kernel, "case": case, "dtype": "bf16", "passes": "fwd",
            "implementation": impl, "ms": ms, "p20_ms": ms - spread, "p80_ms": ms + spread,
            "gb_s": 2000.0, "pct_of_copy_bw": 46.5, "bytes": 20_000_000, "flops": None,
            "copy_gb_s": 4300.0, **{f"ratio_vs_{k}": v for k, v in ratios.items()}}


def write_results(folder: Path) -> None:
    (folder / "run.tsv").write_text("mode\tgpu\ndevice\tnvidia-h200\ncommit\tabc1234\n"
                                    "started\t2026-12-02T10:00:00+00:00\n")
    (folder / "steps.tsv").write_text("step\texit\tseconds\tlimit_s\ngpu-tests\t0\t61\t100\n"
                                      "bench-dwsep-conv\t124\t60\t60\n")
    attention = [
        row("window_attention", "canonical-swin-t-224-stage1 swmsa", "triton", 0.010, 0.001,
            eager=5.0, sdpa=1.2),
        row("window_attention", "canonical-swin-t-224-stage1 swmsa", "eager", 0.050, 0.001),
        row("window_attention", "canonical-swin-t-224-stage1 swmsa", "sdpa", 0.012, 0.0015),
    ]
    unpool = [row("max_unpool", "unpool canonical-8x512x64x64", "triton-int64", 0.020, 0.001,
                  eager=1.6),
              row("max_unpool", "unpool canonical-8x512x64x64", "eager", 0.032, 0.001)]
    for name, rows in (("window_attention", attention), ("max_unpool", unpool)):
        (folder / f"kernels_{name}.json").write_text(json.dumps(
            {"method": METHOD, "copy_gb_s": 4300.0, "rows": rows}))
    (folder / "e2e").mkdir()
    with (folder / "e2e" / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["arch", "variant", "kernels", "status", "latency_ms",
                                    "latency_p95_ms", "throughput_img_s", "agrees_with_torch"])
        writer.writeheader()
        for arch, torch_ms, triton_ms in (("swin", 10.0, 8.0), ("segnet", 10.0, 9.5)):
            writer.writerow(dict(arch=arch, variant=f"{arch}-paper", kernels="torch",
                                 status="ok", latency_ms=torch_ms, latency_p95_ms=torch_ms + 1,
                                 throughput_img_s=100.0, agrees_with_torch=""))
            writer.writerow(dict(arch=arch, variant=f"{arch}-paper", kernels="triton",
                                 status="ok", latency_ms=triton_ms, latency_p95_ms=triton_ms + 1,
                                 throughput_img_s=120.0, agrees_with_torch=0.9995))


def test_summary_has_a_table_per_kernel_the_end_to_end_table_and_every_goal(tmp_path):
    write_results(tmp_path)
    assert gpu_summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "### window_attention" in text and "### max_unpool" in text
    assert "| bench-dwsep-conv | timed out | 60 | 60 |" in text
    # a ratio counts only when the p20-p80 intervals do not overlap
    assert "| 5.00x |" in text and "~1.20x" in text
    assert "copy bandwidth 4300 GB/s measured in the same run" in text
    assert "- window attention >= 4x eager: met, 5.00x" in text
    assert "- window attention >= 1.5x SDPA (bias+mask materialised): MISSED, 1.20x" in text
    assert "- unpool >= 1.5x F.max_unpool2d: met, 1.60x" in text
    assert "- dwsep conv >= 2.5x eager: not measured in this run" in text
    assert "| swin | swin-paper | 10.00 (11.00) | 8.00 (9.00) | 1.25x | 1.20x | 0.9995 | ok/ok |" \
        in text
    assert "- swin-paper end to end >= 1.15x with Triton: met, 1.25x" in text
    assert "- segnet-paper end to end >= 1.15x with Triton: MISSED, 1.05x" in text


def test_summary_says_what_is_missing(tmp_path):
    (tmp_path / "run.tsv").write_text("mode\tgpu\n")
    (tmp_path / "steps.tsv").write_text("step\texit\tseconds\tlimit_s\n")
    text = gpu_summary.summary(tmp_path)
    assert "No kernel benchmark rows" in text and "No end-to-end results" in text
    assert "- end to end: not measured in this run" in text


def test_summary_wants_a_folder(tmp_path, capsys):
    assert gpu_summary.main([str(tmp_path / "missing")]) == 2
    assert "usage: python benchmarks/gpu_summary.py RESULTS_FOLDER" in capsys.readouterr().err


def test_gpu_check_rejects_unknown_arguments():
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--fast"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown argument '--fast'; expected --dry-run, --out DIR or --only STEPS" in (
        result.stderr)


KERNEL_STEPS = ["gpu-tests", "bench-window-attention", "bench-max-unpool", "bench-dwsep-conv"]


def dry_run(out: Path, *args: str) -> list[dict]:
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--dry-run", "--out",
                             str(out), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = gpu_summary.run_facts(out)["steps"]
    assert all(s["exit"] == 0 for s in steps), steps
    assert "Mode: dry-run" in (out / "summary.md").read_text()
    return steps


def test_gpu_check_dry_run_of_the_kernel_steps(tmp_path):
    steps = dry_run(tmp_path, "--only", ",".join(KERNEL_STEPS))
    assert [s["name"] for s in steps] == KERNEL_STEPS
    text = (tmp_path / "summary.md").read_text()
    assert "### window_attention" in text and "### max_unpool" in text


@pytest.mark.slow  # the end-to-end step trains and measures three models in the interpreter
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    steps = dry_run(tmp_path)
    assert [s["name"] for s in steps] == [*KERNEL_STEPS, "end-to-end"]
    assert "| swin |" in (tmp_path / "summary.md").read_text()
