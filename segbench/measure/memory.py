"""Peak memory of one inference (batch 1) and of one training step (the profile's batch).

GPU: torch.cuda.max_memory_allocated after reset_peak_memory_stats, so the figure covers
weights, activations, gradients and optimizer state alive during the call.
CPU (Linux): the kernel's own high-water mark of the resident set. Before the call, freed heap
memory goes back to the system (glibc malloc_trim) and the mark is reset to the current
resident set (/proc/self/clear_refs); after it, VmHWM minus the resident set before is the
growth the call caused: activations, saved tensors, gradients and workspace; weights and
optimizer state that were already resident are excluded. Each call is made once first, so
lazily created state is resident before measuring.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable

import torch
from torch import nn

MB = 2**20


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated (weights + activations + grads)"
    return ("CPU peak resident-set growth during the call (kernel high-water mark after "
            "malloc_trim and a reset; weights excluded)")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _release_free_heap() -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def _cpu_peak_growth_mb(fn: Callable[[], object]) -> float:
    """NaN where the kernel offers no resettable high-water mark (not Linux)."""
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before = _status_kb("VmRSS")
    except OSError:
        return math.nan
    fn()
    return (_status_kb("VmHWM") - before) / 1024


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
