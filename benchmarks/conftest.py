"""Shared pieces of the GPU benchmark suites: skip without CUDA, synchronised timing, and the
device's measured copy bandwidth (bytes read + written per second) to compare kernels with.

Run: pytest benchmarks/ --benchmark-json=results/kernels/<date>_<gpu>.json
"""

from __future__ import annotations

import pytest
import torch

COPY_BYTES = 1 << 30  # 1 GiB source: far larger than L2, so it measures HBM


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU benchmark: needs CUDA")
    for item in items:
        item.add_marker(skip)


def cuda_median_ms(fn, warmup: int = 25, repeats: int = 100) -> float:
    """Median time of fn() in ms over `repeats` runs timed with CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@pytest.fixture(scope="session")
def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth, GB/s counting bytes read plus bytes written."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), warmup=5, repeats=30)
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


@pytest.fixture
def gpu_benchmark(benchmark):
    """pytest-benchmark with a synchronize after every call, so wall time covers GPU work."""

    def run(fn, *args, **kwargs):
        def synced():
            out = fn(*args, **kwargs)
            torch.cuda.synchronize()
            return out

        return benchmark.pedantic(synced, warmup_rounds=10, rounds=50, iterations=1)

    return run
