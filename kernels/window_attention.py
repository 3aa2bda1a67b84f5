"""Fused window attention for Swin: softmax(q k^T * scale + bias + mask) v per window and head.

One program owns one (window, head) pair and a block of query rows against all the window's
keys, so the whole score row stays on chip: q, k, v are read once (up to 8x8 windows; larger
ones re-read k and v per query block) and the output is written once, where the eager path
writes and re-reads the (B*nW, heads, N, N) scores several times. Windows are padded to a power
of two (49 -> 64) by masked loads; padded keys get -inf scores, padded query rows are computed
on zeros and never stored. q, k, v stay in their 16-bit dtype from load to tl.dot (half the
registers of fp32 tiles); scores, softmax and accumulation are fp32.

The backward recomputes the probabilities (cheap: the row is on chip) instead of saving them,
in two kernels: one per (window, head) for dq, dk, dv, and one for the bias gradient, a sum
over every window, whose programs walk several windows of one head, sum their share in
registers and write one partial tile each (torch adds the partials). Split so, neither holds
more than three products and a running sum: one kernel doing both spilled on sm_90.

Why it should be fast on a Hopper GPU (reasoning, not yet measured): Swin-T stage 1 at 224x224
with 8 images is 512 windows x 3 heads of 49 tokens, head dim 32; in bf16 it must move q, k, v
and the output (19.3 MB; bias and mask, 0.6 MB, stay in L2) and compute 0.47 GFLOP, so it is
memory-bound: a floor of ~4.5 us at the H200's ~4.3 TB/s copy bandwidth. The forward is one
launch of 1536 programs (8 warps, ~90 registers, ~13-21 KB shared memory: several per SM),
each reading 12 KB once; eager writes and re-reads ~100 MB of fp32 scores over five or more
launches (>= 4x slower on bytes alone), and SDPA with the bias and mask materialised first
writes and reads a (B*nW, heads, N, N) mask (7 MB in bf16, padded to a multiple of 8 by a
copy) in two extra launches, so 1.5x over it needs the fused kernel within ~2x of its floor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from kernels._common import (
    FVCORE_HANDLES,
    DotConfig,
    check_device,
    check_float_dtype,
    dot_config,
    empty_output,
    launch_target,
    require,
)

MAX_TOKENS = 144  # 12x12 windows
HEAD_DIMS = (16, 32, 64)
MIN_DOT_SIZE = 16  # tl.dot on the GPU wants every dimension >= 16
# Query rows per program by keys per block (the whole window padded), per kernel and whether
# fp32 dots run without tensor cores ("ieee", FMA: more registers per product); halved for
# head dim 64 in the backward kernels and in FMA forwards. The forward holds 3 score-sized
# fp32 tiles, the backward 3 and 5 products, the bias gradient 3 and a running sum. 8 warps
# (the most that still give a thread 255 registers), 4 for small forward tiles.
_ROWS = {16: 16, 32: 32, 64: 64, 128: 64, 256: 32}
_BACKWARD_ROWS = {16: 16, 32: 32, 64: 64, 128: 32, 256: 16}
QUERY_ROWS = {
    ("forward", False): _ROWS, ("forward", True): _ROWS,
    ("backward", False): _BACKWARD_ROWS, ("backward", True): _BACKWARD_ROWS | {64: 32},
    ("bias_grad", False): _BACKWARD_ROWS, ("bias_grad", True): _BACKWARD_ROWS | {64: 32},
}
SMALL_TILE = 32 * 32
# Backward programs per launch to aim for: enough to fill an H100's 132 SMs a few times over;
# the interpreter runs programs one after another, so there fewer and longer ones cost less.
TARGET_BACKWARD_PROGRAMS = {"gpu": 1024, "interpreter": 2}
MAX_WINDOWS_PER_PROGRAM = 32


@triton.jit
def _load_tile(ptr, rows, cols, stride_row, stride_col, n_rows, n_cols, DTYPE: tl.constexpr):
    """Rows x cols tile in DTYPE (q, k, v: the dot operand dtype, so 16-bit tiles take half the
    registers; bias, mask: fp32); zeros outside."""
    offsets = rows[:, None] * stride_row + cols[None, :] * stride_col
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + offsets, mask=inside, other=0.0).to(DTYPE)


@triton.jit
def _matmul(a, b, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=DOT_PRECISION)


@triton.jit
def _probabilities(q, k, bias_ptr, mask_ptr, head, mask_window, rows, keys, n_tokens, scale,
                   stride_bias_h, stride_bias_i, stride_bias_j,
                   stride_mask_w, stride_mask_i, stride_mask_j,
                   HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """softmax over keys of q k^T * scale + bias + mask, for one block of query rows."""
    scores = _matmul(q, tl.trans(k), DOT_DTYPE, DOT_PRECISION) * scale
    if HAS_BIAS:
        scores += _load_tile(bias_ptr + head * stride_bias_h, rows, keys,
                             stride_bias_i, stride_bias_j, n_tokens, n_tokens, tl.float32)
    if HAS_MASK:
        scores += _load_tile(mask_ptr + mask_window * stride_mask_w, rows, keys,
                             stride_mask_i, stride_mask_j, n_tokens, n_tokens, tl.float32)
    # Only padded keys go to -inf: padded query rows stay finite, so they never turn into NaN
    # that would leak into dk and dv through the backward's P^T products.
    scores = tl.where(keys[None, :] < n_tokens, scores, float("-inf"))
    weights = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    return weights / tl.sum(weights, axis=1)[:, None]


@triton.jit
def _window_probabilities(q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, window, head,
                          rows, keys, dims, n_tokens, mask_windows, scale,
                          stride_qb, stride_qh, stride_qn, stride_qd,
                          stride_kb, stride_kh, stride_kn, stride_kd,
                          stride_vb, stride_vh, stride_vn, stride_vd,
                          stride_bias_h, stride_bias_i, stride_bias_j,
                          stride_mask_w, stride_mask_i, stride_mask_j,
                          HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
                          HEAD_DIM: tl.constexpr, DOT_DTYPE: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
    """q (query rows), k, v (keys) of one window and head, and the probabilities P."""
    q = _load_tile(q_ptr + window * stride_qb + head * stride_qh, rows, dims,
                   stride_qn, stride_qd, n_tokens, HEAD_DIM, DOT_DTYPE)
    k = _load_tile(k_ptr + window * stride_kb + head * stride_kh, keys, dims,
                   stride_kn, stride_kd, n_tokens, HEAD_DIM, DOT_DTYPE)
    v = _load_tile(v_ptr + window * stride_vb + head * stride_vh, keys, dims,
                   stride_vn, stride_vd, n_tokens, HEAD_DIM, DOT_DTYPE)
    p = _probabilities(q, k, bias_ptr, mask_ptr, head, window % mask_windows, rows, keys,
                       n_tokens, scale, stride_bias_h, stride_bias_i, stride_bias_j,
                       stride_mask_w, stride_mask_i, stride_mask_j,
                       HAS_BIAS, HAS_MASK, DOT_DTYPE, DOT_PRECISION)
    return q, k, v, p


@triton.jit
def _window_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, out_ptr,
    heads, n_tokens, mask_windows, scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_bias_h, stride_bias_i, stride_bias_j,
    stride_mask_w, stride_mask_i, stride_mask_j,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    window_head = tl.program_id(0).to(tl.int64)
    window, head = window_head // heads, window_head % heads
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    keys = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)

    _, _, v, p = _window_probabilities(
        q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, window, head, rows, keys, dims, n_tokens,
        mask_windows, scale, stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh, stride_vn, stride_vd,
        stride_bias_h, stride_bias_i, stride_bias_j, stride_mask_w, stride_mask_i, stride_mask_j,
        HAS_BIAS, HAS_MASK, HEAD_DIM, DOT_DTYPE, DOT_PRECISION)
    out = _matmul(p, v, DOT_DTYPE, DOT_PRECISION)

    out_offsets = rows[:, None] * stride_on + dims[None, :] * stride_od
    tl.store(out_ptr + window * stride_ob + head * stride_oh + out_offsets,
             out.to(out_ptr.dtype.element_ty), mask=rows[:, None] < n_tokens)


@triton.jit
def _store_key_grad(ptrs, grad, keys, n_tokens, ACCUMULATE: tl.constexpr):
    """A (keys x head dim) gradient: stored, or summed with atomics into an fp32 buffer when
    several query blocks of the window add to it."""
    inside = keys[:, None] < n_tokens
    if ACCUMULATE:
        tl.atomic_add(ptrs, grad, mask=inside)
    else:
        tl.store(ptrs, grad.to(ptrs.dtype.element_ty), mask=inside)


@triton.jit
def _score_grads(q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, grad_out_ptr, window, head,
                 rows, keys, dims, n_tokens, mask_windows, scale,
                 stride_qb, stride_qh, stride_qn, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_gb, stride_gh, stride_gn, stride_gd,
                 stride_bias_h, stride_bias_i, stride_bias_j,
                 stride_mask_w, stride_mask_i, stride_mask_j,
                 HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, HEAD_DIM: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """q, dO, k, the recomputed probabilities P and the score gradient
    dS = P * (dP - rowsum(P * dP)) with dP = dO V^T, of one window and head."""
    q, k, v, p = _window_probabilities(
        q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, window, head, rows, keys, dims, n_tokens,
        mask_windows, scale, stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh, stride_vn, stride_vd,
        stride_bias_h, stride_bias_i, stride_bias_j, stride_mask_w, stride_mask_i, stride_mask_j,
        HAS_BIAS, HAS_MASK, HEAD_DIM, DOT_DTYPE, DOT_PRECISION)
    grad_out = _load_tile(grad_out_ptr + window * stride_gb + head * stride_gh, rows, dims,
                          stride_gn, stride_gd, n_tokens, HEAD_DIM, DOT_DTYPE)
    grad_p = _matmul(grad_out, tl.trans(v), DOT_DTYPE, DOT_PRECISION)
    grad_scores = p * (grad_p - tl.sum(p * grad_p, axis=1)[:, None])
    return q, grad_out, k, p, grad_scores


@triton.jit
def _window_attention_bwd_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, grad_out_ptr,
    grad_q_ptr, grad_k_ptr, grad_v_ptr,
    heads, n_tokens, mask_windows, scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_bias_h, stride_bias_i, stride_bias_j,
    stride_mask_w, stride_mask_i, stride_mask_j,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACCUMULATE_KV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dq, dk, dv of one (window, head) and block of query rows; grad_q, grad_k, grad_v are
    contiguous (windows, heads, n_tokens, HEAD_DIM); with several query blocks per window,
    grad_k and grad_v are fp32 buffers summed into with atomics."""
    window_head = tl.program_id(0).to(tl.int64)
    window, head = window_head // heads, window_head % heads
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    keys = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    q, grad_out, k, p, grad_scores = _score_grads(
        q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, grad_out_ptr, window, head,
        rows, keys, dims, n_tokens, mask_windows, scale,
        stride_qb, stride_qh, stride_qn, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd, stride_gb, stride_gh, stride_gn, stride_gd,
        stride_bias_h, stride_bias_i, stride_bias_j, stride_mask_w, stride_mask_i, stride_mask_j,
        HAS_BIAS, HAS_MASK, HEAD_DIM, DOT_DTYPE, DOT_PRECISION)

    base = window_head * n_tokens * HEAD_DIM
    key_offsets = base + keys[:, None] * HEAD_DIM + dims[None, :]
    grad_v = _matmul(tl.trans(p), grad_out, DOT_DTYPE, DOT_PRECISION)
    _store_key_grad(grad_v_ptr + key_offsets, grad_v, keys, n_tokens, ACCUMULATE_KV)
    grad_k = _matmul(tl.trans(grad_scores), q, DOT_DTYPE, DOT_PRECISION) * scale
    _store_key_grad(grad_k_ptr + key_offsets, grad_k, keys, n_tokens, ACCUMULATE_KV)
    grad_q = _matmul(grad_scores, k, DOT_DTYPE, DOT_PRECISION) * scale
    tl.store(grad_q_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :],
             grad_q.to(grad_q_ptr.dtype.element_ty), mask=rows[:, None] < n_tokens)


