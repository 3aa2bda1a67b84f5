"""SegNet's pooling pair as Triton kernels: max-unpooling from int64 flat indices (the meaning of
`F.max_unpool2d`), and a max-pool that keeps 1-byte LOCAL indices (argmax position inside each
window, row-major) with the unpool that consumes them.

Every unpool is one gather pass: each output element looks at the few pooling windows that
cover it and takes the value of the last one (row-major, as PyTorch's CPU loop) whose index
points at it, or zero. No zero-fill, no scatter, so nothing is ever written out of bounds.
The same kernel, summing instead of keeping the last match, is the max-pool backward.

A gather only finds an index inside its own window (true of every index max_pool2d makes with
the same kernel_size/stride/padding). To never give a wrong answer, the forward counts the
windows it matched; if some were not matched (one host sync), out-of-range indices raise
ValueError and in-range indices outside their window (hand-made ones) fall back to
F.max_unpool2d. `check_indices=False` skips that sync (CUDA graphs, timing) for indices known
to come from the matching pool; unmatched values are then dropped, never written elsewhere.

Why the gather should beat F.max_unpool2d on a GPU (reasoning, not yet measured): for SegNet's
8x512x32x32 -> 64x64 in bf16, F.max_unpool2d zero-fills the output (33.6 MB written), then
scatters one value per thread (8.4 MB of values and 33.6 MB of int64 indices read, the values
written to scattered 2-byte places: partial 32-byte sectors, written again over the zeros):
about 109 MB and two launches. The gather reads values and indices once and writes each output
element once, coalesced: 75.5 MB (1.45x fewer bytes), 46 MB with the 1-byte local indices
(2.4x). A checked call adds one host sync; `check_indices=False` leaves it out.

FLOPs: these ops only move data. Both counters (torch.utils.flop_counter and the fvcore
handles in kernels._common.FVCORE_HANDLES) count 0 FLOPs for them, the fvcore convention for
max-pooling (comparisons are not multiply-adds); they are registered so tables name them.
Op names: segbench::max_unpool2d, segbench::max_pool2d_compact, segbench::max_unpool2d_compact,
and backward ops segbench::max_unpool2d_backward, segbench::max_pool2d_compact_backward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from kernels._common import (
    FVCORE_HANDLES,
    check_device,
    check_float_dtype,
    elementwise_tile,
    empty_output,
    is_channels_last,
    output_memory_format,
    require,
)

# Coordinates are int32 inside the kernels; addresses are int64.
MAX_ELEMENTS = 2**30
LOCAL_INDEX_DTYPE = torch.uint8


# ----------------------------------------------------------------------------- Triton kernels
# Each program covers a [BLOCK_R, BLOCK_I] tile: rows are the outer dimensions, BLOCK_I runs
# along the innermost one in memory (w for NCHW, c for channels_last), so loads and stores
# coalesce and the only integer divisions are per row. Pooling geometry is constexpr, so the
# window arithmetic compiles to shifts for the usual 2x2/2.


@triton.jit
def _tile_coords(C, H, W, rows_total, CHANNELS_LAST: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """(n, c, h, w, mask) of this program's tile, broadcastable to [BLOCK_R, BLOCK_I]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    inner = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)[None, :]
    if CHANNELS_LAST:
        w = rows % W
        rest = rows // W
        h = rest % H
        n = rest // H
        c = inner
        mask = (rows < rows_total) & (inner < C)
    else:
        h = rows % H
        rest = rows // H
        c = rest % C
        n = rest // C
        w = inner
        mask = (rows < rows_total) & (inner < W)
    return n, c, h, w, mask


@triton.jit
def _address(n, c, h, w, s_n, s_c, s_h, s_w):
    return (n.to(tl.int64) * s_n + c.to(tl.int64) * s_c
            + h.to(tl.int64) * s_h + w.to(tl.int64) * s_w)


