"""SegNet's pool/unpool pair: Triton (int64 and 1-byte local indices) against F.max_unpool2d,
eager and torch.compile. The canonical case unpools 8x512x32x32 to 64x64 (KERNELS.md); the
others are the five SegNet decoder stages at 360x480, batch 8 (shapes name the tensor that
enters the max-pool and leaves the matching unpool).

Rows in benchmarks/_roofline.py's vocabulary, the Triton implementations the candidates.
Minimum traffic: every tensor read or written once (the backward reads all of grad_output:
its maxima are spread over every 32-byte sector); the 1-byte indices move fewer bytes than
int64 ones, so each implementation has its own. "checked" unpools make one host sync to verify
the indices; "unchecked" skip it.

Run (GPU; a CPU rehearsal with SEGBENCH_BENCH_REHEARSAL=1 TRITON_INTERPRET=1):
  pytest benchmarks/bench_max_unpool.py -s -k canonical --roofline-json=unpool.json
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _roofline import REHEARSAL, bench_device, compiled, nbytes

import kernels

POOL_INPUTS = {
    "canonical-8x512x64x64": (8, 512, 64, 64),
    "stage1-64x360x480": (8, 64, 360, 480),
    "stage2-128x180x240": (8, 128, 180, 240),
    "stage3-256x90x120": (8, 256, 90, 120),
    "stage4-512x45x60": (8, 512, 45, 60),  # pools to 22x30 (floor)
    "stage5-512x22x30": (8, 512, 22, 30),
}
REHEARSAL_INPUT = (1, 2, 8, 8)  # every case, on the CPU
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
UNPOOL_CANDIDATES = ("triton-int64", "triton-int64-unchecked", "triton-compact",
                     "triton-compact-unchecked")
PAIR_CANDIDATES = ("triton-compact", "triton-compact-unchecked")


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


def unpool_fn(impl: str):
    if impl == "eager":
        return _eager_unpool
    if impl == "compile":
        return compiled(_eager_unpool)
    check = not impl.endswith("unchecked")
    if impl.startswith("triton-int64"):
        return lambda v, i, hw: kernels.max_unpool2d(v, i, 2, output_size=hw, check_indices=check)
    return lambda v, l, hw: kernels.max_unpool2d_compact(v, l, 2, output_size=hw,
                                                         check_indices=check)


def pair_fn(impl: str):
    if impl == "eager":
        return _eager_pair
    if impl == "compile":
        return compiled(_eager_pair)
    return _triton_pair(check_indices=not impl.endswith("unchecked"))


def timed_call(fn, args, backward: bool, wrt: torch.Tensor):
    """fn(*args), or fn(*args) and the gradient wrt `wrt` of a fixed random upstream gradient
    (autograd.grad: no accumulation into .grad inside the timing)."""
    if not backward:
        return lambda: fn(*args)
    grad = torch.randn_like(fn(*args).detach())
    return lambda: torch.autograd.grad(fn(*args), wrt, grad)


def pooled_inputs(case: str, dtype: torch.dtype):
    shape = REHEARSAL_INPUT if REHEARSAL else POOL_INPUTS[case]
    x = torch.randn(shape, device=bench_device(), dtype=dtype)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    _, local = kernels.max_pool2d_with_indices(x)
    return x, values, indices, local


@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_INPUTS)
def test_unpool(compare, case, dtype, passes):
    backward = passes == "fwd+bwd"
    x, values, indices, local = pooled_inputs(case, DTYPES[dtype])
    values.requires_grad_(backward)
    steps, moved = {}, {}
    for impl in ("eager", "compile", *UNPOOL_CANDIDATES):
        index = local if "compact" in impl else indices
        steps[impl] = timed_call(unpool_fn(impl), (values, index, x.shape[-2:]), backward,
                                 values)
        moved[impl] = nbytes(values, index, x)  # values + indices in, output out
        if backward:
            moved[impl] += nbytes(index, x, values)  # indices + grad_output in, grad out
    compare(kernel="max_unpool", case=f"unpool {case}", dtype=dtype, passes=passes,
            implementations=steps, candidates=UNPOOL_CANDIDATES, nbytes=moved)


@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_INPUTS)
def test_pool_unpool_pair(compare, case, dtype, passes):
    backward = passes == "fwd+bwd"
    x, values, indices, local = pooled_inputs(case, DTYPES[dtype])
    x.requires_grad_(backward)
    steps, moved = {}, {}
    for impl in ("eager", "compile", *PAIR_CANDIDATES):
        index = local if impl.startswith("triton") else indices
        steps[impl] = timed_call(pair_fn(impl), (x,), backward, x)
        # pool: x -> values, indices; unpool: values, indices -> out
        moved[impl] = 2 * nbytes(values, index) + 2 * nbytes(x)
        if backward:  # each backward: grad in, indices, grad out
            moved[impl] += 2 * nbytes(index, values) + 2 * nbytes(x)
    compare(kernel="max_pool_unpool", case=f"pool+unpool {case}", dtype=dtype, passes=passes,
            implementations=steps, candidates=PAIR_CANDIDATES, nbytes=moved)


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
def test_segnet_training_step(benchmark, gpu_benchmark, kernels_backend):
    step = _segnet_training_step(kernels_backend)
    peak = _peak_mb(step)
    pooled = sum(n * c * (h // 2) * (w // 2) for n, c, h, w in list(POOL_INPUTS.values())[1:])
    saved_mb = pooled * 7 / 2**20  # int64 -> uint8 per kept index
    benchmark.extra_info.update(train_peak_mb=peak, index_bytes_saved_mb=saved_mb)
    print(f"\nSegNet 8x1x360x480 bf16-autocast training step, kernels={kernels_backend}: "
          f"peak {peak:.0f} MB above the weights; the goal: triton lower by >= {saved_mb:.0f} MB")
    gpu_benchmark(step)
