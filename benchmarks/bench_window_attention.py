"""Fused window attention (kernels.window_attention) against the PyTorch ways of computing it:
7x7 windows (N = 49), head dim 32, batch 8. The canonical case is Swin-T stage 1 at 224x224
(56x56 tokens: 64 windows per image, 3 heads); the others are Swin at 512x512 (128x128 tokens
padded to 133x133 -> 19x19 windows; then 10x10, 5x5).

Implementations, each given the same q, k, v, bias and (shifted windows) mask:
  triton    the fused kernel (the candidate)
  eager     window_attention_reference: Swin's own softmax path, scores materialised
  sdpa      segbench.layers.window_attention (the torch path): SDPA, bias+mask materialised
  compile   torch.compile of the eager path

Rows in benchmarks/_roofline.py's vocabulary; the minimum traffic reads q, k, v, bias and mask
once and writes the output once (backward: reads q, k, v, dO, bias and mask, writes dq, dk, dv
and dbias). Working sets of the smaller cases fit in L2, which is flushed before every call.

Run (GPU; a CPU rehearsal with SEGBENCH_BENCH_REHEARSAL=1 TRITON_INTERPRET=1):
  pytest benchmarks/bench_window_attention.py -s -k canonical --roofline-json=wa.json
"""

from __future__ import annotations

import pytest
import torch
from _roofline import REHEARSAL, bench_device, compiled, nbytes

from kernels.window_attention import window_attention, window_attention_reference
from segbench.layers.attention import window_attention as layer_window_attention

N_TOKENS, WINDOW, HEAD_DIM = 49, 7, 32
SHAPES = {  # name -> (images, windows per image, heads)
    "canonical-swin-t-224-stage1": (8, 64, 3),
    "swin-t-512-stage1": (8, 361, 3),
    "swin-t-512-stage2": (8, 100, 6),
    "swin-t-512-stage3": (8, 25, 12),
    "swin-b-512-stage1": (8, 361, 4),
}
REHEARSAL_SHAPE = (1, 4, 2)  # every case, on the CPU: 2x2 windows, 2 heads
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CANDIDATES = ("triton",)


def _sdpa(q, k, v, bias, mask):
    return layer_window_attention(q, k, v, bias, mask)


IMPLEMENTATIONS = {
    "triton": lambda: window_attention,
    "eager": lambda: window_attention_reference,
    "sdpa": lambda: _sdpa,
    "compile": lambda: compiled(window_attention_reference),
}


def swin_shift_mask(windows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Swin's mask for a shifted 7x7 partition: 0 within a region, -100 across regions, where
    the last window row and column straddle the cyclic wrap (3 regions each way)."""
    side = int(windows ** 0.5)
    size, shift = side * WINDOW, WINDOW // 2
    region = torch.zeros(size, size, device=device)
    label = 0
    for rows in (slice(0, -WINDOW), slice(-WINDOW, -shift), slice(-shift, None)):
        for cols in (slice(0, -WINDOW), slice(-WINDOW, -shift), slice(-shift, None)):
            region[rows, cols] = label
            label += 1
    windowed = region.view(side, WINDOW, side, WINDOW).permute(0, 2, 1, 3).reshape(windows,
                                                                                  N_TOKENS)
    different = windowed.unsqueeze(1) != windowed.unsqueeze(2)
    return torch.zeros(windows, N_TOKENS, N_TOKENS, device=device).masked_fill(
        different, -100.0).to(dtype)


def make_case(shape: str, shifted: bool, dtype: torch.dtype, backward: bool):
    images, windows, heads = REHEARSAL_SHAPE if REHEARSAL else SHAPES[shape]
    device = bench_device()
    q, k, v = (torch.randn(images * windows, heads, N_TOKENS, HEAD_DIM, device=device,
                           dtype=dtype, requires_grad=backward) for _ in range(3))
    bias = torch.randn(heads, N_TOKENS, N_TOKENS, device=device, dtype=dtype,
                       requires_grad=backward)
    mask = swin_shift_mask(windows, dtype, device) if shifted else None
    return q, k, v, bias, mask


def minimum_bytes(q, bias, mask, backward: bool) -> int:
    """Every tensor across memory once: forward reads q, k, v, bias, mask and writes out; the
    backward then reads q, k, v, dO, bias, mask and writes dq, dk, dv, dbias."""
    qkv_sized = nbytes(q)
    forward = 4 * qkv_sized + nbytes(bias, mask)
    return forward + (7 * qkv_sized + 2 * nbytes(bias) + nbytes(mask) if backward else 0)


def tensor_core_flops(q, backward: bool) -> int:
    """2 FLOPs per multiply-add: QK^T and PV forward; recomputed QK^T, dP, dV, dQ, dK
    backward."""
    windows, heads, n_tokens, head_dim = q.shape
    products = 2 + (5 if backward else 0)
    return 2 * products * windows * heads * n_tokens * n_tokens * head_dim


def _step(fn, q, k, v, bias, mask, backward: bool):
    if not backward:
        return lambda: fn(q, k, v, bias, mask)
    grad_out = torch.randn_like(q)
    return lambda: torch.autograd.grad(fn(q, k, v, bias, mask), (q, k, v, bias), grad_out)


@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shifted", [False, True], ids=["wmsa", "swmsa"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_window_attention(compare, shape, shifted, dtype_name, passes):
    backward = passes == "fwd+bwd"
    q, k, v, bias, mask = make_case(shape, shifted, DTYPES[dtype_name], backward)
    steps = {name: _step(make(), q, k, v, bias, mask, backward)
             for name, make in IMPLEMENTATIONS.items()}
    compare(kernel="window_attention", case=f"{shape} {'swmsa' if shifted else 'wmsa'}",
            dtype=dtype_name, passes=passes, implementations=steps, candidates=CANDIDATES,
            nbytes=minimum_bytes(q, bias, mask, backward), flops=tensor_core_flops(q, backward))
