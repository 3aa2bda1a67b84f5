"""What the three kernels share: interpreter detection, input checks, dtype policy, and the
table of fvcore FLOP handles that the harness installs (one entry per custom op name)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

# Filled by each kernel module: custom-op name as the JIT trace shows it -> fvcore handle.
FVCORE_HANDLES: dict[str, Callable] = {}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def require(condition: bool, message: str) -> None:
    """Reject an input the kernel cannot take with one clear line, never a wrong answer."""
    if not condition:
        raise ValueError(message)


def check_device(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    devices = {t.device for t in tensors}
    require(len(devices) == 1,
            f"all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cuda":
        return
    require(
        device.type == "cpu" and interpreting(),
        f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tests), got {device}",
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype inside kernels: fp32 always (the interpreter also mishandles bf16)."""
    return torch.float32


SUPPORTED_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float_dtype(name: str, t: torch.Tensor) -> None:
    require(
        t.dtype in SUPPORTED_FLOAT_DTYPES,
        f"{name} must be float32, float16 or bfloat16, got {t.dtype}",
    )
