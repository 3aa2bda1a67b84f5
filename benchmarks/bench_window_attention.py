"""Fused window attention (kernels.window_attention) against the PyTorch ways of computing it,
at Swin's canonical shapes: 512x512 input, batch 8, 7x7 windows (N = 49), head dim 32.

Implementations, each given the same q, k, v, bias and (shifted windows) mask:
  triton    the fused kernel
  eager     window_attention_reference: Swin's own softmax path, scores materialised
  sdpa      segbench.layers.window_attention (the torch path): SDPA with bias+mask materialised
  compiled  torch.compile of the eager path

Every case prints its median time, the GB/s it achieves over its minimum traffic (q, k, v, bias
and mask read once, the output written once; backward adds dO read and dq, dk, dv, dbias
written) and that traffic's floor at the copy bandwidth measured in the same run. Timings are
warm-cache where the working set fits in the 50 MB L2 (stages 2 and 3 at fp16). pytest-benchmark
groups the four implementations of one case, so its table shows the ratios.

Run (GPU only; skips without CUDA):
  pytest benchmarks/bench_window_attention.py -s \
      --benchmark-json=results/kernels/<date>_<gpu>_window_attention.json
"""

from __future__ import annotations

import pytest
import torch

from kernels.window_attention import window_attention, window_attention_reference
from segbench.layers.attention import window_attention as layer_window_attention

N_TOKENS, HEAD_DIM, IMAGES = 49, 32, 8
# 512x512 input, patch 4: 128x128 tokens padded to 133x133 -> 19x19 windows; then 70 -> 10x10,
# 35 -> 5x5.
SHAPES = {  # name -> (windows per image, heads)
    "swin_t_stage1": (361, 3),
    "swin_t_stage2": (100, 6),
    "swin_t_stage3": (25, 12),
    "swin_b_stage1": (361, 4),
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _sdpa(q, k, v, bias, mask):
    return layer_window_attention(q, k, v, bias, mask)


def _compiled_eager():
    torch.compiler.reset()  # a fresh compile per case, clear of dynamo's recompile limit
    return torch.compile(window_attention_reference)


IMPLEMENTATIONS = {
    "triton": lambda: window_attention,
    "eager": lambda: window_attention_reference,
    "sdpa": lambda: _sdpa,
    "compiled": _compiled_eager,
}


def swin_shift_mask(windows: int, dtype: torch.dtype) -> torch.Tensor:
    """Swin's mask for a shifted 7x7 partition: 0 within a region, -100 across regions, where
    the last window row and column straddle the cyclic wrap (3 regions each way)."""
    side = int(windows ** 0.5)
    size, shift = side * 7, 3
    region = torch.zeros(size, size, device="cuda")
    label = 0
    for rows in (slice(0, -7), slice(-7, -shift), slice(-shift, None)):
        for cols in (slice(0, -7), slice(-7, -shift), slice(-shift, None)):
            region[rows, cols] = label
            label += 1
    windowed = region.view(side, 7, side, 7).permute(0, 2, 1, 3).reshape(windows, N_TOKENS)
    different = windowed.unsqueeze(1) != windowed.unsqueeze(2)
    return torch.zeros(windows, N_TOKENS, N_TOKENS, device="cuda").masked_fill(
        different, -100.0).to(dtype)


def make_case(shape: str, shifted: bool, dtype: torch.dtype, backward: bool):
    windows, heads = SHAPES[shape]
    q, k, v = (torch.randn(IMAGES * windows, heads, N_TOKENS, HEAD_DIM, device="cuda",
                           dtype=dtype, requires_grad=backward) for _ in range(3))
    bias = torch.randn(heads, N_TOKENS, N_TOKENS, device="cuda", dtype=dtype,
                       requires_grad=backward)
    mask = swin_shift_mask(windows, dtype) if shifted else None
    return q, k, v, bias, mask


def minimum_bytes(q, bias, mask, backward: bool) -> int:
    """Traffic if every tensor crosses HBM once: forward reads q, k, v, bias, mask and writes
    out; the backward then reads q, k, v, dO, bias, mask and writes dq, dk, dv, dbias."""
    qkv_sized = q.numel() * q.element_size()
    bias_bytes = bias.numel() * bias.element_size()
    mask_bytes = 0 if mask is None else mask.numel() * mask.element_size()
    forward = 4 * qkv_sized + bias_bytes + mask_bytes
    return forward + (7 * qkv_sized + 2 * bias_bytes + mask_bytes if backward else 0)


def tensor_core_flops(q, backward: bool) -> int:
    """2 FLOPs per multiply-add (the hardware's convention): QK^T and PV forward; recomputed
    QK^T, dP, dV, dQ, dK backward."""
    windows, heads, n_tokens, head_dim = q.shape
    products = 2 + (5 if backward else 0)
    return 2 * products * windows * heads * n_tokens * n_tokens * head_dim


def _step(fn, q, k, v, bias, mask, backward: bool):
    if not backward:
        return lambda: fn(q, k, v, bias, mask)
    grad_out = torch.randn_like(q)
    return lambda: torch.autograd.grad(fn(q, k, v, bias, mask), (q, k, v, bias), grad_out)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shifted", [False, True], ids=["wmsa", "swmsa"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_window_attention(benchmark, gpu_benchmark, copy_bandwidth_gbs, implementation, shape,
                          shifted, dtype_name, backward):
    q, k, v, bias, mask = make_case(shape, shifted, DTYPES[dtype_name], backward)
    step = _step(IMPLEMENTATIONS[implementation](), q, k, v, bias, mask, backward)
    benchmark.group = (f"window_attention {shape} {'swmsa' if shifted else 'wmsa'} "
                       f"{dtype_name} {'fwd_bwd' if backward else 'fwd'}")
    gpu_benchmark(step)

    seconds = benchmark.stats.stats.median
    traffic = minimum_bytes(q, bias, mask, backward)
    achieved_gbs = traffic / seconds / 1e9
    tflops = tensor_core_flops(q, backward) / seconds / 1e12
    floor_us = traffic / (copy_bandwidth_gbs * 1e9) * 1e6
    benchmark.extra_info.update(gb_s=achieved_gbs, tflop_s=tflops, floor_us=floor_us,
                                fraction_of_copy_bandwidth=achieved_gbs / copy_bandwidth_gbs)
    print(f"\n{benchmark.group} {implementation}: {seconds * 1e6:.1f} us, "
          f"{achieved_gbs:.0f} GB/s = {achieved_gbs / copy_bandwidth_gbs:.0%} of copy "
          f"{copy_bandwidth_gbs:.0f} GB/s (floor {floor_us:.1f} us), {tflops:.1f} TFLOP/s")
