"""One way to time a kernel benchmark's implementations and one vocabulary for what it reports.

Every implementation of one case (a kernel, shape, dtype and pass) is timed with the same
policy, one after another, and becomes one row:

  ms              median time of one call (p20_ms, p80_ms: its spread over the repeats)
  gb_s            the case's minimum traffic (every input read once, every output written
                  once) per second, in GB/s
  pct_of_copy_bw  gb_s as a percentage of the device-to-device copy bandwidth measured in the
                  same run (bytes read + written)
  tflop_s         the case's FLOPs (2 per multiply-add, as hardware peaks are quoted) per
                  second; absent for ops that only move data
  ratio_vs_<b>    baseline b's ms over this row's ms (> 1: this row is faster), on the
                  candidate's row, for every baseline of the case

with its context: kernel, case, dtype, passes, implementation, bytes, flops, copy_gb_s and the
method (device, timer, warm-up, repeats, L2 policy). benchmarks/conftest.py writes every row
to --roofline-json; benchmarks/gpu_summary.py makes the tables.

Timing on CUDA: CUDA events around each call, `WARMUP` untimed calls first, L2 flushed
(untimed) before each of `REPEATS` timed calls. In a CPU rehearsal (SEGBENCH_BENCH_REHEARSAL=1:
tiny shapes, Triton interpreter) perf_counter over one call: it checks that every step
runs, and its figures mean nothing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from segbench.measure.timing import percentile, time_calls_ms

REHEARSAL = os.environ.get("SEGBENCH_BENCH_REHEARSAL") == "1"
WARMUP, REPEATS = (0, 1) if REHEARSAL else (25, 100)
COPY_BYTES = (16 << 20) if REHEARSAL else (1 << 30)  # on CUDA far larger than L2: HBM
L2_FLUSH_BYTES = 256 << 20


def bench_device() -> torch.device:
    """CUDA for real runs; the CPU (Triton interpreter) in a rehearsal."""
    return torch.device("cpu" if REHEARSAL else "cuda")


@functools.cache
def l2_flusher(device: torch.device) -> Callable[[], None] | None:
    """Writes a buffer far larger than L2 (CUDA); None on the CPU."""
    if device.type != "cuda":
        return None
    buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    return buffer.zero_


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = WARMUP,
              repeats: int = REPEATS, cold_l2: bool = True) -> tuple[float, float, float]:
    """(median, p20, p80) ms of fn() by the policy in the module docstring."""
    flush = l2_flusher(device) if cold_l2 else None
    times = time_calls_ms(fn, device, warmup, repeats, before_each=flush)
    return percentile(times, 50), percentile(times, 20), percentile(times, 80)


def copy_bandwidth_gb_s(device: torch.device) -> float:
    """Device-to-device copy of COPY_BYTES, GB/s counting bytes read plus bytes written."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms, _, _ = median_ms(lambda: dst.copy_(src), device, warmup=min(WARMUP, 5),
                         repeats=min(REPEATS, 30), cold_l2=False)
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


def figures(ms: float, nbytes: int, copy_gb_s: float, flops: int | None) -> dict:
    """ms, gb_s, pct_of_copy_bw and (when the op computes) tflop_s of one timing."""
    gb_s = nbytes / (ms * 1e-3) / 1e9
    row = {"ms": ms, "gb_s": gb_s, "pct_of_copy_bw": 100 * gb_s / copy_gb_s}
    if flops:
        row["tflop_s"] = flops / (ms * 1e-3) / 1e12
    return row


def ratios(candidate_ms: float, baseline_ms: dict[str, float]) -> dict:
    return {f"ratio_vs_{name}": ms / candidate_ms for name, ms in baseline_ms.items()}


def compiled(fn: Callable) -> Callable:
    """torch.compile of a baseline, with a fresh cache per case (no recompile limit, static
    shapes). A rehearsal compiles with dynamo's eager backend: it checks the path, not the
    generated code, which would need a C++ toolchain and minutes on the CPU."""
    torch.compiler.reset()
    return torch.compile(fn, dynamic=False, backend="eager" if REHEARSAL else "inductor")


def nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def method(device: torch.device) -> dict:
    timer = "CUDA events" if device.type == "cuda" else "perf_counter (interpreter rehearsal)"
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "timer": timer, "warmup": WARMUP, "repeats": REPEATS,
            "l2": "flushed before each timed call" if device.type == "cuda" else "not flushed",
            "flop_convention": "2 per multiply-add", "torch": torch.__version__,
            "threads": torch.get_num_threads()}


@dataclass
class Roofline:
    """The session's device, its measured copy bandwidth and every row recorded so far."""
    device: torch.device
    copy_gb_s: float
    rows: list[dict] = field(default_factory=list)

    def compare(self, kernel: str, case: str, dtype: str, passes: str,
                implementations: dict[str, Callable[[], object]], candidates: tuple[str, ...],
                nbytes: int | dict[str, int], flops: int | None = None) -> list[dict]:
        """Time every implementation of one case; record a row each, the candidates' with
        ratio_vs_<baseline> for every other implementation; print one line each. `nbytes` is
        the case's minimum traffic, or per implementation where they must move different
        amounts (e.g. 1-byte against int64 indices). Returns the candidates' rows."""
        timed = {name: median_ms(fn, self.device) for name, fn in implementations.items()}
        baselines = {name: t[0] for name, t in timed.items() if name not in candidates}
        candidate_rows = []
        for name, (ms, p20, p80) in timed.items():
            moved = nbytes[name] if isinstance(nbytes, dict) else nbytes
            row = {"kernel": kernel, "case": case, "dtype": dtype, "passes": passes,
                   "implementation": name, **figures(ms, moved, self.copy_gb_s, flops),
                   "p20_ms": p20, "p80_ms": p80, "bytes": moved, "flops": flops,
                   "copy_gb_s": self.copy_gb_s}
            if name in candidates:
                row.update(ratios(ms, baselines))
                candidate_rows.append(row)
            self.rows.append(row)
            print(_line(row))
        return candidate_rows


def _line(row: dict) -> str:
    text = (f"{row['kernel']} {row['case']} {row['dtype']} {row['passes']} "
            f"{row['implementation']}: {row['ms'] * 1e3:.1f} us "
            f"(p20-p80 {row['p20_ms'] * 1e3:.1f}-{row['p80_ms'] * 1e3:.1f}), "
            f"{row['gb_s']:.0f} GB/s = {row['pct_of_copy_bw']:.0f}% of copy "
            f"{row['copy_gb_s']:.0f} GB/s")
    if "tflop_s" in row:
        text += f", {row['tflop_s']:.2f} TFLOP/s"
    for key, value in row.items():
        if key.startswith("ratio_vs_"):
            text += f", {value:.2f}x {key[len('ratio_vs_'):]}"
    return text