@triton.jit
def _window_attention_bias_grad_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, grad_out_ptr, grad_bias_partial_ptr,
    windows, heads, n_tokens, mask_windows, scale, windows_per_program,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_bias_h, stride_bias_i, stride_bias_j,
    stride_mask_w, stride_mask_i, stride_mask_j,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One partial bias gradient (rows x keys of one head), the sum of dS over the program's
    windows; torch adds the partials of all programs."""
    group = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    keys = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    grad_bias = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first_window = group * windows_per_program
    last_window = tl.minimum(first_window + windows_per_program, windows)
    for window in range(first_window, last_window):
        _, _, _, _, grad_scores = _score_grads(
            q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, grad_out_ptr, window, head,
            rows, keys, dims, n_tokens, mask_windows, scale,
            stride_qb, stride_qh, stride_qn, stride_qd, stride_kb, stride_kh, stride_kn,
            stride_kd, stride_vb, stride_vh, stride_vn, stride_vd, stride_gb, stride_gh,
            stride_gn, stride_gd, stride_bias_h, stride_bias_i, stride_bias_j,
            stride_mask_w, stride_mask_i, stride_mask_j,
            True, HAS_MASK, HEAD_DIM, DOT_DTYPE, DOT_PRECISION)
        grad_bias += grad_scores
    partial = grad_bias_partial_ptr + (group * heads + head) * n_tokens * n_tokens
    inside = (rows[:, None] < n_tokens) & (keys[None, :] < n_tokens)
    tl.store(partial + rows[:, None] * n_tokens + keys[None, :], grad_bias, mask=inside)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 bias: torch.Tensor | None, mask: torch.Tensor | None) -> None:
    """Shapes and dtypes only (no data), so fake tensors under torch.compile pass through it."""
    require(q.dim() == 4, f"q must be (B*nW, heads, N, d), got shape {tuple(q.shape)}")
    require(k.shape == q.shape and v.shape == q.shape,
            f"q, k, v must share one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_dtype(name, t)
    require(k.dtype == q.dtype and v.dtype == q.dtype,
            f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    windows, heads, n_tokens, head_dim = q.shape
    require(1 <= n_tokens <= MAX_TOKENS,
            f"window area N must be in 1..{MAX_TOKENS} (12x12 windows), got {n_tokens}")
    require(head_dim in HEAD_DIMS, f"head dim must be one of {HEAD_DIMS}, got {head_dim}")
    if bias is not None:
        check_float_dtype("bias", bias)
        require(bias.shape == (heads, n_tokens, n_tokens),
                f"bias must be (heads, N, N) = {(heads, n_tokens, n_tokens)}, "
                f"got {tuple(bias.shape)}")
    if mask is not None:
        check_float_dtype("mask", mask)
        require(mask.dim() == 3 and mask.shape[0] >= 1 and mask.shape[1:] == (n_tokens, n_tokens),
                f"mask must be (nW, N, N) with N = {n_tokens}, got {tuple(mask.shape)}")
        require(windows % mask.shape[0] == 0,
                f"batch B*nW = {windows} must be a multiple of the mask's nW = {mask.shape[0]}")


class Tiles(NamedTuple):
    """Block sizes and launch options of one of the kernels."""
    block_m: int  # query rows per program
    block_n: int  # keys per program: the whole window, padded to a power of two
    num_warps: int
    num_stages: int


def launch_tiles(n_tokens: int, head_dim: int, dot: DotConfig, kernel: str) -> Tiles:
    """All keys of a window in one block (padded to a power of two, >= 16 for tl.dot) and the
    query rows of `kernel` ("forward", "backward" or "bias_grad") from QUERY_ROWS: tiles that
    compile for sm_90 without spills (scripts/sm90_compile_check.sh checks every launch the
    tests and a GPU make). No kernel has a loop worth pipelining (num_stages=1)."""
    block_n = max(MIN_DOT_SIZE, triton.next_power_of_2(n_tokens))
    fma = dot.dtype == tl.float32 and dot.precision == "ieee"
    rows = QUERY_ROWS[kernel, fma][block_n]
    if head_dim > 32 and (kernel != "forward" or fma):
        rows //= 2
    block_m = max(MIN_DOT_SIZE, min(block_n, rows))
    num_warps = 4 if kernel == "forward" and block_m * block_n <= SMALL_TILE else 8
    return Tiles(block_m, block_n, num_warps, num_stages=1)


def _dot_config(dtype: torch.dtype) -> DotConfig:
    """fp32 inputs follow torch's own TF32 switch for matmuls (what the eager path uses)."""
    return dot_config(dtype, allow_tf32=torch.backends.cuda.matmul.allow_tf32)


