"""Fused depthwise-separable conv: Triton vs PyTorch eager vs torch.compile (GPU only).

Run: pytest benchmarks/bench_dwsep_conv.py --benchmark-json=results/kernels/<date>_<gpu>.json
(add -s to see the per-case roofline lines; they are also in each case's extra_info).

Every case is depthwise KxK (dilated) -> ReLU -> pointwise 1x1, biases on, as in an
inference-mode DeepLab v3+ layer with BatchNorm folded. Timings are warm-cache (the working
sets fit in the 50 MB L2 only partly; the same policy for every implementation). The
bandwidth floor is minimum bytes / measured copy bandwidth; the compute floor is the FLOPs
(2 per multiply-add, as hardware peaks are quoted) / a measured large-matmul rate.
"""

from __future__ import annotations

import pytest
import torch
from conftest import cuda_median_ms

from kernels.dwsep_conv import (
    depthwise_separable_conv2d,
    depthwise_separable_conv2d_reference,
    dwsep_macs,
)

# name -> (n, c, h, w, c_out, kernel, dilation)
SHAPES = {
    **{f"aspp-b8-d{d}": (8, 2048, 64, 64, 256, 3, d) for d in (6, 12, 18)},
    **{f"aspp-b1-d{d}": (1, 2048, 64, 64, 256, 3, d) for d in (6, 12, 18)},
    **{f"xception-middle-d{d}": (8, 728, 32, 32, 728, 3, d) for d in (1, 2)},
    "v3plus-decoder": (8, 304, 128, 128, 256, 3, 1),
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
IMPLEMENTATIONS = ("triton", "eager", "compile")
PASSES = ("forward", "forward+backward")


def make_inputs(shape, dtype, requires_grad):
    n, c, h, w, cout, k, _ = shape

    def rand(*size, scale=1.0):
        t = (torch.randn(*size, device="cuda") * scale).to(dtype)
        return t.requires_grad_(requires_grad)

    return (rand(n, c, h, w), rand(c, 1, k, k, scale=1 / k), rand(c),
            rand(cout, c, 1, 1, scale=c ** -0.5), rand(cout))


def implementation(name):
    if name == "triton":
        return depthwise_separable_conv2d
    if name == "eager":
        return depthwise_separable_conv2d_reference
    torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no dynamic shapes
    return torch.compile(depthwise_separable_conv2d_reference, dynamic=False)


def step(fn, inputs, dilation, backward):
    """One forward, or one forward plus the gradients of every input (returned, not
    accumulated into .grad, so no implementation pays for an extra add)."""
    def forward():
        return fn(*inputs, dilation=dilation, mid_activation="relu")

    if not backward:
        return forward
    grad_out = torch.randn_like(forward())
    return lambda: torch.autograd.grad(forward(), inputs, grad_out)


def minimum_bytes(shape, dtype, backward):
    """Read inputs and weights once, write the output once (and, with backward, read
    grad_out, x and the weights again, write every gradient once)."""
    n, c, h, w, cout, k, _ = shape
    x, out = n * c * h * w, n * cout * h * w
    weights = c * k * k + c + cout * c + cout
    elements = x + out + weights
    if backward:
        elements += out + 2 * x + 2 * weights  # grad_out, x, grad_x; weights, their grads
    return elements * torch.finfo(dtype).bits // 8


@pytest.fixture(scope="session")
def matmul_tflops():
    """Measured dense matmul rate per dtype (TF32 allowed for fp32, as in eager's convs)."""
    rates = {}

    def measure(dtype):
        if dtype not in rates:
            size = 8192
            a = torch.randn(size, size, device="cuda").to(dtype)
            b = torch.randn(size, size, device="cuda").to(dtype)
            ms = cuda_median_ms(lambda: a @ b, warmup=5, repeats=20)
            rates[dtype] = 2 * size ** 3 / (ms * 1e-3) / 1e12
        return rates[dtype]

    return measure


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("shape_name", SHAPES)
def test_dwsep_conv(gpu_benchmark, benchmark, copy_bandwidth_gbs, matmul_tflops,
                    shape_name, dtype_name, impl, passes):
    shape, dtype, backward = SHAPES[shape_name], DTYPES[dtype_name], passes != "forward"
    inputs = make_inputs(shape, dtype, requires_grad=backward)
    run = step(implementation(impl), inputs, shape[-1], backward)
    gpu_benchmark(run)

    ms = cuda_median_ms(run)
    n, c, h, w = shape[:4]
    flops = 2 * dwsep_macs((n, c, h, w), (c, 1, shape[5], shape[5]), (shape[4], c, 1, 1))
    flops *= 3 if backward else 1  # plus the input and weight gradients of each conv
    nbytes = minimum_bytes(shape, dtype, backward)
    bandwidth_floor_ms = nbytes / (copy_bandwidth_gbs * 1e9) * 1e3
    compute_floor_ms = flops / (matmul_tflops(dtype) * 1e12) * 1e3
    benchmark.extra_info.update(
        median_ms=ms, gb_per_s=nbytes / ms / 1e6, tflop_per_s=flops / ms / 1e9,
        bandwidth_floor_ms=bandwidth_floor_ms, compute_floor_ms=compute_floor_ms,
        fraction_of_floor=max(bandwidth_floor_ms, compute_floor_ms) / ms,
    )
    info = benchmark.extra_info
    print(f"\n{shape_name} {dtype_name} {impl} {passes}: {ms:.3f} ms, "
          f"{info['gb_per_s']:.0f} GB/s of {copy_bandwidth_gbs:.0f}, "
          f"{info['tflop_per_s']:.1f} TFLOP/s; floors: bandwidth {bandwidth_floor_ms:.3f} ms, "
          f"compute {compute_floor_ms:.3f} ms -> {info['fraction_of_floor']:.0%} of floor")
