"""SegNet's pool/unpool pair: Triton (int64 and 1-byte local indices) against F.max_unpool2d,
eager and torch.compile, at the five SegNet decoder stages (360x480, batch 8) and 8x512x32x32.

Run: pytest benchmarks/bench_max_unpool.py --benchmark-only -s
(-s shows one line per case: median ms by CUDA events, achieved GB/s, the bandwidth floor
from the copy bandwidth measured in the same run, and the speedup over eager.)

Bytes counted are the minimum the op must move: every tensor read or written once (the
backward reads all of grad_output: its maxima are spread over every 32-byte sector). Timings
are warm-cache where the working set fits in L2 (50 MB on H100): the two smallest stages.
"checked" unpools make one host sync to verify the indices; "unchecked" skip it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import cuda_median_ms  # benchmarks/ has no __init__: pytest puts it on sys.path

import kernels

# (N, C, H, W) entering each max-pool = leaving the matching unpool; VGG16 at 360x480.
POOL_INPUTS = {
    "stage1-64x360x480": (8, 64, 360, 480),
    "stage2-128x180x240": (8, 128, 180, 240),
    "stage3-256x90x120": (8, 256, 90, 120),
    "stage4-512x45x60": (8, 512, 45, 60),  # pools to 22x30 (floor)
    "stage5-512x22x30": (8, 512, 22, 30),
    "512x64x64": (8, 512, 64, 64),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
INT64_UNPOOLS = ("eager", "compile", "triton-int64", "triton-int64-unchecked")
UNPOOLS = (*INT64_UNPOOLS, "triton-compact", "triton-compact-unchecked")
PAIRS = ("eager", "compile", "triton-compact", "triton-compact-unchecked")


def _eager_unpool(values, indices, output_hw):
    return F.max_unpool2d(values, indices, 2, output_size=output_hw)


def _eager_pair(x):
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    return F.max_unpool2d(values, indices, 2, output_size=x.shape[-2:])


def _triton_pair(check_indices: bool):
    def pair(x):
        values, local = kernels.max_pool2d_with_indices(x)
        return kernels.max_unpool2d_compact(values, local, output_size=x.shape[-2:],
                                            check_indices=check_indices)
    return pair


def _compiled(fn):
    torch._dynamo.reset()  # a fresh cache per case: many shapes would hit the recompile limit
    return torch.compile(fn, dynamic=False)


def unpool_fn(impl: str):
    if impl == "eager":
        return _eager_unpool
    if impl == "compile":
        return _compiled(_eager_unpool)
    check = not impl.endswith("unchecked")
    if impl.startswith("triton-int64"):
        return lambda v, i, hw: kernels.max_unpool2d(v, i, 2, output_size=hw, check_indices=check)
    return lambda v, l, hw: kernels.max_unpool2d_compact(v, l, 2, output_size=hw,
                                                         check_indices=check)


def pair_fn(impl: str):
    if impl == "eager":
        return _eager_pair
    if impl == "compile":
        return _compiled(_eager_pair)
    return _triton_pair(check_indices=not impl.endswith("unchecked"))


def timed_call(fn, args, backward: bool, wrt: torch.Tensor):
    """fn(*args), or fn(*args) and the gradient wrt `wrt` of a fixed random upstream gradient
    (autograd.grad: no accumulation into .grad inside the timing)."""
    if not backward:
        return lambda: fn(*args)
    grad = torch.randn_like(fn(*args).detach())
    return lambda: torch.autograd.grad(fn(*args), wrt, grad)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def report(benchmark, name, ms, moved, copy_gbs, eager_ms):
    achieved = moved / (ms * 1e-3) / 1e9
    floor_ms = moved / (copy_gbs * 1e9) * 1e3
    benchmark.extra_info.update(median_ms=ms, bytes=moved, achieved_gbs=achieved, copy_gbs=copy_gbs,
                                floor_ms=floor_ms, speedup_vs_eager=eager_ms / ms)
    print(f"\n{name}: {ms * 1e3:8.1f} us  {achieved:7.0f} GB/s = {achieved / copy_gbs:5.1%} "
          f"of copy ({copy_gbs:.0f} GB/s; floor {floor_ms * 1e3:.1f} us)  "
          f"{eager_ms / ms:4.2f}x eager")


def pooled_inputs(shape, dtype):
    x = torch.randn(shape, device="cuda", dtype=dtype)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    _, local = kernels.max_pool2d_with_indices(x)
    return x, values, indices, local


@pytest.mark.parametrize("impl", UNPOOLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_INPUTS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_unpool(gpu_benchmark, copy_bandwidth_gbs, backward, case, dtype, impl):
    x, values, indices, local = pooled_inputs(POOL_INPUTS[case], DTYPES[dtype])
    index = indices if impl in INT64_UNPOOLS else local
    values.requires_grad_(backward)
    fn = timed_call(unpool_fn(impl), (values, index, x.shape[-2:]), backward, values)
    eager = timed_call(_eager_unpool, (values, indices, x.shape[-2:]), backward, values)
    moved = nbytes(values, index, x)  # values + indices in, output out
    if backward:
        moved += nbytes(index, x, values)  # indices + grad_output in, grad_values out
    gpu_benchmark(fn)
    report(gpu_benchmark.benchmark, f"unpool {impl} {case} {dtype} {_pass(backward)}",
           cuda_median_ms(fn), moved, copy_bandwidth_gbs, cuda_median_ms(eager))


@pytest.mark.parametrize("impl", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_INPUTS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_pool_unpool_pair(gpu_benchmark, copy_bandwidth_gbs, backward, case, dtype, impl):
    x, values, indices, local = pooled_inputs(POOL_INPUTS[case], DTYPES[dtype])
    index = local if impl.startswith("triton") else indices
    x.requires_grad_(backward)
    fn = timed_call(pair_fn(impl), (x,), backward, x)
    eager = timed_call(_eager_pair, (x,), backward, x)
    moved = 2 * nbytes(values, index) + nbytes(x, x)  # pool: x -> v, i; unpool: v, i -> out
    if backward:
        moved += 2 * nbytes(index, values) + nbytes(x, x)  # each backward: grad in, i, grad out
    gpu_benchmark(fn)
    report(gpu_benchmark.benchmark, f"pool+unpool {impl} {case} {dtype} {_pass(backward)}",
           cuda_median_ms(fn), moved, copy_bandwidth_gbs, cuda_median_ms(eager))


def _pass(backward: bool) -> str:
    return "fwd+bwd" if backward else "fwd"


def _segnet_training_step(kernels_backend: str):
    from segbench.layers import set_kernels
    from segbench.models import create_model

    model = create_model("segnet", num_classes=2, in_channels=1)
    model = set_kernels(model, kernels_backend).cuda()
    images = torch.randn(8, 1, 360, 480, device="cuda")
    labels = torch.randint(0, 2, (8, 360, 480), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def _peak_mb(step) -> float:
    step()  # warm-up: cuDNN workspaces, allocator pools
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@pytest.mark.parametrize("kernels_backend", ["torch", "triton"])
def test_segnet_training_step(gpu_benchmark, kernels_backend):
    step = _segnet_training_step(kernels_backend)
    peak = _peak_mb(step)
    pooled = sum(n * c * (h // 2) * (w // 2) for n, c, h, w in list(POOL_INPUTS.values())[:5])
    saved_mb = pooled * 7 / 2**20  # int64 -> uint8 per kept index
    gpu_benchmark.benchmark.extra_info.update(train_peak_mb=peak, index_bytes_saved_mb=saved_mb)
    print(f"\nSegNet 8x1x360x480 bf16-autocast training step, kernels={kernels_backend}: "
          f"peak {peak:.0f} MB above the weights; the goal: triton lower by >= {saved_mb:.0f} MB")
    gpu_benchmark(step)