def _optional_strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else t.stride()


def _launch_forward(q, k, v, bias, mask, scale: float) -> torch.Tensor:
    check_inputs(q, k, v, bias, mask)
    check_device(*(t for t in (q, k, v, bias, mask) if t is not None))
    windows, heads, n_tokens, head_dim = q.shape
    out = empty_output(q.shape, q.dtype, q.device)
    if out.numel() == 0:
        return out
    dot = _dot_config(q.dtype)
    tiles = launch_tiles(n_tokens, head_dim, dot, "forward")
    grid = (windows * heads, triton.cdiv(n_tokens, tiles.block_m))
    _window_attention_fwd_kernel[grid](
        q, k, v, q if bias is None else bias, q if mask is None else mask, out,
        heads, n_tokens, 1 if mask is None else mask.shape[0], scale,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        *_optional_strides(bias), *_optional_strides(mask),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, HEAD_DIM=head_dim,
        DOT_DTYPE=dot.dtype, DOT_PRECISION=dot.precision,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return out


def _windows_per_program(windows: int, heads: int, query_blocks: int) -> int:
    target = TARGET_BACKWARD_PROGRAMS[launch_target()]
    per_program = triton.cdiv(windows * heads * query_blocks, target)
    return max(1, min(MAX_WINDOWS_PER_PROGRAM, per_program))


def _launch_backward(grad_out, q, k, v, bias, mask, scale: float,
                     need_bias_grad: bool) -> list[torch.Tensor]:
    check_inputs(q, k, v, bias, mask)
    check_device(*(t for t in (grad_out, q, k, v, bias, mask) if t is not None))
    require(grad_out.shape == q.shape,
            f"grad_out must have q's shape {tuple(q.shape)}, got {tuple(grad_out.shape)}")
    windows, heads, n_tokens, head_dim = q.shape
    dot = _dot_config(q.dtype)
    tiles = launch_tiles(n_tokens, head_dim, dot, "backward")
    query_blocks = triton.cdiv(n_tokens, tiles.block_m)
    accumulate_kv = query_blocks > 1
    grad_q = empty_output(q.shape, q.dtype, q.device)
    if accumulate_kv:
        grad_k = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        grad_v = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    else:
        grad_k = empty_output(q.shape, q.dtype, q.device)
        grad_v = empty_output(q.shape, q.dtype, q.device)
    inputs = (q, k, v, q if bias is None else bias, q if mask is None else mask, grad_out)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
               *_optional_strides(bias), *_optional_strides(mask))
    mask_windows = 1 if mask is None else mask.shape[0]
    if q.numel() > 0:
        _window_attention_bwd_kernel[(windows * heads, query_blocks)](
            *inputs, grad_q, grad_k, grad_v, heads, n_tokens, mask_windows, scale, *strides,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None, ACCUMULATE_KV=accumulate_kv,
            BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, HEAD_DIM=head_dim,
            DOT_DTYPE=dot.dtype, DOT_PRECISION=dot.precision,
            num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        )
    grads = [grad_q, grad_k.to(q.dtype), grad_v.to(q.dtype)]
    if need_bias_grad and bias is not None:
        grads.append(_bias_grad(inputs, strides, windows, heads, n_tokens, mask_windows,
                                scale, mask is not None, head_dim, dot).to(bias.dtype))
    return grads


