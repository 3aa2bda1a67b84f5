"""kernels.window_attention against its eager reference, forward and gradients (q, k, v, bias),
on the kernel contract (tests/kernel_contract.py). Outputs are compared with the reference
evaluated in fp32 on the same values. On CPU the kernels run in the Triton interpreter: a few
windows and heads."""

from __future__ import annotations

import pytest
import torch
from kernel_contract import DEVICE, KernelContract, pytest_generate_tests  # noqa: F401
from torch.utils.flop_counter import FlopCounterMode

from kernels.window_attention import window_attention, window_attention_reference
from segbench.layers import WindowAttentionCore, set_kernels


def shift_mask(windows: int, n_tokens: int, masked: float = -100.0) -> torch.Tensor:
    """A stand-in for Swin's shifted-window mask: 0 where tokens may attend, `masked` elsewhere."""
    blocked = torch.rand(windows, n_tokens, n_tokens, device=DEVICE) < 0.3
    return torch.zeros(windows, n_tokens, n_tokens, device=DEVICE).masked_fill(blocked, masked)


def qkv(windows: int, heads: int, n_tokens: int, head_dim: int, dtype: torch.dtype, layout: str):
    if layout == "qkv_split":  # as Swin builds them: Linear -> (B_, N, 3, heads, d) -> permute
        packed = torch.randn(windows, n_tokens, 3, heads, head_dim, device=DEVICE, dtype=dtype)
        return packed.permute(2, 0, 3, 1, 4).unbind(0)
    if layout == "transposed":  # the head dim is not the fastest-moving one
        return [torch.randn(windows, heads, head_dim, n_tokens, device=DEVICE,
                            dtype=dtype).transpose(-1, -2) for _ in range(3)]
    return [torch.randn(windows, heads, n_tokens, head_dim, device=DEVICE, dtype=dtype)
            for _ in range(3)]


def attention_inputs(images=1, windows=2, heads=2, n_tokens=49, head_dim=32,
                     dtype=torch.float32, with_bias=True, with_mask=True, bias_dtype=None,
                     mask_dtype=None, layout="contiguous", scale=None) -> dict:
    q, k, v = qkv(images * windows, heads, n_tokens, head_dim, dtype, layout)
    bias = None
    if with_bias:
        bias = torch.randn(heads, n_tokens, n_tokens, device=DEVICE, dtype=bias_dtype or dtype)
    mask = shift_mask(windows, n_tokens).to(mask_dtype or dtype) if with_mask else None
    return dict(q=q, k=k, v=v, bias=bias, mask=mask, scale=scale)


def without_bias_or_mask(**shape) -> dict:
    return attention_inputs(with_bias=False, with_mask=False, **shape)


def _product_multiply_adds(q: torch.Tensor) -> int:
    windows, heads, n_tokens, head_dim = q.shape
    return windows * heads * n_tokens * n_tokens * head_dim


CASES = {
    **{f"{n}x{d}-bias{int(b)}-mask{int(m)}": dict(n_tokens=n, head_dim=d, with_bias=b,
                                                  with_mask=m)
       for n, d in [(49, 32), (16, 16), (49, 64), (16, 64)]
       for b, m in [(True, True), (True, False), (False, True), (False, False)]},
    "fp16": dict(dtype=torch.float16),
    "fp32": dict(dtype=torch.float32),
    "fp16-inputs-fp32-bias-and-mask": dict(dtype=torch.float16, bias_dtype=torch.float32,
                                           mask_dtype=torch.float32),
    # windows larger than one query block
    **{f"{n}-tokens": dict(windows=1, heads=1, n_tokens=n, head_dim=16) for n in (100, 144)},
    "smaller-than-the-minimum-dot-size": dict(n_tokens=9, head_dim=16),
    # mask window = batch index mod nW; the bias gradient sums every window, and 5 images of one
    # window split over backward programs unevenly (3 + 2)
    "5-images-1-window": dict(images=5, windows=1, heads=1, n_tokens=16),
    "3-images-2-windows": dict(images=3, windows=2, heads=1, n_tokens=16),
    "explicit-scale": dict(n_tokens=16, scale=0.3),
    "qkv-split-layout": dict(layout="qkv_split"),
    "transposed-layout": dict(layout="transposed"),
}

SWIN_T_STAGES = [  # (images, windows per image, heads) at 512x512: 133/7, 70/7, 35/7 squared
    pytest.param(2, 361, 3, id="stage1"),
    pytest.param(8, 100, 6, id="stage2"),
    pytest.param(8, 25, 12, id="stage3"),
]


