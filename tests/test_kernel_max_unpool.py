"""kernels.max_unpool against its PyTorch references on the kernel contract
(tests/kernel_contract.py): forward and gradients, exact equality (the ops only move values;
pool-backward sums use integer-valued gradients, so any order of summation is exact). One
contract class per public function: the int64 unpool, the pool with 1-byte local indices and
the unpool that consumes them. On CPU the kernels run in the Triton interpreter on tiny shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_contract import DEVICE, EXACT, KernelContract, pytest_generate_tests  # noqa: F401

import kernels
from kernels import max_unpool as mu
from segbench.layers import MaxPoolWithIndices, MaxUnpool, set_kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # values are moved, never computed
POISON_FLOAT = 1234.0  # no test input holds it: randn and small integers only; integer outputs
# start at 255, an invalid local index for every kernel size tested


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def integer_valued(like):
    """Small integers: sums of a few of them are exact in every float dtype."""
    return torch.randint(-8, 9, like.shape, device=like.device).to(like.dtype)


def assert_same(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if layout == "strided":  # every other channel: no dense layout at all
        return x[:, ::2]
    return x


def case_id(shape, kernel_size, stride, padding, extra, dtype) -> str:
    size = "x".join(map(str, shape))
    return f"{size}-k{kernel_size}-s{stride}-p{padding}-{extra}-{str(dtype).split('.')[-1]}"


class PoolingContract(KernelContract):
    """Shared by the three classes: exact comparisons, a poison no input holds, NaN = NaN, and
    0 FLOPs in both counters for every op (they only move data) seen by name."""
    poison = POISON_FLOAT
    equal_nan = True
    output_tolerance = {dtype: EXACT for dtype in DTYPES}
    grad_tolerance = {dtype: EXACT for dtype in DTYPES}
    ops: tuple[str, ...] = ()  # the custom ops a forward and backward call, by name

    def expected_flops(self, inputs):
        return {f"segbench.{op}": 0 for op in self.ops}

    def expected_fvcore_flops(self, inputs):
        return 0


# (input shape, kernel_size, stride, padding, unpool to the pooled input's size?)
UNPOOL_CASES = [
    ((2, 3, 7, 9), 2, 2, 0, True),  # odd sizes: the last row/column belongs to no window
    ((3, 6, 8), 2, 2, 0, False),  # (C, H, W)
    ((1, 2, 7, 7), 3, 2, 0, False),  # overlapping windows
    ((1, 3, 6, 7), 3, 2, 1, True),  # overlapping, padded
    ((2, 2, 8, 9), 2, 3, 0, True),  # stride > kernel: gaps between windows
    ((1, 5, 5, 6), (2, 3), (2, 1), (1, 0), True),  # rectangular, per-dimension geometry
]


class TestMaxUnpool2d(PoolingContract):
    """kernels.max_unpool2d (int64 flat indices) == F.max_unpool2d."""
    cases = {
        **{case_id(shape, k, s, p, f"to-input-size{int(to_input)}", dtype):
           dict(shape=shape, kernel_size=k, stride=s, padding=p, to_input_size=to_input,
                dtype=dtype)
           for shape, k, s, p, to_input in UNPOOL_CASES for dtype in DTYPES},
        # several tiles in both directions: 260 > 128 wide and 36 rows, a 2x3 tile grid; 130 >
        # 128 channels and 60 rows
        "several-tiles-nchw": dict(shape=(1, 3, 12, 260)),
        "several-tiles-channels-last": dict(shape=(1, 130, 6, 10), layout="channels_last"),
    }
    empty_case = dict(shape=(0, 2, 8, 8))
    small_case = dict(shape=(1, 2, 4, 4), to_input_size=False)
    differentiable = ("input",)
    ops = ("max_unpool2d", "max_unpool2d_backward")
    rejected = {
        "int32 indices": (lambda a: dict(indices=a["indices"].int()),
                          "indices must be torch.int64"),
        "indices of another shape": (lambda a: dict(indices=a["indices"][..., :1]),
                                     "must equal input shape"),
        "integer values": (lambda a: dict(input=a["input"].long()),
                           "float32, float16 or bfloat16"),
        "2-d values": (lambda a: dict(input=a["input"][0, 0], indices=a["indices"][0, 0]),
                       r"\(N, C, H, W\) or \(C, H, W\)"),
        "output_size PyTorch rejects": (lambda a: dict(output_size=(9, 4)),
                                        "invalid output_size"),
        **{f"index {bad} outside the output": (
            lambda a, bad=bad: dict(input=randn(1, 1, 2, 2), indices=torch.tensor(
                [[[[0, 2], [8, bad]]]], device=DEVICE)), "indices must lie in")
           for bad in (-1, 16, 1000)},
    }

    def make_inputs(self, shape, kernel_size=2, stride=2, padding=0, to_input_size=True,
                    dtype=torch.float32, layout="contiguous", check_indices=True):
        """layout: of the pooled input ("channels_last"), of the values alone
        ("channels_last_values"), or every other channel of values and of indices laid out
        otherwise ("strided")."""
        x = randn(*shape, dtype=dtype)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        values, indices = F.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
        if layout == "channels_last_values":
            values = values.to(memory_format=torch.channels_last)
        elif layout == "strided":
            values, indices = values[:, ::2], indices.transpose(0, 1).contiguous().transpose(0, 1)
            indices = indices[:, ::2]
        return dict(input=values, indices=indices, kernel_size=kernel_size, stride=stride,
                    padding=padding, output_size=x.shape[-2:] if to_input_size else None,
                    check_indices=check_indices)

    def kernel(self, **inputs):
        return kernels.max_unpool2d(**inputs)

    def reference(self, check_indices, **inputs):
        return F.max_unpool2d(**inputs)

    def opcheck_cases(self):
        values, indices = F.max_pool2d(randn(1, 2, 4, 6), 2, return_indices=True)
        return [(torch.ops.segbench.max_unpool2d,
                 (values.requires_grad_(), indices, [2, 2], [2, 2], [0, 0], [4, 6], True))]

    @pytest.mark.parametrize("layout", ["channels_last_values", "strided"])
    def test_takes_any_layout(self, layout):
        (out,) = self.assert_matches_reference(self.make_inputs((2, 3, 8, 10), layout=layout))
        assert out.is_contiguous(memory_format=torch.channels_last) == (
            layout == "channels_last_values")

    def test_keeps_last_window_for_shared_index(self):
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

    def test_index_outside_its_window_falls_back_exactly(self):
        indices = torch.tensor([15, 0, 5, 10], device=DEVICE).repeat(2).view(1, 2, 2, 2)
        self.assert_matches_reference(dict(input=randn(1, 2, 2, 2), indices=indices,
                                           kernel_size=2, stride=None, padding=0,
                                           output_size=None, check_indices=True))

    def test_unchecked_gives_the_same_answer_for_pool_indices(self):
        self.assert_matches_reference(self.make_inputs((2, 3, 7, 9), check_indices=False))

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", [(8, 512, 22, 30), (4, 64, 45, 60)])
    def test_canonical_shapes_on_gpu(self, shape, dtype):
        self.assert_matches_reference(self.make_inputs(shape, dtype=dtype))


POOL_CASES = [
    ((2, 3, 7, 9), 2, None, 0, False),
    ((3, 6, 8), 2, 2, 0, False),
    ((1, 2, 7, 7), 3, 2, 1, False),  # overlapping: gradients of shared maxima add up
    ((1, 3, 7, 8), 3, 2, 0, True),
    ((2, 2, 5, 6), (3, 2), (1, 2), (1, 1), True),
]


class TestMaxPool2dCompact(PoolingContract):
    """kernels.max_pool2d_with_indices == F.max_pool2d values and 1-byte local indices."""
    cases = {
        **{case_id(shape, k, s, p, f"ceil{int(ceil)}", dtype):
           dict(shape=shape, kernel_size=k, stride=s, padding=p, ceil_mode=ceil, dtype=dtype)
           for shape, k, s, p, ceil in POOL_CASES for dtype in DTYPES},
        # ties keep the first maximum of the window, -inf ties too
        **{f"ties-of-{fill}": dict(shape=(1, 2, 5, 5), kernel_size=3, stride=2, padding=1,
                                   fill=fill) for fill in (0.5, float("-inf"))},
        "several-tiles-nchw": dict(shape=(1, 3, 12, 260)),
        "several-tiles-channels-last": dict(shape=(1, 130, 6, 10), layout="channels_last"),
    }
    empty_case = dict(shape=(0, 2, 8, 8))
    small_case = dict(shape=(1, 1, 8, 8))
    differentiable = ("x",)
    ops = ("max_pool2d_compact", "max_pool2d_compact_backward")
    rejected = {
        "kernel area above 256": (lambda a: dict(kernel_size=17), "at most 256"),
        "padding above half the kernel": (lambda a: dict(kernel_size=2, padding=2),
                                          "at most half"),
        "input smaller than the window": (lambda a: dict(kernel_size=9),
                                          "smaller than the pooling window"),
    }

    def make_inputs(self, shape, kernel_size=2, stride=None, padding=0, ceil_mode=False,
                    dtype=torch.float32, layout="contiguous", fill=None):
        x = randn(*shape, dtype=dtype) if fill is None else torch.full(shape, fill, device=DEVICE)
        return dict(x=laid_out(x, layout), kernel_size=kernel_size, stride=stride,
                    padding=padding, ceil_mode=ceil_mode)

    def kernel(self, **inputs):
        return kernels.max_pool2d_with_indices(**inputs)

    def reference(self, **inputs):
        return mu.max_pool2d_compact_reference(**inputs)

    def grad_outputs(self, outputs):
        values, _ = outputs
        return [integer_valued(values), None]

    def opcheck_cases(self):
        x = randn(1, 2, 4, 6).requires_grad_()
        return [(torch.ops.segbench.max_pool2d_compact, (x, [2, 2], [2, 2], [0, 0], False))]

    def test_nan_is_the_maximum_and_last_nan_wins(self):
        inputs = self.make_inputs((1, 1, 4, 6))
        x = inputs["x"]
        x[0, 0, 0, 0] = x[0, 0, 1, 1] = x[0, 0, 3, 5] = float("nan")
        values, local = self.assert_matches_reference(inputs)
        assert values[0, 0, 0, 0].isnan() and local[0, 0, 0, 0].item() == 3

    @pytest.mark.parametrize("layout", ["channels_last", "strided"])
    def test_takes_any_layout(self, layout):
        _, local = self.assert_matches_reference(self.make_inputs((2, 4, 6, 8), layout=layout))
        assert local.dtype == torch.uint8
        assert local.is_contiguous(memory_format=torch.channels_last) == (
            layout == "channels_last")

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", [(8, 512, 22, 30), (4, 64, 45, 60)])
    def test_canonical_shapes_on_gpu(self, shape, dtype):
        self.assert_matches_reference(self.make_inputs(shape, dtype=dtype))


def local_index_outside_the_output(_):
    values, local = kernels.max_pool2d_with_indices(randn(1, 1, 5, 5), 2, ceil_mode=True)
    local[..., -1, 0] = 2  # the last window row starts at row 4: row 5 is outside a 5x5 output
    return dict(values=values, local_indices=local, kernel_size=2, stride=None,
                output_size=(5, 5))


class TestMaxUnpool2dCompact(PoolingContract):
    """kernels.max_unpool2d_compact == F.max_unpool2d of the local indices made flat."""
    cases = {case_id(shape, k, s, p, f"ceil{int(ceil)}", dtype):
             dict(shape=shape, kernel_size=k, stride=s, padding=p, ceil_mode=ceil, dtype=dtype)
             for shape, k, s, p, ceil in POOL_CASES for dtype in DTYPES}
    empty_case = dict(shape=(0, 2, 8, 8))
    small_case = dict(shape=(1, 1, 4, 4))
    differentiable = ("values",)
    ops = ("max_unpool2d_compact", "max_unpool2d_backward")
    rejected = {
        **{f"local index {bad} outside the window": (
            lambda a, bad=bad: dict(values=randn(1, 1, 2, 2), local_indices=torch.tensor(
                [[[[0, 1], [2, bad]]]], dtype=torch.uint8, device=DEVICE), output_size=None),
            "local indices must lie in") for bad in (4, 200)},
        "local index outside the output": (local_index_outside_the_output,
                                           "point inside the 5x5 output"),
    }

    def make_inputs(self, shape, kernel_size=2, stride=None, padding=0, ceil_mode=False,
                    dtype=torch.float32):
        x = randn(*shape, dtype=dtype)
        values, local = mu.max_pool2d_compact_reference(x, kernel_size, stride, padding,
                                                        ceil_mode)
        return dict(values=values, local_indices=local, kernel_size=kernel_size, stride=stride,
                    padding=padding, output_size=x.shape[-2:])

    def kernel(self, **inputs):
        return kernels.max_unpool2d_compact(**inputs)

    def reference(self, **inputs):
        return mu.max_unpool2d_compact_reference(**inputs)

    def opcheck_cases(self):
        values, local = kernels.max_pool2d_with_indices(randn(1, 2, 4, 6))
        return [(torch.ops.segbench.max_unpool2d_compact,
                 (values.requires_grad_(), local, [2, 2], [2, 2], [0, 0], [4, 6], True))]

    def test_every_output_comes_from_the_poisoned_allocator(self, poisoned):
        x = randn(1, 2, 4, 6, dtype=torch.float16).requires_grad_()
        values, local = kernels.max_pool2d_with_indices(x)
        values.retain_grad()
        out = kernels.max_unpool2d_compact(values, local, output_size=x.shape[-2:])
        out.backward(integer_valued(out))
        written = [values, local, out, values.grad, x.grad]
        assert len(poisoned) == len(written)
        for allocated, result in zip(poisoned, written, strict=True):
            assert_same(allocated, result)

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", [(8, 512, 22, 30), (4, 64, 45, 60)])
    def test_canonical_shapes_on_gpu(self, shape, dtype):
        self.assert_matches_reference(self.make_inputs(shape, dtype=dtype))


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
