"""The kernel launches a GPU makes, captured in the Triton interpreter for the sm_90 compile
check (scripts/sm90_compile_check.sh calls `capture_gpu_launches` through
triton_aot_check.py --call).

The interpreter tests launch what the interpreter needs: fp32 dot operands for bf16 inputs (its
bf16 dots are wrong), fewer backward programs. Here every launcher chooses as on a GPU
(kernels._common.launching_as) for the shapes the GPU runs: the canonical benchmark shapes,
the models' layers and the `gpu` tests, on tiny batches (block sizes and dtypes decide the
compiled binary, the batch does not). Results computed here are not checked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels
from kernels._common import launching_as

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HALF_DTYPES = (torch.float16, torch.bfloat16)

# (N, head dim): every Swin variant's 7x7 windows at head dim 32 (models, benchmarks), then the
# other windows of the gpu tests.
SWIN_WINDOW = (49, 32)
OTHER_WINDOWS = ((144, 64), (100, 32), (9, 16))
SWIN_HEADS, MASK_WINDOWS, IMAGES = 3, 3, 2

# (N, C, H, W) entering SegNet's max-pools at 360x480 (VGG16 stages), and 512x64x64, with
# H cut to 4 rows: the tile depends on W (NCHW) or C (channels_last) alone, and the dtypes.
POOL_INPUTS = ((1, 2, 4, 480), (1, 2, 4, 240), (1, 2, 4, 120), (1, 2, 4, 60), (1, 2, 4, 30),
               (1, 2, 4, 64))
CHANNELS_LAST_POOL_INPUT = (1, 512, 4, 6)


def _attention_inputs(n_tokens: int, head_dim: int, dtype: torch.dtype, swin_layout: bool,
                      bias_dtype: torch.dtype):
    windows = IMAGES * MASK_WINDOWS
    if swin_layout:  # Swin's Linear -> (B_, N, 3, heads, d) -> permute: q, k, v interleaved
        qkv = torch.randn(windows, n_tokens, 3, SWIN_HEADS, head_dim, dtype=dtype)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (torch.randn(windows, SWIN_HEADS, n_tokens, head_dim, dtype=dtype)
                   for _ in range(3))
    bias = torch.randn(SWIN_HEADS, n_tokens, n_tokens, dtype=bias_dtype)
    mask = torch.zeros(MASK_WINDOWS, n_tokens, n_tokens, dtype=dtype)
    return q, k, v, bias, mask


def _attention_forward_backward(q, k, v, bias, mask) -> None:
    leaves = [t.detach().requires_grad_() for t in (q, k, v, bias)]
    out = kernels.window_attention(*leaves, mask)
    out.backward(torch.randn_like(out))


def window_attention_launches() -> None:
    n_tokens, head_dim = SWIN_WINDOW
    for dtype in DTYPES:
        for swin_layout in (True, False):
            for bias_dtype in {dtype, torch.float32}:
                q, k, v, bias, mask = _attention_inputs(n_tokens, head_dim, dtype, swin_layout,
                                                        bias_dtype)
                _attention_forward_backward(q, k, v, bias, mask)  # shifted windows (SW-MSA)
                _attention_forward_backward(q, k, v, bias, None)  # W-MSA
    for n_tokens, head_dim in OTHER_WINDOWS:
        for dtype in HALF_DTYPES:
            q, k, v, bias, mask = _attention_inputs(n_tokens, head_dim, dtype, False, dtype)
            _attention_forward_backward(q, k, v, bias, mask)


def _pool_unpool_forward_backward(x: torch.Tensor) -> None:
    x = x.detach().requires_grad_()
    values, local = kernels.max_pool2d_with_indices(x)
    out = kernels.max_unpool2d_compact(values, local, output_size=x.shape[-2:])
    out.backward(torch.randn_like(out))
    flat_values, flat = F.max_pool2d(x.detach(), 2, return_indices=True)
    flat_values.requires_grad_()
    for check_indices in (True, False):
        out = kernels.max_unpool2d(flat_values, flat, 2, output_size=x.shape[-2:],
                                   check_indices=check_indices)
        out.backward(torch.randn_like(out))


def max_unpool_launches() -> None:
    for dtype in DTYPES:
        for shape in POOL_INPUTS:
            _pool_unpool_forward_backward(torch.randn(shape).to(dtype))
        channels_last = torch.randn(CHANNELS_LAST_POOL_INPUT).to(dtype)
        _pool_unpool_forward_backward(channels_last.to(memory_format=torch.channels_last))


def capture_gpu_launches() -> None:
    with launching_as("gpu"):
        window_attention_launches()
        max_unpool_launches()
