"""One way to time a kernel benchmark's implementations and one vocabulary for what it reports.

Every implementation of one case (a kernel, shape, dtype and pass) is timed with the same
policy, one after another, and becomes one row:

  ms              median time of one call: the median of the round medians
  p20_ms, p80_ms  percentiles over every timed call of the rounds kept
  spread_pct      the range of the round medians over ms, in percent
  unstable        true when the rounds disagree beyond the policy's tolerance after the
                  re-measured rounds, or other processes competed (timing.Timing.problems);
                  `reason` says why, in words
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

Timing (segbench.measure.timing.timed_rounds, the harness's own discipline): `WARMUP` untimed
calls, then `POLICY.rounds` rounds of `CALLS_PER_ROUND` timed calls, a round whose median is
off the others re-measured up to the policy's limit; on CUDA, CUDA events around each call with
L2 flushed (untimed) before each. In a CPU rehearsal (SEGBENCH_BENCH_REHEARSAL=1: tiny shapes,
Triton interpreter) perf_counter, 2 rounds of one call: it checks that every step runs, and
its figures mean nothing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from segbench.measure.timing import Timing, TimingPolicy, percentile, timed_rounds

REHEARSAL = os.environ.get("SEGBENCH_BENCH_REHEARSAL") == "1"
WARMUP, CALLS_PER_ROUND = (0, 1) if REHEARSAL else (25, 20)
POLICY = TimingPolicy(rounds=2, max_remeasured=1) if REHEARSAL else TimingPolicy()
REPEATS = POLICY.rounds * CALLS_PER_ROUND  # timed calls when no round is re-measured
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


def time_rounds(fn: Callable[[], object], device: torch.device, warmup: int = WARMUP,
                calls: int = CALLS_PER_ROUND, cold_l2: bool = True) -> Timing:
    """fn() timed in rounds by the policy in the module docstring."""
    flush = l2_flusher(device) if cold_l2 else None
    return timed_rounds(fn, device, warmup, calls, POLICY, before_each=flush)


def copy_bandwidth(device: torch.device) -> tuple[float, list[str]]:
    """Device-to-device copy of COPY_BYTES: GB/s counting bytes read plus bytes written, and
    what makes its timing untrustworthy ([] when nothing does)."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    timing = time_rounds(lambda: dst.copy_(src), device, warmup=min(WARMUP, 5),
                         calls=min(CALLS_PER_ROUND, 6), cold_l2=False)
    return 2 * COPY_BYTES / (timing.median_ms * 1e-3) / 1e9, timing.problems()


def timing_columns(timing: Timing) -> dict:
    """ms and its spread: the columns of a row that come from its timing."""
    calls = [t for r in timing.rounds for t in r.times_ms]
    problems = timing.problems()
    return {"ms": timing.median_ms, "p20_ms": percentile(calls, 20),
            "p80_ms": percentile(calls, 80), "spread_pct": 100 * timing.spread,
            "round_medians_ms": [r.median_ms for r in timing.rounds],
            "remeasured": timing.remeasured, "unstable": bool(problems),
            "reason": "; ".join(problems)}


def figures(ms: float, nbytes: int, copy_gb_s: float, flops: int | None) -> dict:
    """gb_s, pct_of_copy_bw and (when the op computes) tflop_s of one timing's ms."""
    gb_s = nbytes / (ms * 1e-3) / 1e9
    row = {"gb_s": gb_s, "pct_of_copy_bw": 100 * gb_s / copy_gb_s}
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
            "timer": timer, "warmup": WARMUP, "rounds": POLICY.rounds,
            "calls_per_round": CALLS_PER_ROUND, "timing": POLICY.describe(),
            "l2": "flushed before each timed call" if device.type == "cuda" else "not flushed",
            "flop_convention": "2 per multiply-add", "torch": torch.__version__,
            "threads": torch.get_num_threads()}


@dataclass
class Roofline:
    """The session's device, its measured copy bandwidth (and why its timing is not to be
    trusted, if it is not) and every row recorded so far."""
    device: torch.device
    copy_gb_s: float
    copy_problems: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def compare(self, kernel: str, case: str, dtype: str, passes: str,
                implementations: dict[str, Callable[[], object]], candidates: tuple[str, ...],
                nbytes: int | dict[str, int], flops: int | None = None) -> list[dict]:
        """Time every implementation of one case; record a row each, the candidates' with
        ratio_vs_<baseline> for every other implementation; print one line each. `nbytes` is
        the case's minimum traffic, or per implementation where they must move different
        amounts (e.g. 1-byte against int64 indices). Returns the candidates' rows."""
        timed = {name: timing_columns(time_rounds(fn, self.device))
                 for name, fn in implementations.items()}
        baselines = {name: t["ms"] for name, t in timed.items() if name not in candidates}
        candidate_rows = []
        for name, timing in timed.items():
            moved = nbytes[name] if isinstance(nbytes, dict) else nbytes
            row = {"kernel": kernel, "case": case, "dtype": dtype, "passes": passes,
                   "implementation": name, **timing,
                   **figures(timing["ms"], moved, self.copy_gb_s, flops),
                   "bytes": moved, "flops": flops, "copy_gb_s": self.copy_gb_s}
            if name in candidates:
                row.update(ratios(timing["ms"], baselines))
                candidate_rows.append(row)
            self.rows.append(row)
            print(_line(row))
        return candidate_rows


def _line(row: dict) -> str:
    text = (f"{row['kernel']} {row['case']} {row['dtype']} {row['passes']} "
            f"{row['implementation']}: {row['ms'] * 1e3:.1f} us "
            f"(p20-p80 {row['p20_ms'] * 1e3:.1f}-{row['p80_ms'] * 1e3:.1f}, rounds spread "
            f"{row['spread_pct']:.0f}%), "
            f"{row['gb_s']:.0f} GB/s = {row['pct_of_copy_bw']:.0f}% of copy "
            f"{row['copy_gb_s']:.0f} GB/s")
    if "tflop_s" in row:
        text += f", {row['tflop_s']:.2f} TFLOP/s"
    for key, value in row.items():
        if key.startswith("ratio_vs_"):
            text += f", {value:.2f}x {key[len('ratio_vs_'):]}"
    if row["unstable"]:
        text += f"; UNSTABLE: {row['reason']}"
    return text
