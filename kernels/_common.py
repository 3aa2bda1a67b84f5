"""What the three kernels share: where they run (GPU or interpreter), input checks, the tl.dot
configuration, memory formats, tile settings, the one output allocator, and the table of
fvcore FLOP handles that the harness installs (one entry per custom op name).

Launch code asks `launch_target()` whenever it chooses differently for the GPU and for the
interpreter (16-bit dot operands, how many programs share a loop). The sm_90 compile check
runs the launchers in the interpreter under `launching_as("gpu")`, so it compiles what a GPU
launch would compile.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import triton
import triton.language as tl

# Filled by each kernel module: custom-op name as the JIT trace shows it -> fvcore handle.
FVCORE_HANDLES: dict[str, Callable] = {}

TARGETS = ("gpu", "interpreter")
_forced_target: str | None = None


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def launch_target() -> str:
    """"gpu" or "interpreter": whose launch choices apply. The interpreter runs program
    instances one after another (fewer, larger tiles pay there) and computes bf16 wrongly."""
    if _forced_target is not None:
        return _forced_target
    return "interpreter" if interpreting() else "gpu"


@contextlib.contextmanager
def launching_as(target: str) -> Iterator[None]:
    """Make every launcher choose as on `target` (the compile check captures GPU launches in
    the interpreter this way; their results there are not meant to be right)."""
    global _forced_target
    require(target in TARGETS, f"launch target must be one of {TARGETS}, got {target!r}")
    previous, _forced_target = _forced_target, target
    try:
        yield
    finally:
        _forced_target = previous


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


SUPPORTED_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float_dtype(name: str, t: torch.Tensor) -> None:
    require(
        t.dtype in SUPPORTED_FLOAT_DTYPES,
        f"{name} must be float32, float16 or bfloat16, got {t.dtype}",
    )


# ----------------------------------------------------------------------------- tl.dot


class DotConfig(NamedTuple):
    """The DOT_DTYPE and DOT_PRECISION constexprs of a kernel that calls tl.dot."""
    dtype: tl.dtype  # operands are cast to this before tl.dot; accumulation is fp32
    precision: str  # input_precision; it only matters for fp32 operands


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_config(dtype: torch.dtype, allow_tf32: bool) -> DotConfig:
    """16-bit inputs feed the tensor cores in their own dtype, except bf16 in the interpreter
    (its bf16 dots are garbage: fp32 there). fp32 inputs follow the caller's TF32 policy
    (torch's own switch for the op the kernel replaces): "tf32" if allowed, else "ieee"."""
    if dtype == torch.float32:
        return DotConfig(tl.float32, "tf32" if allow_tf32 else "ieee")
    if dtype == torch.bfloat16 and launch_target() == "interpreter":
        return DotConfig(tl.float32, "ieee")
    return DotConfig(_TL_DTYPES[dtype], "ieee")


# ----------------------------------------------------------------------------- memory format


def is_channels_last(t: torch.Tensor) -> bool:
    """PyTorch's suggest_memory_format for a 4-D tensor: channels_last only when it is not
    also plain contiguous (never for other ranks)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def output_memory_format(like: torch.Tensor) -> torch.memory_format:
    """Outputs keep the input's layout (channels_last or contiguous), as PyTorch's ops do."""
    return torch.channels_last if is_channels_last(like) else torch.contiguous_format


# ----------------------------------------------------------------------------- tile settings

WARP_SIZE = 32


class TileSettings(NamedTuple):
    block_rows: int
    block_inner: int
    num_warps: int


# An elementwise tile: 1024 elements per program in 4 warps (8 per thread), on a GPU and in the
# interpreter alike, so that what the tests launch is what a GPU compiles. (Larger tiles would
# save the interpreter time but need more warps, whose threads get fewer registers: 16 warps
# spill the overlapping-window gathers.)
ELEMENTS_PER_PROGRAM = 1024
ELEMENTS_PER_THREAD = 8
MAX_BLOCK_INNER = 128


def elementwise_tile(inner: int) -> TileSettings:
    """[rows, inner] tile of an elementwise kernel, inner along the fastest-moving dimension
    in memory (coalesced), as wide as the data up to MAX_BLOCK_INNER."""
    block_inner = min(triton.next_power_of_2(max(inner, 1)), MAX_BLOCK_INNER)
    block_rows = max(ELEMENTS_PER_PROGRAM // block_inner, 1)
    return TileSettings(block_rows, block_inner,
                        num_warps=ELEMENTS_PER_PROGRAM // (ELEMENTS_PER_THREAD * WARP_SIZE))


# ----------------------------------------------------------------------------- outputs


class _Poison(NamedTuple):
    float_value: float
    int_value: int | None  # None: the dtype's largest value
    allocated: list[torch.Tensor]


_poison: _Poison | None = None


def empty_output(shape, dtype: torch.dtype, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Every tensor a kernel must fully write comes from here, so that tests can poison it
    (`poisoned_outputs`) and see an element no program wrote."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _poison is not None:
        if dtype.is_floating_point:
            out.fill_(_poison.float_value)
        else:
            out.fill_(torch.iinfo(dtype).max if _poison.int_value is None else _poison.int_value)
        _poison.allocated.append(out)
    return out


@contextlib.contextmanager
def poisoned_outputs(float_value: float = math.nan,
                     int_value: int | None = None) -> Iterator[list[torch.Tensor]]:
    """Fill every `empty_output` with `float_value` (float dtypes) or `int_value` (integer
    dtypes, default the dtype's largest value) while active; yields the list of the tensors
    so allocated, in order."""
    global _poison
    previous, _poison = _poison, _Poison(float_value, int_value, [])
    try:
        yield _poison.allocated
    finally:
        _poison = previous
