"""Fused dilated depthwise-separable convolution (DeepLab v3+ ASPP, decoder, Xception).

    out = conv1x1(act(depthwise_conv_KxK(x, dilation) + dw_bias), pw_weight) + pw_bias

Forward: one kernel computes a tile of the depthwise result in registers, applies the bias
and activation, and feeds it straight into the pointwise matrix product (tl.dot), so the
(N, C, H, W) intermediate never reaches memory.

Backward: one fused kernel recomputes the depthwise tile on chip, stores it (the pointwise
weight gradient needs it) and produces grad_mid = (grad_out @ pw_weight) * act'(mid) in the
same pass; the depthwise input gradient is the depthwise conv of grad_mid with the flipped
kernel (stride 1, symmetric padding), and the depthwise weight gradient is a per-tap
reduction. The two dense products over all positions (pointwise weight gradient, bias
gradients) go to cuBLAS / torch reductions, which are already at their floor.

Precision: loads are upcast to fp32 (the interpreter mishandles bf16 arithmetic); the
depthwise part accumulates in fp32; tl.dot takes fp16/bf16 operands for fp16/bf16 inputs
(rounding the intermediate exactly as eager's fp16 depthwise output is rounded) and
accumulates in fp32. For fp32 inputs tl.dot follows PyTorch's own convolution policy,
`torch.backends.cudnn.allow_tf32`: "tf32" when eager convolutions may use TF32, else "ieee".
The interpreter computes fp32 dots exactly either way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.nn import functional as F
from torch.utils.flop_counter import register_flop_formula

from kernels._common import (
    FVCORE_HANDLES,
    check_device,
    check_float_dtype,
    interpreting,
    require,
)

OP_NAME = "segbench::dwsep_conv2d"
BACKWARD_OP_NAME = "segbench::dwsep_conv2d_backward"
SUPPORTED_KERNEL_SIZES = (3, 5)
MID_ACTIVATIONS = (None, "relu")

# Tests set this to fill every output with NaN before launch, so an element the kernels
# never write cannot pass for a correct one.
POISON_OUTPUTS = False


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _depthwise_tile(src_ptr, w_ptr, b_ptr, offs_p, offs_c, NHW, C, H, W,
                    s_n, s_c, s_h, s_w, dilation,
                    KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Depthwise KxK conv (stride 1, 'same' dilated padding) of positions offs_p (flattened
    n*H*W + h*W + w) and channels offs_c, in fp32: a [len(offs_p), len(offs_c)] tile."""
    p_ok = offs_p < NHW
    c_ok = offs_c < C
    n = offs_p // (H * W)
    oh = (offs_p % (H * W)) // W
    ow = offs_p % W
    pad = dilation * (KSIZE // 2)
    base = src_ptr + n.to(tl.int64)[:, None] * s_n + offs_c.to(tl.int64)[None, :] * s_c
    acc = tl.zeros((offs_p.shape[0], offs_c.shape[0]), dtype=tl.float32)
    for kh in tl.static_range(KSIZE):
        ih = oh - pad + kh * dilation
        row_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KSIZE):
            iw = ow - pad + kw * dilation
            ok = row_ok & (iw >= 0) & (iw < W)
            tap = tl.load(base + (ih * s_h + iw * s_w)[:, None],
                          mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            weight = tl.load(w_ptr + offs_c * (KSIZE * KSIZE) + (kh * KSIZE + kw),
                             mask=c_ok, other=0.0).to(tl.float32)
            acc += tap * weight[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    return acc


@triton.jit
def _nchw_offsets(offs_p, offs_c, H, W, s_n, s_c, s_h, s_w):
    """Element offsets of positions offs_p and channels offs_c in a 4-d strided tensor."""
    n = offs_p // (H * W)
    h = (offs_p % (H * W)) // W
    w = offs_p % W
    spatial = n.to(tl.int64) * s_n + h * s_h + w * s_w
    return spatial[:, None] + offs_c.to(tl.int64)[None, :] * s_c


def _matmul_configs() -> list[triton.Config]:
    """One config in the interpreter (autotuning needs a GPU); a short list on the GPU.
    Every block is >= 16 because GPU tl.dot needs M, N, K >= 16."""
    if interpreting():
        return [triton.Config({"BLOCK_P": 32, "BLOCK_CI": 16, "BLOCK_CO": 16})]
    shapes = [(64, 32, 128, 4), (128, 32, 128, 8), (64, 32, 256, 8), (128, 64, 256, 8)]
    return [
        triton.Config({"BLOCK_P": p, "BLOCK_CI": ci, "BLOCK_CO": co}, num_warps=w, num_stages=3)
        for p, ci, co, w in shapes
    ]


@triton.autotune(configs=_matmul_configs(), key=["C", "COUT", "KSIZE", "RELU"])
@triton.jit
def _dwsep_forward_kernel(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, out_ptr,
                          NHW, C, H, W, COUT, dilation,
                          sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w,
                          KSIZE: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                          HAS_PW_BIAS: tl.constexpr, RELU: tl.constexpr,
                          DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = offs_co < COUT
    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for ci_start in range(0, C, BLOCK_CI):
        offs_ci = ci_start + tl.arange(0, BLOCK_CI)
        mid = _depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, offs_p, offs_ci, NHW, C, H, W,
                              sx_n, sx_c, sx_h, sx_w, dilation, KSIZE, HAS_DW_BIAS, RELU)
        # pw_weight is (COUT, C) row-major; this is its transposed [ci, co] tile.
        pw = tl.load(pw_w_ptr + offs_co[None, :] * C + offs_ci[:, None],
                     mask=(offs_ci < C)[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(mid.to(DOT_DTYPE), pw.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if HAS_PW_BIAS:
        acc += tl.load(pw_b_ptr + offs_co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    out_offs = _nchw_offsets(offs_p, offs_co, H, W, so_n, so_c, so_h, so_w)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty),
             mask=(offs_p < NHW)[:, None] & co_ok[None, :])


@triton.autotune(configs=_matmul_configs(), key=["C", "COUT", "KSIZE", "RELU"])
@triton.jit
def _dwsep_backward_mid_kernel(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, grad_out_ptr,
                               mid_ptr, grad_mid_ptr,
                               NHW, C, H, W, COUT, dilation,
                               sx_n, sx_c, sx_h, sx_w, sg_n, sg_c, sg_h, sg_w,
                               KSIZE: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                               RELU: tl.constexpr,
                               DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                               BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr,
                               BLOCK_CO: tl.constexpr):
    """Recompute mid = act(depthwise(x) + b) and write it with
    grad_mid = (grad_out @ pw_weight) * act'(mid); both (NHW, C) row-major."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    p_ok = offs_p < NHW
    ci_ok = offs_ci < C
    mid = _depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, offs_p, offs_ci, NHW, C, H, W,
                          sx_n, sx_c, sx_h, sx_w, dilation, KSIZE, HAS_DW_BIAS, RELU)
    acc = tl.zeros((BLOCK_P, BLOCK_CI), dtype=tl.float32)
    for co_start in range(0, COUT, BLOCK_CO):
        offs_co = co_start + tl.arange(0, BLOCK_CO)
        co_ok = offs_co < COUT
        grad = tl.load(grad_out_ptr + _nchw_offsets(offs_p, offs_co, H, W, sg_n, sg_c, sg_h, sg_w),
                       mask=p_ok[:, None] & co_ok[None, :], other=0.0)
        pw = tl.load(pw_w_ptr + offs_co[:, None] * C + offs_ci[None, :],
                     mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
        acc = tl.dot(grad.to(DOT_DTYPE), pw.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if RELU:
        # PyTorch's ReLU backward passes the gradient where the output is > 0.
        acc = tl.where(mid > 0.0, acc, 0.0)
    rows = offs_p.to(tl.int64)[:, None] * C + offs_ci[None, :]
    ok = p_ok[:, None] & ci_ok[None, :]
    tl.store(mid_ptr + rows, mid.to(mid_ptr.dtype.element_ty), mask=ok)
    tl.store(grad_mid_ptr + rows, acc.to(grad_mid_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _depthwise_kernel(src_ptr, w_ptr, dst_ptr, NHW, C, H, W, dilation,
                      ss_n, ss_c, ss_h, ss_w, sd_n, sd_c, sd_h, sd_w,
                      KSIZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Plain depthwise conv without bias (the input gradient, with the flipped kernel)."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = _depthwise_tile(src_ptr, w_ptr, w_ptr, offs_p, offs_c, NHW, C, H, W,
                          ss_n, ss_c, ss_h, ss_w, dilation, KSIZE, False, False)
    tl.store(dst_ptr + _nchw_offsets(offs_p, offs_c, H, W, sd_n, sd_c, sd_h, sd_w),
             acc.to(dst_ptr.dtype.element_ty),
             mask=(offs_p < NHW)[:, None] & (offs_c < C)[None, :])


@triton.jit
def _depthwise_weight_grad_kernel(x_ptr, grad_mid_ptr, partial_ptr, NHW, C, H, W, dilation,
                                  sx_n, sx_c, sx_h, sx_w,
                                  KSIZE: tl.constexpr, BLOCK_P: tl.constexpr,
                                  BLOCK_C: tl.constexpr):
    """partial[split, c, tap] = sum over this split's positions of grad_mid * shifted x.
    Grid: (splits, channel blocks, KSIZE*KSIZE taps); splits stride over position blocks."""
    split = tl.program_id(0)
    splits = tl.num_programs(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(2)
    c_ok = offs_c < C
    pad = dilation * (KSIZE // 2)
    dh = (tap // KSIZE) * dilation - pad
    dw = (tap % KSIZE) * dilation - pad
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for p_start in range(split * BLOCK_P, NHW, splits * BLOCK_P):
        offs_p = p_start + tl.arange(0, BLOCK_P)
        p_ok = offs_p < NHW
        n = offs_p // (H * W)
        ih = (offs_p % (H * W)) // W + dh
        iw = offs_p % W + dw
        ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_offs = (n.to(tl.int64) * sx_n + ih * sx_h + iw * sx_w)[:, None] + \
            offs_c.to(tl.int64)[None, :] * sx_c
        x = tl.load(x_ptr + x_offs, mask=ok[:, None] & c_ok[None, :], other=0.0)
        grad = tl.load(grad_mid_ptr + offs_p.to(tl.int64)[:, None] * C + offs_c[None, :],
                       mask=p_ok[:, None] & c_ok[None, :], other=0.0)
        acc += x.to(tl.float32) * grad.to(tl.float32)
    total = tl.sum(acc, axis=0)
    tl.store(partial_ptr + (split * C + offs_c) * (KSIZE * KSIZE) + tap, total, mask=c_ok)


# ----------------------------------------------------------------------------- launchers

_TORCH_TO_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _dot_operands(dtype: torch.dtype) -> tuple[tl.dtype, str]:
    """tl.dot operand dtype and input_precision (see the module docstring). In the interpreter
    bf16 dots give garbage, so operands stay fp32 there."""
    if dtype == torch.float32:
        return tl.float32, "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    if interpreting():
        return tl.float32, "ieee"
    # input_precision does not apply to 16-bit operands; pass the compiler's default.
    return _TORCH_TO_TL[dtype], "tf32"


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Outputs keep channels_last when the input is channels_last, as F.conv2d does."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _new_tensor(shape, like: torch.Tensor, memory_format=torch.contiguous_format,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device,
                      memory_format=memory_format)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def _bias_or(bias: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A contiguous bias, or any pointer for the kernel to ignore (HAS_*_BIAS=False)."""
    return placeholder if bias is None else bias.contiguous()


def _weight_grad_blocks() -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, most splits) of the depthwise weight-gradient reduction."""
    if interpreting():
        return 32, 32, 1
    return 64, 32, 64


def _launch_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation: int,
                    relu: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    cout = pw_weight.shape[0]
    out = _new_tensor((n, cout, h, w), x, _memory_format(x))
    if out.numel() == 0:
        return out
    dw_w, pw_w = dw_weight.contiguous(), pw_weight.reshape(cout, c).contiguous()
    dot_dtype, precision = _dot_operands(x.dtype)
    nhw = n * h * w

    def grid(meta):
        return triton.cdiv(nhw, meta["BLOCK_P"]), triton.cdiv(cout, meta["BLOCK_CO"])

    _dwsep_forward_kernel[grid](
        x, dw_w, _bias_or(dw_bias, dw_w), pw_w, _bias_or(pw_bias, pw_w),
        out, nhw, c, h, w, cout, dilation, *x.stride(), *out.stride(),
        KSIZE=dw_weight.shape[-1], HAS_DW_BIAS=dw_bias is not None,
        HAS_PW_BIAS=pw_bias is not None, RELU=relu, DOT_DTYPE=dot_dtype,
        DOT_PRECISION=precision,
    )
    return out


def _launch_backward_mid(grad_out, x, dw_weight, dw_bias, pw_weight, dilation: int,
                         relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """mid and grad_mid as (N*H*W, C) row-major matrices."""
    n, c, h, w = x.shape
    cout = pw_weight.shape[0]
    mid = _new_tensor((n * h * w, c), x)
    grad_mid = _new_tensor((n * h * w, c), x)
    dw_w, pw_w = dw_weight.contiguous(), pw_weight.reshape(cout, c).contiguous()
    dot_dtype, precision = _dot_operands(x.dtype)

    def grid(meta):
        return triton.cdiv(n * h * w, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_CI"])

    _dwsep_backward_mid_kernel[grid](
        x, dw_w, _bias_or(dw_bias, dw_w), pw_w, grad_out, mid, grad_mid,
        n * h * w, c, h, w, cout, dilation, *x.stride(), *grad_out.stride(),
        KSIZE=dw_weight.shape[-1], HAS_DW_BIAS=dw_bias is not None, RELU=relu,
        DOT_DTYPE=dot_dtype, DOT_PRECISION=precision,
    )
    return mid, grad_mid


def _launch_input_grad(grad_mid, x, dw_weight, dilation: int) -> torch.Tensor:
    n, c, h, w = x.shape
    grad_x = _new_tensor(x.shape, x, _memory_format(x))
    flipped = dw_weight.flip(-2, -1).contiguous()
    block_p, block_c = (32, 32) if interpreting() else (64, 32)
    grid = (triton.cdiv(n * h * w, block_p), triton.cdiv(c, block_c))
    # grad_mid is (N*H*W, C) row-major, i.e. NHWC: strides n, c, h, w below.
    _depthwise_kernel[grid](
        grad_mid, flipped, grad_x, n * h * w, c, h, w, dilation,
        h * w * c, 1, w * c, c, *grad_x.stride(),
        KSIZE=dw_weight.shape[-1], BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return grad_x


def _launch_depthwise_weight_grad(grad_mid, x, dw_weight, dilation: int) -> torch.Tensor:
    n, c, h, w = x.shape
    ksize = dw_weight.shape[-1]
    block_p, block_c, max_splits = _weight_grad_blocks()
    splits = min(triton.cdiv(n * h * w, block_p), max_splits)
    partial = _new_tensor((splits, c, ksize * ksize), x, dtype=torch.float32)
    _depthwise_weight_grad_kernel[(splits, triton.cdiv(c, block_c), ksize * ksize)](
        x, grad_mid, partial, n * h * w, c, h, w, dilation, *x.stride(),
        KSIZE=ksize, BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return partial.sum(0).reshape(dw_weight.shape).to(dw_weight.dtype)


def _launch_backward(grad_out, x, dw_weight, dw_bias, pw_weight, dilation: int, relu: bool):
    """(grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias)."""
    n, c, h, w = x.shape
    cout = pw_weight.shape[0]
    if grad_out.numel() == 0 or x.numel() == 0:
        return (torch.zeros_like(x), torch.zeros_like(dw_weight),
                x.new_zeros(c), torch.zeros_like(pw_weight), x.new_zeros(cout))
    mid, grad_mid = _launch_backward_mid(grad_out, x, dw_weight, dw_bias, pw_weight,
                                         dilation, relu)
    grad_out_rows = grad_out.permute(0, 2, 3, 1).reshape(n * h * w, cout)
    grad_pw_weight = (grad_out_rows.t() @ mid).reshape(pw_weight.shape)
    grad_pw_bias = grad_out_rows.sum(0, dtype=torch.float32).to(x.dtype)
    grad_dw_bias = grad_mid.sum(0, dtype=torch.float32).to(x.dtype)
    grad_x = _launch_input_grad(grad_mid, x, dw_weight, dilation)
    grad_dw_weight = _launch_depthwise_weight_grad(grad_mid, x, dw_weight, dilation)
    return grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias


# ----------------------------------------------------------------------------- custom ops
# torch.library.register_autograd below plays the role of a torch.autograd.Function: the
# op itself carries its backward, so torch.jit.trace (fvcore), torch.compile and
# FlopCounterMode all see "segbench::dwsep_conv2d" by name instead of an opaque PythonOp.


@torch.library.custom_op(OP_NAME, mutates_args=())
def _dwsep_conv2d_op(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor | None,
                     pw_weight: torch.Tensor, pw_bias: torch.Tensor | None, dilation: int,
                     relu: bool) -> torch.Tensor:
    return _launch_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation, relu)


@_dwsep_conv2d_op.register_fake
def _(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation, relu):
    n, _, h, w = x.shape
    return x.new_empty((n, pw_weight.shape[0], h, w)).contiguous(memory_format=_memory_format(x))


@torch.library.custom_op(BACKWARD_OP_NAME, mutates_args=())
def _dwsep_conv2d_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor,
    dw_bias: torch.Tensor | None, pw_weight: torch.Tensor, dilation: int, relu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_backward(grad_out, x, dw_weight, dw_bias, pw_weight, dilation, relu)


@_dwsep_conv2d_backward_op.register_fake
def _(grad_out, x, dw_weight, dw_bias, pw_weight, dilation, relu):
    c, cout = x.shape[1], pw_weight.shape[0]
    return (x.new_empty(x.shape).contiguous(memory_format=_memory_format(x)),
            torch.empty_like(dw_weight), x.new_empty(c), torch.empty_like(pw_weight),
            x.new_empty(cout))


# ----------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output) -> None:
    x, dw_weight, dw_bias, pw_weight, pw_bias, dilation, relu = inputs
    ctx.save_for_backward(x, dw_weight, dw_bias, pw_weight)
    ctx.dilation, ctx.relu = dilation, relu
    ctx.has_pw_bias = pw_bias is not None


def _backward(ctx, grad_out):
    x, dw_weight, dw_bias, pw_weight = ctx.saved_tensors
    grad_x, grad_dw_w, grad_dw_b, grad_pw_w, grad_pw_b = _dwsep_conv2d_backward_op(
        grad_out, x, dw_weight, dw_bias, pw_weight, ctx.dilation, ctx.relu)
    return (grad_x, grad_dw_w, grad_dw_b if dw_bias is not None else None, grad_pw_w,
            grad_pw_b if ctx.has_pw_bias else None, None, None)


_dwsep_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- FLOPs


def dwsep_macs(x_shape, dw_weight_shape, pw_weight_shape) -> int:
    """Multiply-adds of the forward: depthwise N*H*W*C*K*K plus pointwise N*H*W*C*Cout
    (biases and the activation are not counted, as fvcore does not count them for conv)."""
    n, c, h, w = x_shape
    k_area = dw_weight_shape[-2] * dw_weight_shape[-1]
    return n * h * w * c * (k_area + pw_weight_shape[0])


@register_flop_formula(torch.ops.segbench.dwsep_conv2d)
def _flop_counter_forward(x_shape, dw_weight_shape, dw_bias_shape, pw_weight_shape, *args,
                          out_shape=None, **kwargs) -> int:
    # FlopCounterMode counts 2 FLOPs per multiply-add for aten.convolution; so does this, so
    # a model counts the same with kernels="torch" and kernels="triton".
    return 2 * dwsep_macs(x_shape, dw_weight_shape, pw_weight_shape)


@register_flop_formula(torch.ops.segbench.dwsep_conv2d_backward)
def _flop_counter_backward(grad_out_shape, x_shape, dw_weight_shape, dw_bias_shape,
                           pw_weight_shape, *args, out_shape=None, **kwargs) -> int:
    n, c, h, w = x_shape
    depthwise = n * h * w * c * dw_weight_shape[-2] * dw_weight_shape[-1]
    pointwise = n * h * w * c * pw_weight_shape[0]
    # Recomputed depthwise, input and weight gradients of each conv.
    return 2 * (3 * depthwise + 2 * pointwise)


def _fvcore_handle(inputs, outputs) -> int:
    """fvcore counts one FLOP per multiply-add."""
    from fvcore.nn.jit_handles import get_shape

    return dwsep_macs(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(inputs[3]))


FVCORE_HANDLES[OP_NAME] = _fvcore_handle


# ----------------------------------------------------------------------------- public API


def _shape(t) -> tuple | None:
    return None if t is None else tuple(t.shape)


def _check_inputs(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation, mid_activation) -> None:
    require(isinstance(x, torch.Tensor) and x.dim() == 4,
            f"x must be a 4-d (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    c = x.shape[1]
    require(dw_weight.dim() == 4 and dw_weight.shape[:2] == (c, 1)
            and dw_weight.shape[2] == dw_weight.shape[3]
            and dw_weight.shape[2] in SUPPORTED_KERNEL_SIZES,
            f"dw_weight must be ({c}, 1, K, K) with K in {SUPPORTED_KERNEL_SIZES}, "
            f"got {tuple(dw_weight.shape)}")
    require(pw_weight.dim() == 4 and pw_weight.shape[1:] == (c, 1, 1),
            f"pw_weight must be (C_out, {c}, 1, 1), got {tuple(pw_weight.shape)}")
    require(dw_bias is None or dw_bias.shape == (c,),
            f"dw_bias must be None or ({c},), got {_shape(dw_bias)}")
    cout = pw_weight.shape[0]
    require(pw_bias is None or pw_bias.shape == (cout,),
            f"pw_bias must be None or ({cout},), got {_shape(pw_bias)}")
    require(isinstance(dilation, int) and not isinstance(dilation, bool) and dilation >= 1,
            f"dilation must be an int >= 1, got {dilation!r}")
    require(mid_activation in MID_ACTIVATIONS,
            f"mid_activation must be one of {MID_ACTIVATIONS}, got {mid_activation!r}")
    tensors = [t for t in (x, dw_weight, dw_bias, pw_weight, pw_bias) if t is not None]
    check_float_dtype("x", x)
    require(all(t.dtype == x.dtype for t in tensors),
            f"all tensors must have x's dtype {x.dtype}, got {[t.dtype for t in tensors]}")
    check_device(*tensors)


def depthwise_separable_conv2d(x: torch.Tensor, dw_weight: torch.Tensor,
                               dw_bias: torch.Tensor | None, pw_weight: torch.Tensor,
                               pw_bias: torch.Tensor | None, dilation: int = 1,
                               mid_activation: str | None = None) -> torch.Tensor:
    """Fused depthwise KxK (stride 1, dilated 'same' padding) -> activation -> pointwise 1x1.
    Same result as `depthwise_separable_conv2d_reference`; differentiable in every input."""
    _check_inputs(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation, mid_activation)
    return _dwsep_conv2d_op(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation,
                            mid_activation == "relu")


def depthwise_separable_conv2d_reference(x, dw_weight, dw_bias, pw_weight, pw_bias,
                                         dilation=1, mid_activation=None) -> torch.Tensor:
    """The definition, in plain PyTorch."""
    k = dw_weight.shape[-1]
    mid = F.conv2d(x, dw_weight, dw_bias, padding=dilation * (k // 2), dilation=dilation,
                   groups=x.shape[1])
    if mid_activation == "relu":
        mid = F.relu(mid)
    return F.conv2d(mid, pw_weight, pw_bias)
