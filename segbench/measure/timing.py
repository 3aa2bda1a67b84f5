"""One timer for every measurement: CUDA events on a GPU, perf_counter on the CPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


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
