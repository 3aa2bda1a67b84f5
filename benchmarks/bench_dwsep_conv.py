"""Fused depthwise-separable conv (kernels.dwsep_conv) against PyTorch eager and torch.compile
of the same definition. Every case is depthwise KxK (dilated) -> ReLU -> pointwise 1x1, biases
on, as in an inference-mode DeepLab v3+ layer with BatchNorm folded. The canonical case is one
ASPP separable branch, 1x2048x64x64, 3x3 dilation 12 -> 256 (KERNELS.md's floor table); the
others are the ASPP branches at batch 1 and 8, Xception's middle flow and the v3+ decoder.

Rows in benchmarks/_roofline.py's vocabulary, the Triton kernel the candidate. Minimum traffic:
x, the weights and the output once (backward: grad_out, x and the weights read again, every
gradient written once); FLOPs 2 per multiply-add, the backward twice the forward's again (the
input and weight gradients of each conv).

Run (GPU; a CPU rehearsal with SEGBENCH_BENCH_REHEARSAL=1 TRITON_INTERPRET=1):
  pytest benchmarks/bench_dwsep_conv.py -s -k canonical --roofline-json=dwsep.json
"""

from __future__ import annotations

import pytest
import torch
from _roofline import REHEARSAL, bench_device, compiled

from kernels.dwsep_conv import (
    depthwise_separable_conv2d,
    depthwise_separable_conv2d_reference,
    dwsep_macs,
)

# name -> (n, c, h, w, c_out, kernel, dilation)
SHAPES = {
    "canonical-aspp-b1-2048x64x64-d12": (1, 2048, 64, 64, 256, 3, 12),
    **{f"aspp-b1-d{d}": (1, 2048, 64, 64, 256, 3, d) for d in (6, 18)},
    **{f"aspp-b8-d{d}": (8, 2048, 64, 64, 256, 3, d) for d in (6, 12, 18)},
    **{f"xception-middle-d{d}": (8, 728, 32, 32, 728, 3, d) for d in (1, 2)},
    "v3plus-decoder": (8, 304, 128, 128, 256, 3, 1),
}
REHEARSAL_SHAPE = (1, 16, 8, 8, 16, 3)  # every case, on the CPU, at the case's dilation
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CANDIDATES = ("triton",)
IMPLEMENTATIONS = {
    "triton": lambda: depthwise_separable_conv2d,
    "eager": lambda: depthwise_separable_conv2d_reference,
    "compile": lambda: compiled(depthwise_separable_conv2d_reference),
}


def make_inputs(shape, dtype: torch.dtype, requires_grad: bool):
    """x, dw_weight, dw_bias, pw_weight, pw_bias; weights scaled by 1/sqrt(fan-in)."""
    n, c, h, w, cout, k = shape[:6]
    device = bench_device()

    def rand(*size, scale=1.0):
        t = (torch.randn(*size, device=device) * scale).to(dtype)
        return t.requires_grad_(requires_grad)

    return (rand(n, c, h, w), rand(c, 1, k, k, scale=1 / k), rand(c),
            rand(cout, c, 1, 1, scale=c ** -0.5), rand(cout))


def _step(fn, inputs, dilation: int, backward: bool):
    """One forward, or one forward and the gradients of every input (autograd.grad: no
    accumulation into .grad inside the timing)."""
    def forward():
        return fn(*inputs, dilation=dilation, mid_activation="relu")

    if not backward:
        return forward
    grad_out = torch.randn_like(forward().detach())
    return lambda: torch.autograd.grad(forward(), inputs, grad_out)


def minimum_bytes(inputs, backward: bool) -> int:
    """Read x and the weights once, write the output once (and, with backward, read grad_out,
    x and the weights again, write every gradient once)."""
    x, *weights = inputs
    n, _, h, w = x.shape
    cout = weights[2].shape[0]
    out = n * cout * h * w * x.element_size()
    weight_bytes = sum(t.numel() * t.element_size() for t in weights)
    x_bytes = x.numel() * x.element_size()
    forward = x_bytes + weight_bytes + out
    return forward + (out + 2 * x_bytes + 2 * weight_bytes if backward else 0)


def flops(inputs, backward: bool) -> int:
    x, dw_weight, _, pw_weight, _ = inputs
    forward = 2 * dwsep_macs(x.shape, dw_weight.shape, pw_weight.shape)
    return 3 * forward if backward else forward


@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_dwsep_conv(compare, shape, dtype_name, passes):
    backward = passes == "fwd+bwd"
    dilation = SHAPES[shape][-1]
    inputs = make_inputs(REHEARSAL_SHAPE if REHEARSAL else SHAPES[shape], DTYPES[dtype_name],
                         backward)
    steps = {name: _step(make(), inputs, dilation, backward)
             for name, make in IMPLEMENTATIONS.items()}
    compare(kernel="dwsep_conv", case=shape, dtype=dtype_name, passes=passes,
            implementations=steps, candidates=CANDIDATES,
            nbytes=minimum_bytes(inputs, backward), flops=flops(inputs, backward))
