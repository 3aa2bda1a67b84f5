"""kernels.window_attention against its eager reference, forward and gradients (q, k, v, bias).

On CPU the kernels run in the Triton interpreter (tests/conftest.py): shapes are tiny, a few
windows and heads. Outputs are compared with the reference evaluated in fp32 on the same
values; every kernel output buffer starts as NaN, so an element the kernel forgets fails.
"""

from __future__ import annotations

import importlib
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels._common import FVCORE_HANDLES
from kernels.window_attention import window_attention, window_attention_reference
from segbench.layers import WindowAttentionCore, set_kernels

# `kernels.window_attention` as an attribute is the exported function; this is the module.
kernel_module = importlib.import_module("kernels.window_attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# fp32: the interpreter's fp32 dots are exact and the GPU path uses IEEE fp32 unless torch's
# TF32 switch is on. Halves: q k^T, P and dS are rounded to the input dtype for the dots.
OUTPUT_TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}
GRAD_TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=8e-2, rtol=8e-2),
}


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = random.randrange(2**31)
    print(f"seed = {seed}")
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    def allocate_nan(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(kernel_module, "_allocate", allocate_nan)


def shift_mask(windows: int, n_tokens: int, masked: float = -100.0) -> torch.Tensor:
    """A stand-in for Swin's shifted-window mask: 0 where tokens may attend, `masked` elsewhere."""
    blocked = torch.rand(windows, n_tokens, n_tokens, device=DEVICE) < 0.3
    return torch.zeros(windows, n_tokens, n_tokens, device=DEVICE).masked_fill(blocked, masked)


def make_inputs(images=1, windows=2, heads=2, n_tokens=49, head_dim=32, dtype=torch.float32,
                with_bias=True, with_mask=True, bias_dtype=None):
    q, k, v = (torch.randn(images * windows, heads, n_tokens, head_dim, device=DEVICE,
                           dtype=dtype) for _ in range(3))
    bias = None
    if with_bias:
        bias = torch.randn(heads, n_tokens, n_tokens, device=DEVICE, dtype=bias_dtype or dtype)
    mask = shift_mask(windows, n_tokens).to(dtype) if with_mask else None
    return q, k, v, bias, mask


def gradients(fn, q, k, v, bias, mask, grad_out, scale=None):
    """fn's output and its gradients for q, k, v (and bias when given), on fresh leaves."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    bias_leaf = None if bias is None else bias.detach().requires_grad_()
    out = fn(*leaves, bias_leaf, mask, scale)
    wrt = leaves + ([bias_leaf] if bias_leaf is not None else [])
    return out, torch.autograd.grad(out, wrt, grad_out.to(out.dtype))


def assert_matches_reference(q, k, v, bias, mask, scale=None, equal_nan=False):
    grad_out = torch.randn(q.shape, device=q.device)
    out, grads = gradients(window_attention, q, k, v, bias, mask, grad_out, scale)
    as_fp32 = [None if t is None else t.float() for t in (q, k, v, bias, mask)]
    expected, expected_grads = gradients(window_attention_reference, *as_fp32, grad_out, scale)

    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), expected, equal_nan=equal_nan,
                               **OUTPUT_TOLERANCE[q.dtype])
    names = ("q", "k", "v", "bias")[:len(grads)]
    for name, grad, expected_grad in zip(names, grads, expected_grads, strict=True):
        assert grad.dtype == (bias.dtype if name == "bias" else q.dtype), name
        torch.testing.assert_close(grad.float(), expected_grad, equal_nan=equal_nan,
                                   msg=lambda m, name=name: f"grad {name}: {m}",
                                   **GRAD_TOLERANCE[q.dtype])


@pytest.mark.parametrize("n_tokens, head_dim", [(49, 32), (16, 16), (49, 64), (16, 64)])
@pytest.mark.parametrize("with_bias, with_mask",
                         [(True, True), (True, False), (False, True), (False, False)])
def test_matches_reference(n_tokens, head_dim, with_bias, with_mask):
    assert_matches_reference(*make_inputs(n_tokens=n_tokens, head_dim=head_dim,
                                          with_bias=with_bias, with_mask=with_mask))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_half_and_single_precision(dtype):
    assert_matches_reference(*make_inputs(dtype=dtype))


def test_fp32_bias_and_mask_with_fp16_inputs():
    q, k, v, bias, mask = make_inputs(dtype=torch.float16, bias_dtype=torch.float32)
    assert_matches_reference(q, k, v, bias, mask.float())


@pytest.mark.parametrize("n_tokens", [100, 144])
def test_windows_larger_than_one_query_block(n_tokens):
    assert_matches_reference(*make_inputs(windows=1, heads=1, n_tokens=n_tokens, head_dim=16))


def test_window_smaller_than_the_minimum_dot_size():
    assert_matches_reference(*make_inputs(n_tokens=9, head_dim=16))


def test_mask_window_is_batch_index_mod_nw_and_bias_grad_sums_all_windows():
    # 5 images of one window: the backward splits them over programs unevenly (3 + 2).
    assert_matches_reference(*make_inputs(images=5, windows=1, heads=1, n_tokens=16))
    assert_matches_reference(*make_inputs(images=3, windows=2, heads=1, n_tokens=16))


def test_explicit_scale():
    assert_matches_reference(*make_inputs(n_tokens=16), scale=0.3)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_minus_inf_mask_and_fully_masked_rows_match_pytorch():
    q, k, v, bias, _ = make_inputs(n_tokens=16)
    mask = shift_mask(2, 16, masked=float("-inf"))
    mask[:, :, 0] = 0.0  # every row keeps one key...
    mask[1, 3, :] = float("-inf")  # ...but this one, which gives NaN as in PyTorch
    assert_matches_reference(q, k, v, bias, mask, equal_nan=True)
    assert window_attention(q, k, v, bias, mask)[1::2, :, 3].isnan().all()


@pytest.mark.parametrize("layout", ["qkv_split", "transposed"])
def test_non_contiguous_inputs(layout):
    windows, heads, n_tokens, head_dim = 2, 2, 49, 32
    if layout == "qkv_split":  # as Swin builds them: Linear -> (B_, N, 3, heads, d) -> permute
        qkv = torch.randn(windows, n_tokens, 3, heads, head_dim, device=DEVICE)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:  # the head dim is not the fastest-moving one
        q, k, v = (torch.randn(windows, heads, head_dim, n_tokens, device=DEVICE).transpose(-1, -2)
                   for _ in range(3))
    assert not q.is_contiguous()
    _, _, _, bias, mask = make_inputs(windows=windows, heads=heads, n_tokens=n_tokens)
    assert_matches_reference(q, k, v, bias, mask)


def test_empty_batch():
    q, k, v, bias, mask = make_inputs(images=0)
    assert_matches_reference(q, k, v, bias, mask)


def valid_arguments():
    q, k, v, bias, mask = make_inputs(n_tokens=16)
    return dict(q=q, k=k, v=v, bias=bias, mask=mask)


def attention_without_bias_or_mask(**shape):
    q, k, v, _, _ = make_inputs(with_bias=False, with_mask=False, **shape)
    return dict(q=q, k=k, v=v, bias=None, mask=None)


REJECTED = {  # what is wrong -> (arguments replacing valid ones, words the error must contain)
    "window above 12x12": (lambda: attention_without_bias_or_mask(n_tokens=145), "window area N"),
    "head dim 48": (lambda: attention_without_bias_or_mask(head_dim=48), "head dim"),
    "batch not a multiple of nW": (lambda: dict(mask=shift_mask(3, 16)), "multiple of"),
    "bias for other heads": (lambda: dict(bias=torch.zeros(3, 16, 16)), "bias must be"),
    "mask for another N": (lambda: dict(mask=torch.zeros(2, 16, 15)), "mask must be"),
    "k in another dtype": (lambda: dict(k=torch.zeros(2, 2, 16, 32, dtype=torch.float16)),
                           "one dtype"),
    "v of another shape": (lambda: dict(v=torch.zeros(2, 2, 16, 16)), "one shape"),
    "3-d q": (lambda: dict(q=torch.zeros(2, 16, 32)), "q must be"),
    "integer q": (lambda: dict(q=torch.zeros(2, 2, 16, 32, dtype=torch.int32)), "float32"),
    "mask that wants a gradient": (lambda: dict(mask=torch.zeros(2, 16, 16, requires_grad=True)),
                                   "mask gets no gradient"),
}


@pytest.mark.parametrize("case", REJECTED)
def test_rejects_unsupported_inputs(case):
    replacements, message = REJECTED[case]
    with pytest.raises(ValueError, match=message):
        window_attention(**(valid_arguments() | replacements()))


def test_layer_triton_path_matches_torch_path():
    q, k, v, bias, mask = make_inputs(images=2)
    core = WindowAttentionCore()
    expected = core(q, k, v, bias, mask)
    actual = set_kernels(core, "triton")(q, k, v, bias, mask)
    torch.testing.assert_close(actual, expected, **OUTPUT_TOLERANCE[torch.float32])


def test_registered_custom_op_passes_opcheck():
    q, k, v, bias, mask = make_inputs(n_tokens=16, head_dim=16)
    for t in (q, k, v, bias):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.segbench.window_attention.default, (q, k, v, bias, mask, 0.25))


def test_flop_counters_agree_with_the_reference():
    q, k, v, bias, mask = make_inputs(n_tokens=49, head_dim=32)
    for t in (q, k, v, bias):
        t.requires_grad_()

    def torch_flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn(q, k, v, bias, mask)
        return counter.get_total_flops()

    # fp32 q k^T and PV: 2 FLOPs per multiply-add here, 1 in fvcore (the papers' convention).
    assert torch_flops(window_attention) == torch_flops(window_attention_reference)
    assert torch_flops(window_attention) == 2 * 2 * 4 * 49 * 49 * 32

    from fvcore.nn import FlopCountAnalysis

    class Attention(torch.nn.Module):
        def forward(self, q, k, v, bias, mask):
            return window_attention(q, k, v, bias, mask)

    inputs = tuple(t.detach() for t in (q, k, v, bias, mask))
    analysis = FlopCountAnalysis(Attention(), inputs).set_op_handle(**FVCORE_HANDLES)
    assert analysis.total() == 2 * 4 * 49 * 49 * 32
    assert not analysis.unsupported_ops()


def test_backward_flops_are_counted_by_name():
    q, k, v, bias, mask = make_inputs(n_tokens=16, head_dim=16)
    q.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        window_attention(q, k, v, bias, mask).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["segbench.window_attention_backward"] == 2 * 5 * 4 * 16 * 16 * 16


SWIN_T_STAGES = [  # (images, windows per image, heads) at 512x512: 133/7, 70/7, 35/7 squared
    pytest.param(2, 361, 3, id="stage1"),
    pytest.param(8, 100, 6, id="stage2"),
    pytest.param(8, 25, 12, id="stage3"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("images, windows, heads", SWIN_T_STAGES)
def test_swin_shapes_on_gpu(images, windows, heads, dtype):
    assert_matches_reference(*make_inputs(images=images, windows=windows, heads=heads,
                                          dtype=dtype, bias_dtype=torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_tokens, head_dim", [(144, 64), (100, 32), (9, 16)])
def test_other_windows_on_gpu(n_tokens, head_dim, dtype):
    assert_matches_reference(*make_inputs(images=4, windows=4, heads=4, n_tokens=n_tokens,
                                          head_dim=head_dim, dtype=dtype))
