"""Peak memory of one inference (batch 1) and of one training step (the profile's batch).

GPU: torch.cuda.max_memory_allocated after reset_peak_memory_stats, so the figure covers
weights, activations, gradients and optimizer state alive during the call.
CPU: the process's resident set sampled every 0.5 ms by a watcher thread while the call runs,
minus the resident set just before it: the growth caused by the call (activations, saved
tensors, gradients, workspace), weights excluded. Each call is made once untimed first, so
lazily created state (optimizer moments, allocator pools) is already resident.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable

import torch
from torch import nn

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated (weights + activations + grads)"
    return "CPU peak RSS growth during the call, 0.5 ms sampling (weights excluded)"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def _cpu_peak_growth_mb(fn: Callable[[], object]) -> float:
    gc.collect()
    before = _rss_bytes()
    peak = before
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            done.wait(0.0005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    peak = max(peak, _rss_bytes())
    return (peak - before) / MB


def _cuda_peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MB


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    fn()  # untimed first call: lazily created state becomes resident before measuring
    if device.type == "cuda":
        return _cuda_peak_mb(fn, device)
    return _cpu_peak_growth_mb(fn)


def inference_peak_mb(model: nn.Module, image_shape: tuple[int, int, int],
                      device: torch.device, amp: bool = False) -> float:
    model.eval()
    x = torch.randn(1, *image_shape, device=device)

    @torch.no_grad()
    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)

    return peak_memory_mb(forward, device)


def training_peak_mb(step: Callable[[], object], device: torch.device) -> float:
    """Peak memory of `step()`, one full training step (forward, loss, backward, update)."""
    return peak_memory_mb(step, device)
