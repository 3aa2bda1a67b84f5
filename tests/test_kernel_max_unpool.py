"""kernels.max_unpool against its PyTorch references: forward and gradients, exact equality
(the ops only move values; pool-backward sums use integer-valued gradients, so any order of
summation is exact). On CPU the kernels run in the Triton interpreter on tiny shapes; every
output is allocated poisoned, so an element a kernel forgets to write fails the comparison.
Fresh random inputs each run; the seed is printed (SEGBENCH_TEST_SEED=<seed> replays it)."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import max_unpool as mu
from kernels._common import FVCORE_HANDLES
from segbench.layers import MaxPoolWithIndices, MaxUnpool, set_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # values are moved, never computed
POISON_FLOAT = 1234.0  # no test input holds it: randn and small integers only
POISON_INDEX = 255  # an invalid local index for every kernel size tested


@pytest.fixture(autouse=True)
def seed():
    value = int(os.environ.get("SEGBENCH_TEST_SEED", random.randrange(2**31)))
    print(f"seed={value}")
    torch.manual_seed(value)
    return value


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as POISON: the records let a test check they were used."""
    allocated = []

    def poisoned_empty(shape, dtype, like):
        out = torch.empty(shape, dtype=dtype, device=like.device,
                          memory_format=mu._memory_format(like))
        out.fill_(POISON_INDEX if dtype == mu.LOCAL_INDEX_DTYPE else POISON_FLOAT)
        allocated.append(out)
        return out

    monkeypatch.setattr(mu, "_empty", poisoned_empty)
    return allocated