class TestWindowAttention(KernelContract):
    cases = CASES
    empty_case = dict(images=0)
    small_case = dict(n_tokens=16)
    differentiable = ("q", "k", "v", "bias")
    # fp32: the interpreter's fp32 dots are exact and the GPU path uses IEEE fp32 unless
    # torch's TF32 switch is on. Halves: q k^T, P and dS are rounded to the input dtype.
    output_tolerance = {
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.float16: dict(atol=4e-3, rtol=4e-3),
        torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    }
    grad_tolerance = {
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.float16: dict(atol=1e-2, rtol=1e-2),
        torch.bfloat16: dict(atol=8e-2, rtol=8e-2),
    }
    rejected = {
        "window above 12x12": (lambda _: without_bias_or_mask(n_tokens=145), "window area N"),
        "head dim 48": (lambda _: without_bias_or_mask(head_dim=48), "head dim"),
        "batch not a multiple of nW": (lambda _: dict(mask=shift_mask(3, 16)), "multiple of"),
        "bias for other heads": (lambda _: dict(bias=torch.zeros(3, 16, 16)), "bias must be"),
        "mask for another N": (lambda _: dict(mask=torch.zeros(2, 16, 15)), "mask must be"),
        "k in another dtype": (lambda _: dict(k=torch.zeros(2, 2, 16, 32, dtype=torch.float16)),
                               "one dtype"),
        "v of another shape": (lambda _: dict(v=torch.zeros(2, 2, 16, 16)), "one shape"),
        "3-d q": (lambda _: dict(q=torch.zeros(2, 16, 32)), "q must be"),
        "integer q": (lambda _: dict(q=torch.zeros(2, 2, 16, 32, dtype=torch.int32)), "float32"),
        "mask that wants a gradient": (
            lambda _: dict(mask=torch.zeros(2, 16, 16, requires_grad=True)),
            "mask gets no gradient"),
    }

    def make_inputs(self, **case):
        return attention_inputs(**case)

    def kernel(self, **inputs):
        return window_attention(**inputs)

    def reference(self, **inputs):
        return window_attention_reference(**inputs)

    def reference_inputs(self, inputs):
        return {n: t.float() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}

    def opcheck_cases(self):
        inputs = attention_inputs(n_tokens=16, head_dim=16)
        q, k, v, bias = (inputs[n].requires_grad_() for n in ("q", "k", "v", "bias"))
        return [(torch.ops.segbench.window_attention.default, (q, k, v, bias, inputs["mask"],
                                                               0.25))]

    def expected_flops(self, inputs):
        # 2 FLOPs per multiply-add, as the counter does for SDPA: QK^T and PV forward; the
        # recomputed QK^T, dP, dV, dQ and dK backward
        products = _product_multiply_adds(inputs["q"])
        return {"segbench.window_attention": 2 * 2 * products,
                "segbench.window_attention_backward": 2 * 5 * products}

    def expected_fvcore_flops(self, inputs):
        return 2 * _product_multiply_adds(inputs["q"])

    @pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
    def test_minus_inf_mask_and_fully_masked_rows_match_pytorch(self):
        inputs = attention_inputs(n_tokens=16)
        mask = shift_mask(2, 16, masked=float("-inf"))
        mask[:, :, 0] = 0.0  # every row keeps one key...
        mask[1, 3, :] = float("-inf")  # ...but this one, which gives NaN as in PyTorch
        inputs["mask"] = mask
        self.assert_matches_reference(inputs, equal_nan=True)
        assert window_attention(**inputs)[1::2, :, 3].isnan().all()

    def test_flop_counter_agrees_with_the_reference(self):
        inputs = attention_inputs(n_tokens=49, head_dim=32)

        def forward_flops(fn):
            with FlopCounterMode(display=False) as counter:
                fn(**inputs)
            return counter.get_total_flops()

        assert forward_flops(window_attention) == forward_flops(window_attention_reference)
        assert forward_flops(window_attention) == 2 * 2 * 4 * 49 * 49 * 32

    def test_layer_triton_path_matches_torch_path(self):
        inputs = attention_inputs(images=2)
        args = [inputs[n] for n in ("q", "k", "v", "bias", "mask")]
        core = WindowAttentionCore()
        expected = core(*args)
        actual = set_kernels(core, "triton")(*args)
        torch.testing.assert_close(actual, expected, **self.output_tolerance[torch.float32])

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    @pytest.mark.parametrize("images, windows, heads", SWIN_T_STAGES)
    def test_swin_shapes_on_gpu(self, images, windows, heads, dtype):
        self.assert_matches_reference(attention_inputs(
            images=images, windows=windows, heads=heads, dtype=dtype, bias_dtype=torch.float32))

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("n_tokens, head_dim", [(144, 64), (100, 32), (9, 16)])
    def test_other_windows_on_gpu(self, n_tokens, head_dim, dtype):
        self.assert_matches_reference(attention_inputs(
            images=4, windows=4, heads=4, n_tokens=n_tokens, head_dim=head_dim, dtype=dtype))