def _bias_grad(inputs, strides, windows: int, heads: int, n_tokens: int, mask_windows: int,
               scale: float, has_mask: bool, head_dim: int, dot: DotConfig) -> torch.Tensor:
    """Sum of dS over every window: per-program partial sums, then torch adds them up."""
    tiles = launch_tiles(n_tokens, head_dim, dot, "bias_grad")
    query_blocks = triton.cdiv(n_tokens, tiles.block_m)
    per_program = _windows_per_program(windows, heads, query_blocks)
    groups = triton.cdiv(windows, per_program)
    q = inputs[0]
    partial = empty_output((groups, heads, n_tokens, n_tokens), torch.float32, q.device)
    if q.numel() > 0:
        _window_attention_bias_grad_kernel[(groups, heads, query_blocks)](
            *inputs, partial, windows, heads, n_tokens, mask_windows, scale, per_program,
            *strides, HAS_MASK=has_mask,
            BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, HEAD_DIM=head_dim,
            DOT_DTYPE=dot.dtype, DOT_PRECISION=dot.precision,
            num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        )
    return partial.sum(0)


# Custom ops: autograd, torch.compile and FLOP counters see "segbench::window_attention" by
# name. register_autograd plays the part of a torch.autograd.Function for a custom op.

@torch.library.custom_op("segbench::window_attention", mutates_args=())
def _window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         bias: torch.Tensor | None, mask: torch.Tensor | None,
                         scale: float) -> torch.Tensor:
    return _launch_forward(q, k, v, bias, mask, scale)


