"""One timer for every measurement, and the discipline that notices a noisy machine.

`time_calls_ms` times single calls: CUDA events on a GPU, perf_counter on the CPU.
`timed_rounds` takes the timed calls in rounds and judges them (`TimingPolicy`):
- the figure is the median of the round medians; the spread is the range of the round
  medians relative to that figure; p95 is over every call of the rounds kept;
- a round whose median is off the figure by more than `tolerance` is measured again, up to
  `max_remeasured` rounds in all; rounds still off after that make the timing unstable;
- so does a timing during which our threads, over the rounds kept, waited for a CPU more than
  `wait_tolerance` of their time: other processes competed, even when steadily enough that
  the rounds agree;
- the reasons are kept in words. The machine's state (segbench.measure.conditions) is read
  before and after.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from segbench.measure import conditions


def time_calls_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
                  before_each: Callable[[], object] | None = None) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn, after `warmup` untimed calls;
    `before_each` (e.g. an L2 flush) runs untimed before every timed call."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            if before_each is not None:
                before_each()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times
    times = []
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class TimingPolicy:
    rounds: int = 5
    tolerance: float = 0.10  # a round median this far off the figure (relative) is re-measured
    wait_tolerance: float = 0.10  # share of thread time spent waiting for a CPU
    max_remeasured: int = 5  # rounds measured again at most, per timing

    def describe(self) -> str:
        return (f"{self.rounds} rounds; figure = median of the round medians, spread = their "
                f"range / figure, p95 over all calls; a round off the figure by more than "
                f"{self.tolerance:.0%} is measured again (at most {self.max_remeasured} "
                f"rounds); rounds still off, or our threads waiting for a CPU more than "
                f"{self.wait_tolerance:.0%} of their time (other processes competing), flag "
                "the row timing_unstable")


POLICY = TimingPolicy()


@dataclass
class Round:
    times_ms: list[float]
    thread_ns: tuple[int, int] | None  # our threads' (ran, waited for a CPU); None: unknown

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


@dataclass
class Timing:
    rounds: list[Round]
    remeasured: int
    policy: TimingPolicy
    cores: list[int] = field(default_factory=list)
    before: dict = field(default_factory=dict)  # conditions.snapshot before the first round
    after: dict = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(r.median_ms for r in self.rounds)

    @property
    def p95_ms(self) -> float:
        return percentile([t for r in self.rounds for t in r.times_ms], 95)

    @property
    def spread(self) -> float:
        medians = [r.median_ms for r in self.rounds]
        return (max(medians) - min(medians)) / self.median_ms

    @property
    def calls_made(self) -> int:
        """Timed calls in all rounds, the re-measured ones included (what an energy counter
        running over the whole timing saw)."""
        return len(self.rounds[0].times_ms) * (len(self.rounds) + self.remeasured)

    @property
    def wait_share(self) -> float:
        """The share of our threads' time, over the rounds kept, spent ready but waiting for a
        CPU; NaN where the kernel does not say."""
        known = [r.thread_ns for r in self.rounds if r.thread_ns is not None]
        total = sum(ran + waited for ran, waited in known)
        return sum(waited for _, waited in known) / total if total else math.nan

    def problems(self) -> list[str]:
        """Why the figure cannot be trusted, in words; [] when it can."""
        found = []
        if off_rounds(self.rounds, self.policy):
            medians = " ".join(f"{r.median_ms:.3g}" for r in self.rounds)
            found.append(f"round medians {medians} ms spread {self.spread:.0%} around "
                         f"{self.median_ms:.3g} ms (tolerance {self.policy.tolerance:.0%}) "
                         f"after {self.remeasured} re-measured round(s)")
        if self.wait_share > self.policy.wait_tolerance:
            cores = ",".join(map(str, self.cores))
            found.append(f"threads waited for a CPU {self.wait_share:.0%} of their time (cores "
                         f"{cores}; tolerance {self.policy.wait_tolerance:.0%}): other "
                         "processes, or more threads than cores, competed")
        others = max(state.get("gpu_other_processes", 0) for state in (self.before, self.after))
        if others:
            found.append(f"{others} other process(es) on the GPU")
        slowdown = self.after.get("gpu_slowdown") or self.before.get("gpu_slowdown")
        if slowdown:
            found.append(f"GPU clocks slowed down ({slowdown})")
        return found

    def line(self, phase: str, batch: int) -> dict:
        """One line of the row's `timing` table: the rounds, the verdict and the conditions."""
        problems = self.problems()
        return {
            "phase": phase, "batch": batch, "median_ms": self.median_ms, "p95_ms": self.p95_ms,
            "spread_pct": 100 * self.spread,
            "round_medians_ms": " ".join(f"{r.median_ms:.4g}" for r in self.rounds),
            "calls_per_round": len(self.rounds[0].times_ms), "remeasured": self.remeasured,
            "cpu_wait_pct": 100 * self.wait_share,
            "cores": ",".join(map(str, self.cores)),
            "unstable": bool(problems), "reason": "; ".join(problems),
            **{f"{key}_before": value for key, value in self.before.items()},
            **{f"{key}_after": value for key, value in self.after.items()},
        }


