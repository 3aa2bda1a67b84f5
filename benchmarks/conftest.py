"""Shared pieces of the GPU benchmark suites: skip without CUDA, synchronised timing, and the
device's measured copy bandwidth (bytes read + written per second) to compare kernels with.

Run: pytest benchmarks/ --benchmark-json=results/kernels/<date>_<gpu>.json
Model benchmarks also run on the CPU; kernel benchmarks skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from segbench.measure.timing import percentile, time_calls_ms

COPY_BYTES = 1 << 30  # 1 GiB source: far larger than L2, so it measures HBM
L2_FLUSH_BYTES = 256 << 20  # written before every timed call so no run starts with a warm L2
_flush_buffer: torch.Tensor | None = None


def flush_l2() -> None:
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    _flush_buffer.zero_()


GPU_FIXTURES = {"gpu_benchmark", "copy_bandwidth_gbs"}


def pytest_collection_modifyitems(config, items):
    """Kernel benchmarks (those using the GPU fixtures or marked gpu) skip without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU benchmark: needs CUDA")
    for item in items:
        if GPU_FIXTURES & set(getattr(item, "fixturenames", ())) or "gpu" in item.keywords:
            item.add_marker(skip)


def cuda_median_ms(fn, warmup: int = 25, repeats: int = 100, cold_l2: bool = True) -> float:
    """Median time of fn() in ms over `repeats` runs timed with CUDA events, after warm-up;
    L2 is flushed before each timed run unless cold_l2 is False."""
    times = time_calls_ms(fn, torch.device("cuda"), warmup, repeats,
                          before_each=flush_l2 if cold_l2 else None)
    return percentile(times, 50)


@pytest.fixture(scope="session")
def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth, GB/s counting bytes read plus bytes written."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), warmup=5, repeats=30, cold_l2=False)
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


@pytest.fixture
def gpu_benchmark(benchmark):
    """pytest-benchmark with a synchronize after every call, so wall time covers GPU work, and
    L2 flushed (untimed) before every round."""

    def run(fn, *args, **kwargs):
        def synced():
            out = fn(*args, **kwargs)
            torch.cuda.synchronize()
            return out

        def cold():
            flush_l2()
            torch.cuda.synchronize()

        return benchmark.pedantic(synced, setup=cold, warmup_rounds=10, rounds=50, iterations=1)

    return run
