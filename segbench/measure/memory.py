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
from pathlib import Path

import torch
from torch import nn

from segbench.measure.context import MeasureContext, MeasureInputs, inference_fn
from segbench.measure.modes import train_step_fn

MB = 2**20
# torch's CPU allocator says "DefaultCPUAllocator: can't allocate memory: you tried to ..."
ALLOCATION_FAILURES = ("out of memory", "can't allocate memory")


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated (weights + activations + grads)"
    return ("CPU peak resident-set growth during the call (kernel high-water mark after "
            "malloc_trim and a reset; weights excluded)")


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory, or a CPU allocation failure: MemoryError (numpy's
    _ArrayMemoryError is one) or torch's allocator refusing."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return any(text in str(error).lower() for text in ALLOCATION_FAILURES)


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


def _cuda_peak_growth_mb(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MB


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


def peak_growth_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Memory one call of `fn` adds at its peak, beyond what was allocated before (one call,
    no warm-up: for probes whose first call is the point)."""
    if device.type == "cuda":
        return _cuda_peak_growth_mb(fn, device)
    return _cpu_peak_growth_mb(fn)


def inference_memory(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext) -> dict:
    """Peak memory of one inference at batch 1."""
    x = torch.randn(1, *inputs.image_shape, device=ctx.device)
    return {"peak_mem_mb": peak_memory_mb(inference_fn(model, x, ctx), ctx.device)}


def training_memory(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext) -> dict:
    """Peak memory of one full training step (forward, loss, backward, update) at the
    profile's batch, on a copy of the model, with the unit's optimizer (SGD holds one
    momentum buffer per weight, AdamW two)."""
    return {"train_peak_mem_mb": peak_memory_mb(train_step_fn(model, inputs, ctx), ctx.device)}


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom_bytes() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), when it has a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_host_bytes() -> tuple[int, str] | None:
    """Memory this process can still take on the host, and where the figure comes from;
    None where neither /proc/meminfo nor a cgroup limit can be read."""
    candidates = [(_meminfo_bytes("MemAvailable"), "MemAvailable in /proc/meminfo"),
                  (_cgroup_headroom_bytes(), "the cgroup's memory.max - memory.current")]
    known = [(value, source) for value, source in candidates if value is not None]
    return min(known) if known else None


def available_device_bytes(device: torch.device) -> tuple[int, str] | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], "free memory on the GPU (cudaMemGetInfo)"
    return available_host_bytes()