def off_rounds(rounds: list[Round], policy: TimingPolicy) -> list[int]:
    """Indices of the rounds whose median is off the figure by more than the tolerance, the
    farthest first."""
    figure = statistics.median(r.median_ms for r in rounds)
    off = {i: abs(r.median_ms - figure) / figure for i, r in enumerate(rounds) if figure > 0}
    return sorted((i for i in off if off[i] > policy.tolerance), key=off.get, reverse=True)


def measure_round(fn: Callable[[], object], device: torch.device, calls: int,
                  before_each: Callable[[], object] | None = None) -> Round:
    before = conditions.thread_times_ns()
    times = time_calls_ms(fn, device, warmup=0, repeats=calls, before_each=before_each)
    return Round(times, conditions.thread_time_between(before, conditions.thread_times_ns()))


def timed_rounds(fn: Callable[[], object], device: torch.device, warmup: int, calls: int,
                 policy: TimingPolicy = POLICY,
                 before_each: Callable[[], object] | None = None) -> Timing:
    """`warmup` untimed calls, then `policy.rounds` rounds of `calls` timed calls, rounds that
    are off measured again (see the module docstring); `before_each` as for time_calls_ms.
    The cores stated with the figure are those the calling thread may run on: the pinned ones
    inside conditions.pinned_cores."""
    cores = conditions.allowed_cores()
    before = conditions.snapshot(device, cores)
    for _ in range(warmup):
        fn()
    rounds = [measure_round(fn, device, calls, before_each) for _ in range(policy.rounds)]
    remeasured = 0
    while remeasured < policy.max_remeasured and (off := off_rounds(rounds, policy)):
        rounds[off[0]] = measure_round(fn, device, calls, before_each)
        remeasured += 1
    return Timing(rounds, remeasured, policy, cores, before, conditions.snapshot(device, cores))


CROSS_CHECK_FACTOR = 2.0  # batching may not make an image this much slower, nor a whole batch
# this much faster than one image alone
POWER_LIMIT_SLACK = 1.2  # NVML's energy counter against the enforced power limit
HEADLINE_PHASES = ("latency", "throughput", "train")


def contradictions(columns: dict) -> list[str]:
    """Where a row's latency, throughput and energy disagree beyond what batching can explain."""
    found = []
    latency = columns.get("latency_ms", math.nan)
    rate = columns.get("throughput_img_s", math.nan)
    batch = columns.get("throughput_batch", 0)
    if math.isfinite(latency) and math.isfinite(rate) and rate > 0 and batch:
        per_image, factor = 1e3 / rate, CROSS_CHECK_FACTOR
        if per_image > factor * latency:
            found.append(f"{per_image:.3g} ms per image at batch {batch} is over {factor:g}x "
                         f"the batch-1 latency {latency:.3g} ms")
        if latency > factor * batch * per_image:
            found.append(f"the batch-1 latency {latency:.3g} ms is over {factor:g}x the "
                         f"{batch * per_image:.3g} ms of a whole batch of {batch}")
    energy = columns.get("energy_j_per_img")
    limit = columns.get("gpu_power_limit_w_after")
    if energy is not None and math.isfinite(energy) and math.isfinite(rate):
        watts = energy * rate
        if watts <= 0:
            found.append(f"the GPU's energy counter gave {energy:.3g} J per image")
        elif limit and watts > POWER_LIMIT_SLACK * limit:
            found.append(f"{energy:.3g} J per image at {rate:.3g} img/s is {watts:.0f} W, "
                         f"over the GPU's power limit of {limit:.0f} W")
    return found


def row_verdict(lines: list[dict], columns: dict) -> dict:
    """The row's timing columns from its timing lines: unstable and why, the cores, the
    largest CPU wait, and the machine's state before the first timing and after the last."""
    headline = [line for line in lines if line["phase"] in HEADLINE_PHASES]
    if not headline:
        return {}
    reasons = [f"{line['phase']}: {line['reason']}" for line in headline if line["unstable"]]
    reasons += [f"contradiction: {text}" for text in contradictions(
        {**columns, **{k: v for k, v in headline[-1].items() if k.endswith("_after")}})]
    waits = [line["cpu_wait_pct"] for line in headline if math.isfinite(line["cpu_wait_pct"])]
    return {
        "timing_unstable": bool(reasons), "timing_reason": "; ".join(reasons),
        "timing_cores": headline[0]["cores"],
        "cpu_wait_pct": max(waits) if waits else math.nan,
        **{k: v for k, v in headline[0].items() if k.endswith("_before")},
        **{k: v for k, v in headline[-1].items() if k.endswith("_after")},
    }


def method_description(policy: TimingPolicy = POLICY) -> dict:
    """What run.json says about every timing of the folder."""
    return {
        "rounds": policy.rounds, "tolerance": policy.tolerance,
        "wait_tolerance": policy.wait_tolerance, "max_remeasured": policy.max_remeasured,
        "cross_check_factor": CROSS_CHECK_FACTOR,
        "text": f"{policy.describe()}; the measuring threads are pinned to the first --threads "
                "cores the process may use (timing_cores); the batch-1 latency is checked "
                "against the time per image at the throughput batch (a factor over "
                f"{CROSS_CHECK_FACTOR:g} beyond what batching explains is a contradiction); "
                "load average, CPU clock and governor, on a GPU its clocks, temperature, power "
                "and other processes (NVML), are read before and after each timing "
                "(timing.csv)",
    }