@triton.jit
def _gather_from_windows_kernel(
    rows_total, src_ptr, idx_ptr, out_ptr, count_ptr, C, OH, OW, IH, IW,
    src_sn, src_sc, src_sh, src_sw,
    idx_sn, idx_sc, idx_sh, idx_sw,
    out_sn, out_sc, out_sh, out_sw,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    CAND_H: tl.constexpr, CAND_W: tl.constexpr, COMPACT: tl.constexpr, SUM: tl.constexpr,
    COUNT: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """out[n, c, oh, ow] = src of the windows (IH x IW grid) whose index points at (oh, ow):
    the last such window (unpool) or the sum over them (pool backward); 0 if none."""
    n, c, oh, ow, in_range = _tile_coords(C, OH, OW, rows_total, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    last_row = (oh + PAD_H) // STRIDE_H
    last_col = (ow + PAD_W) // STRIDE_W
    acc = tl.zeros([BLOCK_R, BLOCK_I], dtype=tl.float32)
    hits = tl.zeros([BLOCK_R, BLOCK_I], dtype=tl.int32)
    for dh in tl.static_range(CAND_H):
        ih = last_row - (CAND_H - 1) + dh
        top = ih * STRIDE_H - PAD_H
        row_ok = (ih >= 0) & (ih < IH) & (oh < top + KERNEL_H)
        for dw in tl.static_range(CAND_W):
            iw = last_col - (CAND_W - 1) + dw
            left = iw * STRIDE_W - PAD_W
            ok = in_range & row_ok & (iw >= 0) & (iw < IW) & (ow < left + KERNEL_W)
            idx = tl.load(idx_ptr + _address(n, c, ih, iw, idx_sn, idx_sc, idx_sh, idx_sw),
                          mask=ok, other=0)
            if COMPACT:
                local = idx.to(tl.int32)
                hit = ok & (top + local // KERNEL_W == oh) & (left + local % KERNEL_W == ow)
            else:
                hit = ok & (idx == oh * OW + ow)
            val = tl.load(src_ptr + _address(n, c, ih, iw, src_sn, src_sc, src_sh, src_sw),
                          mask=hit, other=0.0).to(tl.float32)
            if SUM:
                acc += val
            else:
                acc = tl.where(hit, val, acc)
            hits += hit.to(tl.int32)
    tl.store(out_ptr + _address(n, c, oh, ow, out_sn, out_sc, out_sh, out_sw),
             acc.to(out_ptr.dtype.element_ty), mask=in_range)
    if COUNT:
        tl.atomic_add(count_ptr, tl.sum(hits))  # one reduction: two spilled under 3.6


@triton.jit
def _gather_at_indices_kernel(
    rows_total, src_ptr, idx_ptr, out_ptr, C, IH, IW, OH, OW,
    src_sn, src_sc, src_sh, src_sw,
    idx_sn, idx_sc, idx_sh, idx_sw,
    out_sn, out_sc, out_sh, out_sw,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    COMPACT: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """out[n, c, ih, iw] = src[n, c, position its index points at] (unpool backward); an index
    outside the OH x OW plane reads nothing and gives 0."""
    n, c, ih, iw, in_range = _tile_coords(C, IH, IW, rows_total, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    idx = tl.load(idx_ptr + _address(n, c, ih, iw, idx_sn, idx_sc, idx_sh, idx_sw),
                  mask=in_range, other=0)
    if COMPACT:
        local = idx.to(tl.int32)
        oh = ih * STRIDE_H - PAD_H + local // KERNEL_W
        ow = iw * STRIDE_W - PAD_W + local % KERNEL_W
        valid = in_range & (local < KERNEL_H * KERNEL_W)
        valid = valid & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
    else:
        valid = in_range & (idx >= 0) & (idx < OH * OW)
        flat = tl.where(valid, idx, 0).to(tl.int32)
        oh = flat // OW
        ow = flat % OW
    val = tl.load(src_ptr + _address(n, c, oh, ow, src_sn, src_sc, src_sh, src_sw),
                  mask=valid, other=0.0)
    tl.store(out_ptr + _address(n, c, ih, iw, out_sn, out_sc, out_sh, out_sw), val,
             mask=in_range)


@triton.jit
def _max_pool_kernel(
    rows_total, x_ptr, values_ptr, local_ptr, C, H, W, PH, PW,
    x_sn, x_sc, x_sh, x_sw,
    out_sn, out_sc, out_sh, out_sw,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """Max over each window and its row-major position; PyTorch's rule: a later element wins
    if it is greater or NaN, and the first in-bounds element starts (so -inf ties keep it)."""
    n, c, ph, pw, in_range = _tile_coords(C, PH, PW, rows_total, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    top = ph * STRIDE_H - PAD_H
    left = pw * STRIDE_W - PAD_W
    best = tl.full([BLOCK_R, BLOCK_I], float("-inf"), dtype=tl.float32)
    best_local = tl.maximum(-top, 0) * KERNEL_W + tl.maximum(-left, 0)
    for kh in tl.static_range(KERNEL_H):
        h = top + kh
        row_ok = (h >= 0) & (h < H)
        for kw in tl.static_range(KERNEL_W):
            w = left + kw
            ok = in_range & row_ok & (w >= 0) & (w < W)
            v = tl.load(x_ptr + _address(n, c, h, w, x_sn, x_sc, x_sh, x_sw),
                        mask=ok, other=float("-inf")).to(tl.float32)
            take = ok & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            best_local = tl.where(take, kh * KERNEL_W + kw, best_local)
    out = _address(n, c, ph, pw, out_sn, out_sc, out_sh, out_sw)
    tl.store(values_ptr + out, best.to(values_ptr.dtype.element_ty), mask=in_range)
    tl.store(local_ptr + out, best_local.to(tl.uint8), mask=in_range)


# ----------------------------------------------------------------------------- launch functions


class Window(NamedTuple):
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int

    @property
    def kernel(self) -> list[int]:
        return [self.kernel_h, self.kernel_w]

    @property
    def stride(self) -> list[int]:
        return [self.stride_h, self.stride_w]

    @property
    def padding(self) -> list[int]:
        return [self.pad_h, self.pad_w]

    def constexprs(self) -> dict[str, int]:
        return dict(KERNEL_H=self.kernel_h, KERNEL_W=self.kernel_w, STRIDE_H=self.stride_h,
                    STRIDE_W=self.stride_w, PAD_H=self.pad_h, PAD_W=self.pad_w)


def _empty(shape, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """An output in the layout of `like`."""
    return empty_output(shape, dtype, like.device, output_memory_format(like))


def _launch(kernel, tiled: torch.Tensor, *args, **constexprs) -> None:
    """One program per tile of `tiled` (the tensor whose elements the kernel enumerates);
    every kernel takes the tile row count first."""
    if tiled.numel() == 0:
        return
    n, c, h, w = tiled.shape
    channels_last = is_channels_last(tiled)
    rows, inner = (n * h * w, c) if channels_last else (n * c * h, w)
    tile = elementwise_tile(inner)
    grid = (triton.cdiv(rows, tile.block_rows), triton.cdiv(inner, tile.block_inner))
    kernel[grid](rows, *args, CHANNELS_LAST=channels_last, BLOCK_R=tile.block_rows,
                 BLOCK_I=tile.block_inner, num_warps=tile.num_warps, **constexprs)


def _gather_from_windows(src, idx, output_hw, window: Window, compact: bool, sum_matches: bool,
                         count: torch.Tensor | None) -> torch.Tensor:
    n, c, ih, iw = src.shape
    out = _empty((n, c, *output_hw), src.dtype, like=src)
    _launch(
        _gather_from_windows_kernel, out, src, idx, out, count if count is not None else out,
        c, output_hw[0], output_hw[1], ih, iw, *src.stride(), *idx.stride(), *out.stride(),
        **window.constexprs(),
        CAND_H=math.ceil(window.kernel_h / window.stride_h),
        CAND_W=math.ceil(window.kernel_w / window.stride_w),
        COMPACT=compact, SUM=sum_matches, COUNT=count is not None,
    )
    return out


def _gather_at_indices(src, idx, window: Window, compact: bool) -> torch.Tensor:
    n, c, oh, ow = src.shape
    out = _empty(idx.shape, src.dtype, like=src)
    _launch(
        _gather_at_indices_kernel, out, src, idx, out, c, idx.shape[2], idx.shape[3], oh, ow,
        *src.stride(), *idx.stride(), *out.stride(), **window.constexprs(), COMPACT=compact,
    )
    return out


def _max_pool(x, window: Window, pooled_hw) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h, w = x.shape
    values = _empty((n, c, *pooled_hw), x.dtype, like=x)
    local = _empty((n, c, *pooled_hw), LOCAL_INDEX_DTYPE, like=x)
    _launch(
        _max_pool_kernel, values, x, values, local, c, h, w, pooled_hw[0], pooled_hw[1],
        *x.stride(), *values.stride(), **window.constexprs(),
    )
    return values, local


def _unpool(values, indices, window: Window, output_hw, compact: bool,
            check_indices: bool) -> tuple[torch.Tensor, bool]:
    """The gathered output, and whether every window's index was found (True if unchecked)."""
    count = torch.zeros(1, dtype=torch.int32, device=values.device) if check_indices else None
    out = _gather_from_windows(values, indices, output_hw, window, compact, False, count)
    return out, count is None or int(count.item()) == values.numel()


# ----------------------------------------------------------------------- custom ops + autograd


@torch.library.custom_op("segbench::max_unpool2d", mutates_args=())
def _max_unpool2d_op(values: torch.Tensor, indices: torch.Tensor, kernel_size: list[int],
                     stride: list[int], padding: list[int], output_hw: list[int],
                     check_indices: bool) -> torch.Tensor:
    window = Window(*kernel_size, *stride, *padding)
    out, all_found = _unpool(values, indices, window, output_hw, False, check_indices)
    if all_found:
        return out
    plane = output_hw[0] * output_hw[1]
    require(bool(((indices >= 0) & (indices < plane)).all()),
            f"max_unpool2d: indices must lie in [0, {plane}) for a "
            f"{output_hw[0]}x{output_hw[1]} output, got values from {int(indices.min())} "
            f"to {int(indices.max())}")
    # In range but outside their own window: not from max_pool2d; the scatter is exact for it.
    return F.max_unpool2d(values, indices, kernel_size, stride, padding, output_hw)


@torch.library.custom_op("segbench::max_unpool2d_compact", mutates_args=())
def _max_unpool2d_compact_op(values: torch.Tensor, local_indices: torch.Tensor,
                             kernel_size: list[int], stride: list[int], padding: list[int],
                             output_hw: list[int], check_indices: bool) -> torch.Tensor:
    window = Window(*kernel_size, *stride, *padding)
    out, all_found = _unpool(values, local_indices, window, output_hw, True, check_indices)
    require(all_found,
            "max_unpool2d_compact: local indices must lie in "
            f"[0, {window.kernel_h * window.kernel_w}) "
            f"and point inside the {output_hw[0]}x{output_hw[1]} output")
    return out


@torch.library.custom_op("segbench::max_unpool2d_backward", mutates_args=())
def _max_unpool2d_backward_op(grad_output: torch.Tensor, indices: torch.Tensor,
                              kernel_size: list[int], stride: list[int],
                              padding: list[int]) -> torch.Tensor:
    compact = indices.dtype == LOCAL_INDEX_DTYPE
    window = Window(*kernel_size, *stride, *padding)
    return _gather_at_indices(grad_output, indices, window, compact)


@torch.library.custom_op("segbench::max_pool2d_compact", mutates_args=())
def _max_pool2d_compact_op(
    x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
    ceil_mode: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    window = Window(*kernel_size, *stride, *padding)
    return _max_pool(x, window, pooled_hw(x.shape[-2:], window, ceil_mode))


@torch.library.custom_op("segbench::max_pool2d_compact_backward", mutates_args=())
def _max_pool2d_compact_backward_op(grad_values: torch.Tensor, local_indices: torch.Tensor,
                                    input_hw: list[int], kernel_size: list[int], stride: list[int],
                                    padding: list[int]) -> torch.Tensor:
    window = Window(*kernel_size, *stride, *padding)
    return _gather_from_windows(grad_values, local_indices, input_hw, window, True, True, None)


@_max_unpool2d_op.register_fake
@_max_unpool2d_compact_op.register_fake
def _unpool_fake(values, indices, kernel_size, stride, padding, output_hw, check_indices):
    return torch.empty((*values.shape[:2], *output_hw), dtype=values.dtype, device=values.device,
                       memory_format=output_memory_format(values))


@_max_unpool2d_backward_op.register_fake
def _unpool_backward_fake(grad_output, indices, kernel_size, stride, padding):
    return torch.empty(indices.shape, dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=output_memory_format(grad_output))


@_max_pool2d_compact_op.register_fake
def _pool_fake(x, kernel_size, stride, padding, ceil_mode):
    shape = (*x.shape[:2], *pooled_hw(x.shape[-2:], Window(*kernel_size, *stride, *padding),
                                      ceil_mode))
    fmt = output_memory_format(x)
    return (torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt),
            torch.empty(shape, dtype=LOCAL_INDEX_DTYPE, device=x.device, memory_format=fmt))


@_max_pool2d_compact_backward_op.register_fake
def _pool_backward_fake(grad_values, local_indices, input_hw, kernel_size, stride, padding):
    return torch.empty((*grad_values.shape[:2], *input_hw), dtype=grad_values.dtype,
                       device=grad_values.device, memory_format=output_memory_format(grad_values))


def _unpool_setup_context(ctx, inputs, output):
    _, indices, kernel_size, stride, padding, _, _ = inputs
    ctx.save_for_backward(indices)
    ctx.window = (kernel_size, stride, padding)


def _unpool_backward(ctx, grad_output):
    (indices,) = ctx.saved_tensors
    grad = torch.ops.segbench.max_unpool2d_backward(grad_output, indices, *ctx.window)
    return grad, None, None, None, None, None, None


def _pool_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, _ = inputs
    ctx.save_for_backward(output[1])  # 1-byte local indices: all the backward needs
    ctx.input_hw = list(x.shape[-2:])
    ctx.window = (kernel_size, stride, padding)


def _pool_backward(ctx, grad_values, _grad_local_indices):
    (local_indices,) = ctx.saved_tensors
    grad = torch.ops.segbench.max_pool2d_compact_backward(grad_values, local_indices,
                                                          ctx.input_hw, *ctx.window)
    return grad, None, None, None, None


_max_unpool2d_op.register_autograd(_unpool_backward, setup_context=_unpool_setup_context)
_max_unpool2d_compact_op.register_autograd(_unpool_backward, setup_context=_unpool_setup_context)
_max_pool2d_compact_op.register_autograd(_pool_backward, setup_context=_pool_setup_context)


@register_flop_formula([
    torch.ops.segbench.max_unpool2d, torch.ops.segbench.max_unpool2d_compact,
    torch.ops.segbench.max_unpool2d_backward, torch.ops.segbench.max_pool2d_compact,
    torch.ops.segbench.max_pool2d_compact_backward,
])
def _data_movement_flops(*args, out_shape=None, **kwargs) -> int:
    return 0


def _fvcore_data_movement(inputs, outputs) -> int:
    return 0


for _name in ("segbench::max_unpool2d", "segbench::max_unpool2d_compact",
              "segbench::max_pool2d_compact"):
    FVCORE_HANDLES[_name] = _fvcore_data_movement


# ----------------------------------------------------------------------------- public functions


def _pair(name: str, value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    require(len(pair) == 2 and all(isinstance(v, int) for v in pair),
            f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def make_window(kernel_size, stride=None, padding=0) -> Window:
    kernel = _pair("kernel_size", kernel_size)
    strides = kernel if stride is None else _pair("stride", stride)
    pads = _pair("padding", padding)
    require(min(kernel) > 0 and min(strides) > 0,
            f"kernel_size and stride must be positive, got {kernel} and {strides}")
    require(min(pads) >= 0, f"padding must be non-negative, got {pads}")
    return Window(*kernel, *strides, *pads)


def pooled_hw(input_hw, window: Window, ceil_mode: bool) -> list[int]:
    """max_pool2d's output size (PyTorch's rule, dilation 1)."""
    sizes = []
    for size, k, s, p in zip(input_hw, window.kernel, window.stride, window.padding, strict=True):
        out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (out - 1) * s >= size + p:
            out -= 1  # the last window must start inside the input or its left padding
        sizes.append(out)
    return sizes


def _as_batched(t: torch.Tensor, name: str) -> torch.Tensor:
    require(t.dim() in (3, 4),
            f"{name} must be (N, C, H, W) or (C, H, W), got shape {tuple(t.shape)}")
    require(t.numel() < MAX_ELEMENTS, f"{name} has {t.numel()} elements; at most {MAX_ELEMENTS}")
    return t if t.dim() == 4 else t.unsqueeze(0)


def _check_unpool_inputs(values, indices, index_dtype: torch.dtype) -> None:
    check_device(values, indices)
    check_float_dtype("input", values)
    require(indices.dtype == index_dtype, f"indices must be {index_dtype}, got {indices.dtype}")
    require(indices.shape == values.shape,
            f"indices shape {tuple(indices.shape)} must equal input shape {tuple(values.shape)}")


def _unpool_output_hw(values, window: Window, output_size) -> list[int]:
    """F.max_unpool2d's output size rule, on plain ints (torch.jit.trace hands sizes as
    tensors, which PyTorch's own helper then rejects)."""
    input_hw = [int(size) for size in values.shape[-2:]]
    default = [(size - 1) * s - 2 * p + k for size, k, s, p in
               zip(input_hw, window.kernel, window.stride, window.padding, strict=True)]
    if output_size is None:
        output_hw = default
    else:
        require(len(output_size) in (2, 4),
                f"output_size must have 2 or 4 elements, got {len(output_size)}")
        output_hw = [int(size) for size in output_size][-2:]
        for dim, (size, d, s) in enumerate(zip(output_hw, default, window.stride, strict=True)):
            require(d - s < size < d + s,
                    f'invalid output_size "{output_hw}" (dim {dim} must be between '
                    f"{d - s} and {d + s})")
    require(min(output_hw) >= 0, f"output size must be non-negative, got {output_hw}")
    require(math.prod(values.shape[:-2]) * math.prod(output_hw) < MAX_ELEMENTS,
            f"output of {output_hw} per plane is too large; at most {MAX_ELEMENTS} elements")
    return output_hw


def _unbatch_like(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return out if like.dim() == 4 else out.squeeze(0)


def max_unpool2d(input: torch.Tensor, indices: torch.Tensor, kernel_size, stride=None,
                 padding=0, output_size=None, *, check_indices: bool = True) -> torch.Tensor:
    """F.max_unpool2d with int64 flat indices, in one gather pass (see the module docstring
    for `check_indices`)."""
    window = make_window(kernel_size, stride, padding)
    _check_unpool_inputs(input, indices, torch.int64)
    output_hw = _unpool_output_hw(input, window, output_size)
    out = torch.ops.segbench.max_unpool2d(
        _as_batched(input, "input"), _as_batched(indices, "indices"),
        window.kernel, window.stride, window.padding, output_hw, check_indices)
    return _unbatch_like(out, input)


def max_pool2d_with_indices(x: torch.Tensor, kernel_size=2, stride=None, padding=0,
                            ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """F.max_pool2d values, and uint8 local indices: kh * kernel_w + kw of each window's argmax
    (first maximum in row-major order; NaN counts as the maximum, the last NaN wins)."""
    window = make_window(kernel_size, stride, padding)
    check_device(x)
    check_float_dtype("x", x)
    require(window.kernel_h * window.kernel_w <= 256,
            f"local indices are one byte: kernel area must be at most 256, got {window.kernel}")
    require(2 * window.pad_h <= window.kernel_h and 2 * window.pad_w <= window.kernel_w,
            f"padding {window.padding} must be at most half of kernel_size {window.kernel}")
    batched = _as_batched(x, "x")
    require(min(pooled_hw(x.shape[-2:], window, ceil_mode)) > 0,
            f"input {tuple(x.shape[-2:])} is smaller than the pooling window {window.kernel}")
    values, local = torch.ops.segbench.max_pool2d_compact(
        batched, window.kernel, window.stride, window.padding, ceil_mode)
    return _unbatch_like(values, x), _unbatch_like(local, x)


def max_unpool2d_compact(values: torch.Tensor, local_indices: torch.Tensor, kernel_size=2,
                         stride=None, padding=0, output_size=None, *,
                         check_indices: bool = True) -> torch.Tensor:
    """The unpool of max_pool2d_with_indices: each value goes back to position local_indices
    of its window (rows from i*stride-padding), zeros elsewhere."""
    window = make_window(kernel_size, stride, padding)
    _check_unpool_inputs(values, local_indices, LOCAL_INDEX_DTYPE)
    output_hw = _unpool_output_hw(values, window, output_size)
    out = torch.ops.segbench.max_unpool2d_compact(
        _as_batched(values, "values"), _as_batched(local_indices, "local_indices"),
        window.kernel, window.stride, window.padding, output_hw, check_indices)
    return _unbatch_like(out, values)


# ----------------------------------------------------------------------------- PyTorch references


def max_unpool2d_reference(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    return F.max_unpool2d(input, indices, kernel_size, stride, padding, output_size)


def _window_origins(grid_hw, window: Window, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top row (column vector) and left column (row vector) of each window in the grid."""
    top = torch.arange(grid_hw[0], device=device) * window.stride_h - window.pad_h
    left = torch.arange(grid_hw[1], device=device) * window.stride_w - window.pad_w
    return top[:, None], left[None, :]


def local_to_flat_indices(local_indices, window: Window, output_hw) -> torch.Tensor:
    """int64 indices for F.max_unpool2d from local ones; ValueError for any pointing outside
    its window or the output."""
    top, left = _window_origins(local_indices.shape[-2:], window, local_indices.device)
    local = local_indices.long()
    rows = top + local // window.kernel_w
    cols = left + local % window.kernel_w
    inside = ((local < window.kernel_h * window.kernel_w) & (rows >= 0) & (rows < output_hw[0])
              & (cols >= 0) & (cols < output_hw[1]))
    require(bool(inside.all()), "local indices must point inside their window and the output")
    return rows * output_hw[1] + cols


def max_pool2d_compact_reference(x, kernel_size=2, stride=None, padding=0, ceil_mode=False):
    window = make_window(kernel_size, stride, padding)
    values, flat = F.max_pool2d(x, window.kernel, window.stride, window.padding,
                                ceil_mode=ceil_mode, return_indices=True)
    top, left = _window_origins(values.shape[-2:], window, x.device)
    width = x.shape[-1]
    local = (flat // width - top) * window.kernel_w + (flat % width - left)
    return values, local.to(LOCAL_INDEX_DTYPE)


def max_unpool2d_compact_reference(values, local_indices, kernel_size=2, stride=None, padding=0,
                                   output_size=None):
    window = make_window(kernel_size, stride, padding)
    output_hw = _unpool_output_hw(values, window, output_size)
    flat = local_to_flat_indices(local_indices, window, output_hw)
    return F.max_unpool2d(values, flat, window.kernel, window.stride, window.padding, output_hw)