@_window_attention_op.register_fake
def _window_attention_fake(q, k, v, bias, mask, scale):
    check_inputs(q, k, v, bias, mask)
    return q.new_empty(q.shape)


@torch.library.custom_op("segbench::window_attention_backward", mutates_args=())
def _window_attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                  v: torch.Tensor, bias: torch.Tensor | None,
                                  mask: torch.Tensor | None, scale: float,
                                  need_bias_grad: bool) -> list[torch.Tensor]:
    """[grad_q, grad_k, grad_v] and, when need_bias_grad and bias is given, grad_bias."""
    return _launch_backward(grad_out, q, k, v, bias, mask, scale, need_bias_grad)


@_window_attention_backward_op.register_fake
def _window_attention_backward_fake(grad_out, q, k, v, bias, mask, scale, need_bias_grad):
    grads = [q.new_empty(q.shape) for _ in range(3)]
    if need_bias_grad and bias is not None:
        grads.append(bias.new_empty(bias.shape))
    return grads


def _setup_context(ctx, inputs, output):
    q, k, v, bias, mask, scale = inputs
    ctx.save_for_backward(q, k, v, bias, mask)
    ctx.scale = scale


def _backward(ctx, grad_out):
    q, k, v, bias, mask = ctx.saved_tensors
    need_bias_grad = ctx.needs_input_grad[3]
    grads = torch.ops.segbench.window_attention_backward(
        grad_out, q, k, v, bias, mask, ctx.scale, need_bias_grad)
    grad_bias = grads[3] if need_bias_grad else None
    return grads[0], grads[1], grads[2], grad_bias, None, None


