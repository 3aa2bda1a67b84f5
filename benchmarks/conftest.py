"""Shared pieces of the benchmark suites: the kernel benchmarks' session (benchmarks/_roofline.py:
device, copy bandwidth measured once, every row), their writing to --roofline-json, and
skipping without CUDA.

Run: pytest benchmarks/ --roofline-json=results/gpu/<run>/kernels.json
(add --benchmark-json=... to keep pytest-benchmark's own view of each candidate as well).
Kernel benchmarks skip without CUDA, except in a CPU rehearsal (SEGBENCH_BENCH_REHEARSAL=1 with
TRITON_INTERPRET=1: tiny shapes); model benchmarks also run on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _roofline import (
    REHEARSAL,
    REPEATS,
    WARMUP,
    Roofline,
    bench_device,
    copy_bandwidth_gb_s,
    l2_flusher,
    median_ms,
    method,
)

KERNEL_FIXTURES = {"roofline", "compare"}
CUDA_ONLY_FIXTURES = {"gpu_benchmark", "copy_bandwidth_gbs"}  # not rehearsed on the CPU


def pytest_addoption(parser):
    parser.addoption("--roofline-json", default=None,
                     help="write every kernel benchmark row (benchmarks/_roofline.py) here")


def pytest_collection_modifyitems(config, items):
    """Kernel benchmarks (those using the kernel fixtures or marked gpu) skip without CUDA;
    in a rehearsal the roofline ones run on the CPU."""
    if torch.cuda.is_available() and not REHEARSAL:
        return
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if REHEARSAL and fixtures & KERNEL_FIXTURES and not fixtures & CUDA_ONLY_FIXTURES:
            continue
        if fixtures & (KERNEL_FIXTURES | CUDA_ONLY_FIXTURES) or "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="GPU benchmark: needs CUDA"))


@pytest.fixture(scope="session")
def roofline(request) -> Roofline:
    device = bench_device()
    board = Roofline(device, copy_bandwidth_gb_s(device))
    yield board
    path = request.config.getoption("--roofline-json")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"method": method(device), "copy_gb_s": board.copy_gb_s,
                                          "rows": board.rows}, indent=1, default=str))


def _synchronized(fn, device: torch.device):
    def call():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    return call


@pytest.fixture
def compare(request, roofline):
    """Roofline.compare for one case; with pytest-benchmark installed, the first candidate is
    also handed to it (L2 flushed before every round), with its row as extra_info."""

    def run(**case):
        rows = roofline.compare(**case)
        if request.config.pluginmanager.hasplugin("benchmark"):
            benchmark = request.getfixturevalue("benchmark")
            benchmark.group = " ".join(str(case[k]) for k in ("kernel", "case", "dtype", "passes"))
            benchmark.extra_info.update(rows[0])
            first = case["candidates"][0]
            fn = _synchronized(case["implementations"][first], roofline.device)
            benchmark.pedantic(fn, setup=l2_flusher(roofline.device), rounds=REPEATS,
                               warmup_rounds=WARMUP, iterations=1)
        return rows

    return run


# The fixtures below are the older interface bench_dwsep_conv.py uses; they time as _roofline.


def cuda_median_ms(fn, warmup: int = WARMUP, repeats: int = REPEATS, cold_l2: bool = True) -> float:
    """Median ms of fn() on CUDA by _roofline's policy."""
    return median_ms(fn, torch.device("cuda"), warmup, repeats, cold_l2)[0]


@pytest.fixture(scope="session")
def copy_bandwidth_gbs() -> float:
    return copy_bandwidth_gb_s(torch.device("cuda"))


@pytest.fixture
def gpu_benchmark(benchmark):
    """pytest-benchmark with a synchronize after every call and L2 flushed before each round."""
    flush = l2_flusher(torch.device("cuda"))

    def run(fn, *args, **kwargs):
        def setup():
            flush()
            torch.cuda.synchronize()

        return benchmark.pedantic(_synchronized(lambda: fn(*args, **kwargs),
                                                torch.device("cuda")),
                                  setup=setup, warmup_rounds=10, rounds=50, iterations=1)

    return run