def assert_same(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def integer_valued(like):
    """Small integers: sums of a few of them are exact in every float dtype."""
    return torch.randint(-8, 9, like.shape, device=like.device).to(like.dtype)


def unpool_both(values, indices, *args, **kwargs):
    """(kernel result, reference result, kernel grad, reference grad) for one upstream grad."""
    ours_in = values.detach().clone().requires_grad_()
    ref_in = values.detach().clone().requires_grad_()
    ours = kernels.max_unpool2d(ours_in, indices, *args, **kwargs)
    ref = F.max_unpool2d(ref_in, indices, *args, **kwargs)
    grad = randn(*ref.shape, dtype=ref.dtype)
    ours.backward(grad)
    ref.backward(grad)
    return ours, ref, ours_in.grad, ref_in.grad


# (input shape, kernel_size, stride, padding, unpool to the pooled input's size?)
UNPOOL_CASES = [
    ((2, 3, 7, 9), 2, 2, 0, True),  # odd sizes: the last row/column belongs to no window
    ((3, 6, 8), 2, 2, 0, False),  # (C, H, W)
    ((1, 2, 7, 7), 3, 2, 0, False),  # overlapping windows
    ((1, 3, 6, 7), 3, 2, 1, True),  # overlapping, padded
    ((2, 2, 8, 9), 2, 3, 0, True),  # stride > kernel: gaps between windows
    ((1, 5, 5, 6), (2, 3), (2, 1), (1, 0), True),  # rectangular, per-dimension geometry
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kernel_size,stride,padding,to_input_size", UNPOOL_CASES)
def test_unpool_matches_reference(shape, kernel_size, stride, padding, to_input_size, dtype):
    x = randn(*shape, dtype=dtype)
    values, indices = F.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
    output_size = x.shape[-2:] if to_input_size else None
    ours, ref, grad, ref_grad = unpool_both(values, indices, kernel_size, stride, padding,
                                            output_size=output_size)
    assert_same(ours, ref)
    assert_same(grad, ref_grad)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_unpool_takes_any_layout(layout):
    x = randn(2, 3, 8, 10)
    values, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    if layout == "channels_last":
        values = values.to(memory_format=torch.channels_last)
    else:
        values, indices = values[:, ::2], indices.transpose(0, 1).contiguous().transpose(0, 1)
        indices = indices[:, ::2]
    ours, ref, grad, ref_grad = unpool_both(values, indices, 2, output_size=(8, 10))
    assert_same(ours, ref)
    assert_same(grad, ref_grad)
    assert ours.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("shape,layout", [
    ((1, 3, 12, 260), torch.contiguous_format),  # 260 > 128 wide, 36 rows: a 2x3 tile grid
    ((1, 130, 6, 10), torch.channels_last),  # 130 > 128 channels, 60 rows
])
def test_several_tiles_in_both_directions(shape, layout):
    x = randn(*shape).to(memory_format=layout)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    ours, ref, grad, ref_grad = unpool_both(values, indices, 2, output_size=x.shape[-2:])
    assert_same(ours, ref)
    assert_same(grad, ref_grad)
    pooled, local, ref_pooled, ref_local, grad, ref_grad = pool_both(x, 2)
    assert_same(pooled, ref_pooled)
    assert_same(local, ref_local)
    assert_same(grad, ref_grad)


def test_unpool_keeps_last_window_for_shared_index():
    # Hand-made: two overlapping windows name the same position with different values; the
    # CPU loop keeps the last (CUDA's scatter may keep either), backward reads it for both.
    values = torch.tensor([[[[1.0, 2.0]]]], device=DEVICE, requires_grad=True)
    indices = torch.tensor([[[[2, 2]]]], device=DEVICE)
    out = kernels.max_unpool2d(values, indices, 3, 2, output_size=(3, 5))
    expected = torch.zeros(1, 1, 3, 5, device=DEVICE)
    expected[0, 0, 0, 2] = 2.0
    assert_same(out, expected)
    grad = randn(1, 1, 3, 5)
    out.backward(grad)
    assert_same(values.grad, grad[0, 0, 0, 2].expand(1, 1, 1, 2))


def test_unpool_index_outside_its_window_falls_back_exactly():
    values = randn(1, 2, 2, 2)
    indices = torch.tensor([15, 0, 5, 10], device=DEVICE).repeat(2).view(1, 2, 2, 2)
    ours, ref, grad, ref_grad = unpool_both(values, indices, 2)
    assert_same(ours, ref)
    assert_same(grad, ref_grad)


@pytest.mark.parametrize("bad_index", [-1, 16, 1000])
def test_unpool_rejects_index_outside_output(bad_index):
    values = randn(1, 1, 2, 2)
    indices = torch.tensor([[[[0, 2], [8, bad_index]]]], device=DEVICE)
    with pytest.raises(ValueError, match="indices must lie in"):
        kernels.max_unpool2d(values, indices, 2)


@pytest.mark.parametrize("change,message", [
    (lambda v, i: (v, i.int()), "indices must be torch.int64"),
    (lambda v, i: (v, i[..., :1]), "must equal input shape"),
    (lambda v, i: (v.long(), i), "float32, float16 or bfloat16"),
    (lambda v, i: (v[0, 0], i[0, 0]), r"\(N, C, H, W\) or \(C, H, W\)"),
])
def test_unpool_rejects_malformed_input(change, message):
    values, indices = F.max_pool2d(randn(1, 2, 4, 4), 2, return_indices=True)
    with pytest.raises(ValueError, match=message):
        kernels.max_unpool2d(*change(values, indices), 2)


def test_unpool_rejects_output_size_like_pytorch():
    values, indices = F.max_pool2d(randn(1, 1, 4, 4), 2, return_indices=True)
    with pytest.raises(ValueError, match="invalid output_size"):
        kernels.max_unpool2d(values, indices, 2, output_size=(9, 4))


def test_unchecked_unpool_gives_the_same_answer_for_pool_indices():
    x = randn(2, 3, 7, 9)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    unchecked = kernels.max_unpool2d(values, indices, 2, output_size=x.shape[-2:],
                                     check_indices=False)
    assert_same(unchecked, F.max_unpool2d(values, indices, 2, output_size=x.shape[-2:]))


def pool_both(x, *args, **kwargs):
    """(values, local indices, reference values, reference local indices, grad, ref grad)."""
    ours_in = x.detach().clone().requires_grad_()
    ref_in = x.detach().clone().requires_grad_()
    values, local = kernels.max_pool2d_with_indices(ours_in, *args, **kwargs)
    ref_values, ref_local = mu.max_pool2d_compact_reference(ref_in, *args, **kwargs)
    grad = integer_valued(ref_values)
    values.backward(grad)
    ref_values.backward(grad)
    return values, local, ref_values, ref_local, ours_in.grad, ref_in.grad


POOL_CASES = [
    ((2, 3, 7, 9), 2, None, 0, False),
    ((3, 6, 8), 2, 2, 0, False),
    ((1, 2, 7, 7), 3, 2, 1, False),  # overlapping: gradients of shared maxima add up
    ((1, 3, 7, 8), 3, 2, 0, True),
    ((2, 2, 5, 6), (3, 2), (1, 2), (1, 1), True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kernel_size,stride,padding,ceil_mode", POOL_CASES)
def test_pool_matches_reference(shape, kernel_size, stride, padding, ceil_mode, dtype):
    x = randn(*shape, dtype=dtype)
    values, local, ref_values, ref_local, grad, ref_grad = pool_both(
        x, kernel_size, stride, padding, ceil_mode)
    assert_same(values, ref_values)
    assert local.dtype == torch.uint8
    assert_same(local, ref_local)
    assert_same(grad, ref_grad)


@pytest.mark.parametrize("fill", [0.5, float("-inf")])
def test_pool_ties_keep_first_in_window(fill):
    x = torch.full((1, 2, 5, 5), fill, device=DEVICE)
    values, local, ref_values, ref_local, grad, ref_grad = pool_both(x, 3, 2, 1)
    assert_same(values, ref_values)
    assert_same(local, ref_local)
    assert_same(grad, ref_grad)


def test_pool_nan_is_the_maximum_and_last_nan_wins():
    x = randn(1, 1, 4, 6)
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = x[0, 0, 3, 5] = float("nan")
    values, local, ref_values, ref_local, grad, ref_grad = pool_both(x, 2)
    assert values[0, 0, 0, 0].isnan() and local[0, 0, 0, 0].item() == 3
    assert_same(values, ref_values)
    assert_same(local, ref_local)
    assert_same(grad, ref_grad)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_pool_takes_any_layout(layout):
    x = randn(2, 4, 6, 8)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x[:, ::2]
    values, local, ref_values, ref_local, grad, ref_grad = pool_both(x, 2)
    assert_same(values, ref_values)
    assert_same(local, ref_local)
    assert_same(grad, ref_grad)
    assert local.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("kernel_size,padding,message", [
    (17, 0, "at most 256"), (2, 2, "at most half"), (9, 0, "smaller than the pooling window"),
])
def test_pool_rejects_what_it_cannot_take(kernel_size, padding, message):
    with pytest.raises(ValueError, match=message):
        kernels.max_pool2d_with_indices(randn(1, 1, 8, 8), kernel_size, padding=padding)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kernel_size,stride,padding,ceil_mode", POOL_CASES)
def test_compact_pair_matches_reference(shape, kernel_size, stride, padding, ceil_mode, dtype):
    x = randn(*shape, dtype=dtype)
    values, local = mu.max_pool2d_compact_reference(x, kernel_size, stride, padding, ceil_mode)
    values.requires_grad_()
    ref_values = values.detach().clone().requires_grad_()
    args = (kernel_size, stride, padding, x.shape[-2:])
    ours = kernels.max_unpool2d_compact(values, local, *args)
    ref = mu.max_unpool2d_compact_reference(ref_values, local, *args)
    grad = randn(*ref.shape, dtype=dtype)
    ours.backward(grad)
    ref.backward(grad)
    assert_same(ours, ref)
    assert_same(values.grad, ref_values.grad)


@pytest.mark.parametrize("bad_local", [4, 200])
def test_compact_unpool_rejects_index_outside_window(bad_local):
    values = randn(1, 1, 2, 2)
    local = torch.tensor([[[[0, 1], [2, bad_local]]]], dtype=torch.uint8, device=DEVICE)
    with pytest.raises(ValueError, match="local indices must lie in"):
        kernels.max_unpool2d_compact(values, local, 2)


def test_compact_unpool_rejects_index_outside_output():
    values, local = kernels.max_pool2d_with_indices(randn(1, 1, 5, 5), 2, ceil_mode=True)
    local[..., -1, 0] = 2  # the last window row starts at row 4: row 5 is outside a 5x5 output
    with pytest.raises(ValueError, match="point inside the 5x5 output"):
        kernels.max_unpool2d_compact(values, local, 2, output_size=(5, 5))


def test_every_output_comes_from_the_poisoned_allocator(poisoned_outputs):
    x = randn(1, 2, 4, 6, dtype=torch.float16).requires_grad_()
    values, local = kernels.max_pool2d_with_indices(x)
    values.retain_grad()
    out = kernels.max_unpool2d_compact(values, local, output_size=x.shape[-2:])
    out.backward(integer_valued(out))
    written = [values, local, out, values.grad, x.grad]
    assert len(poisoned_outputs) == len(written)
    for allocated, result in zip(poisoned_outputs, written, strict=True):
        assert_same(allocated, result)


def test_ops_are_seen_by_name_with_zero_flops():
    from torch.utils.flop_counter import FlopCounterMode

    x = randn(1, 2, 4, 4).requires_grad_()
    with FlopCounterMode(display=False) as counter:
        values, local = kernels.max_pool2d_with_indices(x)
        kernels.max_unpool2d_compact(values, local, output_size=x.shape[-2:]).sum().backward()
        flat_values, flat = F.max_pool2d(x.detach(), 2, return_indices=True)
        kernels.max_unpool2d(flat_values, flat, 2)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts == {f"segbench.{name}": 0 for name in (
        "max_pool2d_compact", "max_unpool2d_compact", "max_unpool2d_backward",
        "max_pool2d_compact_backward", "max_unpool2d")}
    traced = torch.jit.trace(
        lambda t: kernels.max_unpool2d_compact(*kernels.max_pool2d_with_indices(t)), (x.detach(),))
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert {"segbench::max_pool2d_compact", "segbench::max_unpool2d_compact"} <= kinds
    assert all(FVCORE_HANDLES[name](None, None) == 0 for name in (
        "segbench::max_unpool2d", "segbench::max_pool2d_compact", "segbench::max_unpool2d_compact"))


def test_custom_op_registrations_pass_opcheck():
    x = randn(1, 2, 4, 6).requires_grad_()
    torch.library.opcheck(torch.ops.segbench.max_pool2d_compact, (x, [2, 2], [2, 2], [0, 0], False))
    values, local = kernels.max_pool2d_with_indices(x.detach())
    torch.library.opcheck(torch.ops.segbench.max_unpool2d_compact,
                          (values.requires_grad_(), local, [2, 2], [2, 2], [0, 0], [4, 6], True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_segnet_layers_triton_equal_torch(dtype):
    x = randn(2, 3, 9, 10, dtype=dtype)
    grad = integer_valued(x)
    results = {}
    for backend in ("torch", "triton"):
        pool, unpool = set_kernels(MaxPoolWithIndices(), backend), set_kernels(MaxUnpool(), backend)
        x_in = x.detach().clone().requires_grad_()
        values, indices = pool(x_in)
        out = unpool(values * 3, indices, x_in.shape)
        out.backward(grad)
        results[backend] = (out, x_in.grad, indices)
    (out, grad, indices), (ref_out, ref_grad, ref_indices) = results["triton"], results["torch"]
    assert_same(out, ref_out)
    assert_same(grad, ref_grad)
    assert indices.element_size() == 1 and ref_indices.element_size() == 8


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(8, 512, 22, 30), (4, 64, 45, 60)])
def test_canonical_shapes_on_gpu(shape, dtype):
    x = randn(*shape, dtype=dtype)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    ours, ref, grad, ref_grad = unpool_both(values, indices, 2, output_size=x.shape[-2:])
    assert_same(ours, ref)
    assert_same(grad, ref_grad)
    values, local, ref_values, ref_local, grad, ref_grad = pool_both(x, 2)
    assert_same(values, ref_values)
    assert_same(local, ref_local)
    assert_same(grad, ref_grad)
    compact = kernels.max_unpool2d_compact(values, local, output_size=x.shape[-2:])
    assert_same(compact, mu.max_unpool2d_compact_reference(ref_values, ref_local,
                                                           output_size=x.shape[-2:]))