torch.library.register_autograd("segbench::window_attention", _backward,
                                setup_context=_setup_context)


def _product_multiply_adds(q_shape) -> int:
    """Multiply-adds of one (N x d) @ (d x N) or (N x N) @ (N x d) product over all windows
    and heads, with the real N, not the padded one."""
    windows, heads, n_tokens, head_dim = q_shape
    return windows * heads * n_tokens * n_tokens * head_dim


def window_attention_multiply_adds(q_shape) -> int:
    """Forward multiply-adds, QK^T and PV: 2 * N^2 * d per window and head."""
    return 2 * _product_multiply_adds(q_shape)


# torch.utils.flop_counter counts 2 FLOPs per multiply-add (as it does for SDPA, so the torch
# and Triton paths read the same there); fvcore counts 1, the convention of the papers.
@register_flop_formula(torch.ops.segbench.window_attention)
def _window_attention_flops(q_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * window_attention_multiply_adds(q_shape)


@register_flop_formula(torch.ops.segbench.window_attention_backward)
def _window_attention_backward_flops(grad_out_shape, q_shape, *args, out_shape=None,
                                     **kwargs) -> int:
    """Recomputed QK^T, then dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q: as SDPA's."""
    return 2 * 5 * _product_multiply_adds(q_shape)


def _window_attention_fvcore(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    return window_attention_multiply_adds(get_shape(inputs[0]))


FVCORE_HANDLES["segbench::window_attention"] = _window_attention_fvcore


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q @ k^T * scale + bias + mask) @ v, fused; same meaning as
    `window_attention_reference`. q, k, v: (B*nW, heads, N, d) with N <= 144 and d in
    {16, 32, 64}; bias: (heads, N, N), learnable; mask: (nW, N, N), constant (no gradient),
    window index = batch index mod nW. Rows masked entirely to -inf give NaN, as in PyTorch."""
    check_inputs(q, k, v, bias, mask)
    require(mask is None or not mask.requires_grad,
            "mask gets no gradient: pass a tensor that does not require grad")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return torch.ops.segbench.window_attention(q, k, v, bias, mask, scale)


def window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                               scale: float | None = None) -> torch.Tensor:
    """Swin's eager path: materialised (B*nW, heads, N, N) scores, softmax, then @ v."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        windows = mask.shape[0]
        per_image = scores.view(-1, windows, *scores.shape[1:]) + mask.unsqueeze(1)
        scores = per_image.flatten(0, 1)
    return scores.softmax(dim=-1).to(v.dtype) @ v
