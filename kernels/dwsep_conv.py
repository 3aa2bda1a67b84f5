"""Fused dilated depthwise-separable convolution (DeepLab v3+ ASPP, decoder, Xception).

    out = conv1x1(act(depthwise_conv_KxK(x, dilation) + dw_bias), pw_weight) + pw_bias

Forward: a program owns one image, BLOCK_P positions and BLOCK_CO output channels. It walks
the input channels in chunks: the chunk's depthwise tile [BLOCK_P, chunk] is computed in
registers from K*K shifted loads of x (fp32), biased and activated, and fed straight into
tl.dot with the chunk's pointwise weights, accumulating [BLOCK_P, BLOCK_CO] in fp32. The
(N, C, H, W) intermediate never reaches memory, and the registers a program needs are set
by its tile, not by C. The output-channel blocks of one position block are adjacent in
launch order, so x comes from DRAM about once however COUT is split; wide BLOCK_CO (256,
all of an ASPP branch) leaves a single program per position block.

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
The interpreter computes fp32 dots exactly either way, and takes fp32 operands for bf16
inputs (its bf16 dot is wrong): the one launch that differs from a GPU's.

Resources (sm_90): scripts/sm90_compile_check.sh compiles every launch and autotune config;
its output is results/kernels/sm90_compile.txt.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.nn import functional as F
from torch.utils.flop_counter import register_flop_formula

from kernels._common import (
    FVCORE_HANDLES,
    DotConfig,
    check_device,
    check_float_dtype,
    dot_config,
    empty_output,
    interpreting,
    output_memory_format,
    require,
)

OP_NAME = "segbench::dwsep_conv2d"
BACKWARD_OP_NAME = "segbench::dwsep_conv2d_backward"
SUPPORTED_KERNEL_SIZES = (3, 5)
MID_ACTIVATIONS = (None, "relu")


# ----------------------------------------------------------------------------- tiling
# Resource limits (sm_90: 255 registers a thread, 227 KB shared memory a block) are met by
# construction and checked by compiling every config for sm_90 (scripts/sm90_compile_check.sh):
# - shared memory: each kernel lowers its pipelining depth so that the loads in flight stay
#   within PIPELINE_SMEM_BYTES; the pruner below drops configs whose bound exceeds the
#   device's shared memory (a smaller GPU than Hopper).
# - registers: the tiles below keep every per-thread tile small; the forward narrows its
#   input-channel chunk for 5x5 kernels, and the exact fp32 (FMA) dots take narrow chunks
#   and run their loops without unrolling or pipelining (ptxas spills them otherwise); the
#   exact fp32 forward has its own entry and 4-warp tiles.

# Shared memory that software pipelining may fill with loads kept in flight; the rest of
# Hopper's 227 KB per block is left for the tl.dot operand staging and the epilogue.
PIPELINE_SMEM_BYTES = tl.constexpr(128 * 1024)
# Reduction chunk of the backward's exact fp32 tl.dot, which runs on FMA units with both
# operand tiles in registers.
FMA_DOT_CHUNK = tl.constexpr(16)

# (BLOCK_P, BLOCK_CI, BLOCK_CO, num_warps, stages) that the GPU autotunes over. The forward
# favours wide output-channel blocks, so that x is read from DRAM once for all of COUT
# (the blocks of one position tile run side by side and share x through L2).
FORWARD_TILES = (
    (32, 32, 256, 8, 3),
    (32, 16, 256, 8, 3),
    (64, 32, 128, 8, 3),
    (64, 16, 128, 8, 3),
    (32, 32, 64, 4, 3),
)
# The exact fp32 forward (TF32 off) multiplies on FMA units with both tl.dot operand tiles in
# registers, unpipelined (stage count 1). What fits sm_90's registers without spilling, under
# Triton 3.9 and 3.6: 4 warps, [16, 64] pointwise tiles, at most 64 positions (128 x 64 takes
# 255 registers and spills under 3.6; 8-warp tiles with 128-256 output channels spill too).
EXACT_FORWARD_TILES = (
    (32, 16, 64, 4, 1),
    (64, 16, 64, 4, 1),
)
BACKWARD_MID_TILES = (
    (64, 64, 64, 8, 3),
    (64, 64, 128, 8, 3),
    (32, 128, 64, 8, 3),
    (128, 32, 64, 8, 3),
)
# The interpreter runs one config (autotuning needs a GPU): small blocks, so that the tests'
# channel counts span several blocks. Every block is >= 16: GPU tl.dot needs M, N, K >= 16.
INTERPRETER_TILE = (32, 16, 16, 4, 2)


def _configs(tiles) -> list[triton.Config]:
    """STAGES is the pipelining depth asked for; the kernels lower it where the loads in
    flight would not fit PIPELINE_SMEM_BYTES."""
    return [triton.Config({"BLOCK_P": p, "BLOCK_CI": ci, "BLOCK_CO": co, "STAGES": stages},
                          num_warps=warps, num_stages=stages)
            for p, ci, co, warps, stages in tiles]


def _autotune_configs(gpu_tiles) -> list[triton.Config]:
    return _configs([INTERPRETER_TILE] if interpreting() else gpu_tiles)


def _smem_bound(config, element_bytes: int) -> int:
    """Most shared memory a config can use in either kernel: the pipelining budget plus the
    larger of the tl.dot operand tiles and the fp32 epilogue tile (not live together)."""
    p, ci, co = (config.kwargs[k] for k in ("BLOCK_P", "BLOCK_CI", "BLOCK_CO"))
    operands = (p * ci + ci * co + p * co) * element_bytes
    return PIPELINE_SMEM_BYTES.value + max(operands, p * max(ci, co) * 4)


def _prune(configs, extents: dict[str, int], element_bytes: int,
           smem_limit: int) -> list[triton.Config]:
    """The configs that fit the device's shared memory and whose blocks are no larger than
    the problem needs (extent rounded up to a power of two, at least 16), so that no time
    goes on tuning mostly-masked tiles; failing that, the smallest config that fits."""
    def fits_problem(config):
        return all(config.kwargs[block] <= max(16, triton.next_power_of_2(extent))
                   for block, extent in extents.items())

    def tile_elements(config):
        return config.kwargs["BLOCK_P"] * config.kwargs["BLOCK_CI"] * config.kwargs["BLOCK_CO"]

    launchable = [c for c in configs if _smem_bound(c, element_bytes) <= smem_limit]
    require(bool(launchable), f"no dwsep_conv config fits {smem_limit} B of shared memory")
    return [c for c in launchable if fits_problem(c)] or [min(launchable, key=tile_elements)]


def _early_config_prune(configs, named_args, **kwargs) -> list[triton.Config]:
    """prune_configs_by hook of both autotuned kernels (named_args: the launch's arguments)."""
    x = named_args["x_ptr"]
    properties = triton.runtime.driver.active.utils.get_device_properties(x.device.index)
    extents = {"BLOCK_P": named_args["H"] * named_args["W"], "BLOCK_CI": named_args["C"],
               "BLOCK_CO": named_args["COUT"]}
    return _prune(configs, extents, x.element_size(), properties["max_shared_mem"])


# ----------------------------------------------------------------------------- kernels
# Every 4-d tensor is addressed as base + n*s_n + c*s_c + (h*W + w)*s_hw, which holds for
# NCHW and channels_last (s_h == W * s_w); the launchers copy any other layout. A program
# works on one image n, a block of positions hw = h*W + w and a block of channels: only the
# depthwise taps need (h, w), and along hw the addresses are contiguous in NCHW, which the
# compiler sees and turns into coalesced (and, when aligned, vector) access.



@triton.jit
def _image_block(pid, n_blocks, HW, BLOCK: tl.constexpr):
    """(n, hw offsets, second-axis block) of program pid, the second axis fastest: programs
    that share an image tile run side by side and share its reads through L2."""
    hw_blocks = tl.cdiv(HW, BLOCK)
    hw = (pid // n_blocks) % hw_blocks * BLOCK + tl.arange(0, BLOCK)
    return pid // (n_blocks * hw_blocks), hw, pid % n_blocks


@triton.jit
def _depthwise_tile(src_ptr, w_ptr, b_ptr, n, offs_hw, offs_c, C, H, W, s_n, s_c, s_hw,
                    dilation, KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
                    UNROLL: tl.constexpr):
    """Depthwise KxK conv (stride 1, 'same' dilated padding) of image n at positions offs_hw
    and channels offs_c, in fp32: a [len(offs_hw), len(offs_c)] tile."""
    c_ok = offs_c < C
    hw_ok = offs_hw < H * W
    oh = offs_hw // W
    ow = offs_hw % W
    pad = dilation * (KSIZE // 2)
    # Addresses of the top-left tap; tap (kh, kw) is a uniform shift of them, so the K*K taps
    # share one address tile. Starting at a corner, not the centre, leaves every tap equally
    # (un)aligned: the compiler then gives all taps one register layout.
    corner = src_ptr + n.to(tl.int64) * s_n + ((offs_hw - pad * W - pad) * s_hw)[:, None] \
        + offs_c.to(tl.int64)[None, :] * s_c
    acc = tl.zeros((offs_hw.shape[0], offs_c.shape[0]), dtype=tl.float32)
    for t in tl.range(0, KSIZE * KSIZE, loop_unroll_factor=KSIZE * KSIZE if UNROLL else 1):
        kh = t // KSIZE
        kw = t % KSIZE
        ih = oh + (kh * dilation - pad)
        iw = ow + (kw * dilation - pad)
        ok = hw_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        tap = tl.load(corner + (kh * W + kw) * dilation * s_hw,
                      mask=ok[:, None] & c_ok[None, :], other=0.0)
        weight = tl.load(w_ptr + offs_c * (KSIZE * KSIZE) + t, mask=c_ok, other=0.0)
        acc += tap.to(tl.float32) * weight.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    return acc


@triton.constexpr_function
def _pipeline_depth(stages, stage_bytes, fma_dot):
    """Loop pipelining depth: STAGES, lowered so the loads in flight fit PIPELINE_SMEM_BYTES;
    none for the exact fp32 dot, whose FMA loop is compute-bound and whose operand tiles
    already fill the registers (prefetched loads on top of them spill)."""
    return 1 if fma_dot else min(stages, 1 + PIPELINE_SMEM_BYTES.value // stage_bytes)


@triton.jit
def _plane_offsets(n, offs_hw, offs_c, s_n, s_c, s_hw):
    """Element offsets of image n, positions offs_hw and channels offs_c."""
    return n.to(tl.int64) * s_n + (offs_hw * s_hw)[:, None] + offs_c.to(tl.int64)[None, :] * s_c


@triton.jit
def _dwsep_forward(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, out_ptr,
                   C, H, W, COUT, dilation, sx_n, sx_c, sx_hw, so_n, so_c, so_hw,
                   KSIZE: tl.constexpr, HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr,
                   RELU: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
                   STAGES: tl.constexpr):
    """out[p, co] = sum over input-channel chunks of depthwise(x)[p, chunk] @ pw[chunk, co],
    for a block of positions p and of output channels co."""
    n, offs_hw, pid_co = _image_block(tl.program_id(0), tl.cdiv(COUT, BLOCK_CO), H * W, BLOCK_P)
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    hw_ok = offs_hw < H * W
    co_ok = offs_co < COUT
    # The input-channel chunk: BLOCK_CI, halved for a 5x5 kernel (25 tap tiles in flight
    # instead of 9). An exact fp32 dot runs on FMA units with both operand tiles in
    # registers: its loops run neither unrolled nor pipelined (ptxas spills them).
    CHUNK: tl.constexpr = BLOCK_CI if KSIZE == 3 else max(16, BLOCK_CI // 2)
    FMA_DOT: tl.constexpr = DOT_DTYPE == tl.float32 and DOT_PRECISION == "ieee"
    # Pipelining keeps STAGES - 1 chunks of each load in flight: the K*K tap tiles (when wide
    # enough for cp.async) and the pointwise weight tile. Fewer stages when those would not
    # fit the budget.
    ELEMENT_BYTES: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth // 8
    STAGE_BYTES: tl.constexpr = (KSIZE * KSIZE * BLOCK_P * CHUNK
                                 + CHUNK * BLOCK_CO) * ELEMENT_BYTES
    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for ci_start in tl.range(0, C, CHUNK,
                             num_stages=_pipeline_depth(STAGES, STAGE_BYTES, FMA_DOT)):
        offs_ci = ci_start + tl.arange(0, CHUNK)
        mid = _depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, n, offs_hw, offs_ci, C, H, W,
                              sx_n, sx_c, sx_hw, dilation, KSIZE, HAS_DW_BIAS, RELU,
                              not FMA_DOT)
        # Zero the rows past the image. It also stops the compiler from redoing the depthwise
        # sum in the tl.dot operand layout, where every warp would repeat all the taps.
        mid = tl.where(hw_ok[:, None], mid, 0.0)
        # pw_weight is (COUT, C) row-major; this is its transposed [ci, co] tile.
        pw = tl.load(pw_w_ptr + offs_co[None, :] * C + offs_ci[:, None],
                     mask=(offs_ci < C)[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(mid.to(DOT_DTYPE), pw.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if HAS_PW_BIAS:
        acc += tl.load(pw_b_ptr + offs_co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + _plane_offsets(n, offs_hw, offs_co, so_n, so_c, so_hw),
             acc.to(out_ptr.dtype.element_ty), mask=hw_ok[:, None] & co_ok[None, :])


# Two entries of the same forward, each autotuned over the tiles that suit its tl.dot: one for
# the tensor-core dots (bf16, fp16, tf32), one for the exact fp32 dot.
@triton.autotune(configs=_autotune_configs(FORWARD_TILES), key=["C", "COUT", "KSIZE", "RELU"],
                 prune_configs_by={"early_config_prune": _early_config_prune})
@triton.jit
def _dwsep_forward_kernel(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, out_ptr,
                          C, H, W, COUT, dilation, sx_n, sx_c, sx_hw, so_n, so_c, so_hw,
                          KSIZE: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                          HAS_PW_BIAS: tl.constexpr, RELU: tl.constexpr,
                          DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
                          STAGES: tl.constexpr):
    _dwsep_forward(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, out_ptr,
                   C, H, W, COUT, dilation, sx_n, sx_c, sx_hw, so_n, so_c, so_hw,
                   KSIZE, HAS_DW_BIAS, HAS_PW_BIAS, RELU, DOT_DTYPE, DOT_PRECISION,
                   BLOCK_P, BLOCK_CI, BLOCK_CO, STAGES)


@triton.autotune(configs=_autotune_configs(EXACT_FORWARD_TILES),
                 key=["C", "COUT", "KSIZE", "RELU"],
                 prune_configs_by={"early_config_prune": _early_config_prune})
@triton.jit
def _dwsep_forward_exact_kernel(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, out_ptr,
                                C, H, W, COUT, dilation, sx_n, sx_c, sx_hw, so_n, so_c, so_hw,
                                KSIZE: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                                HAS_PW_BIAS: tl.constexpr, RELU: tl.constexpr,
                                BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr,
                                BLOCK_CO: tl.constexpr, STAGES: tl.constexpr):
    _dwsep_forward(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, out_ptr,
                   C, H, W, COUT, dilation, sx_n, sx_c, sx_hw, so_n, so_c, so_hw,
                   KSIZE, HAS_DW_BIAS, HAS_PW_BIAS, RELU, tl.float32, "ieee",
                   BLOCK_P, BLOCK_CI, BLOCK_CO, STAGES)


@triton.autotune(configs=_autotune_configs(BACKWARD_MID_TILES), key=["C", "COUT", "KSIZE", "RELU"],
                 prune_configs_by={"early_config_prune": _early_config_prune})
@triton.jit
def _dwsep_backward_mid_kernel(x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, grad_out_ptr,
                               mid_ptr, grad_mid_ptr, C, H, W, COUT, dilation,
                               sx_n, sx_c, sx_hw, sg_n, sg_c, sg_hw,
                               KSIZE: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                               RELU: tl.constexpr,
                               DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                               BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr,
                               BLOCK_CO: tl.constexpr, STAGES: tl.constexpr):
    """Recompute mid = act(depthwise(x) + b) and write it with
    grad_mid = (grad_out @ pw_weight) * act'(mid); both (N*H*W, C) row-major."""
    n, offs_hw, pid_ci = _image_block(tl.program_id(0), tl.cdiv(C, BLOCK_CI), H * W, BLOCK_P)
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    hw_ok = offs_hw < H * W
    ci_ok = offs_ci < C
    mid = _depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, n, offs_hw, offs_ci, C, H, W,
                          sx_n, sx_c, sx_hw, dilation, KSIZE, HAS_DW_BIAS, RELU, False)
    # The output-channel chunk (the dot's K): narrower for the exact fp32 (FMA) dot.
    FMA_DOT: tl.constexpr = DOT_DTYPE == tl.float32 and DOT_PRECISION == "ieee"
    CHUNK: tl.constexpr = min(BLOCK_CO, FMA_DOT_CHUNK) if FMA_DOT else BLOCK_CO
    ELEMENT_BYTES: tl.constexpr = grad_out_ptr.dtype.element_ty.primitive_bitwidth // 8
    STAGE_BYTES: tl.constexpr = (BLOCK_P * CHUNK + CHUNK * BLOCK_CI) * ELEMENT_BYTES
    acc = tl.zeros((BLOCK_P, BLOCK_CI), dtype=tl.float32)
    for co_start in tl.range(0, COUT, CHUNK,
                             num_stages=_pipeline_depth(STAGES, STAGE_BYTES, FMA_DOT)):
        offs_co = co_start + tl.arange(0, CHUNK)
        co_ok = offs_co < COUT
        grad = tl.load(grad_out_ptr + _plane_offsets(n, offs_hw, offs_co, sg_n, sg_c, sg_hw),
                       mask=hw_ok[:, None] & co_ok[None, :], other=0.0)
        pw = tl.load(pw_w_ptr + offs_co[:, None] * C + offs_ci[None, :],
                     mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
        acc = tl.dot(grad.to(DOT_DTYPE), pw.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if RELU:
        # PyTorch's ReLU backward passes the gradient where the output is > 0.
        acc = tl.where(mid > 0.0, acc, 0.0)
    rows = (n * H * W + offs_hw).to(tl.int64)[:, None] * C + offs_ci[None, :]
    ok = hw_ok[:, None] & ci_ok[None, :]
    tl.store(mid_ptr + rows, mid.to(mid_ptr.dtype.element_ty), mask=ok)
    tl.store(grad_mid_ptr + rows, acc.to(grad_mid_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _depthwise_kernel(src_ptr, w_ptr, dst_ptr, C, H, W, dilation,
                      ss_n, ss_c, ss_hw, sd_n, sd_c, sd_hw,
                      KSIZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Plain depthwise conv without bias (the input gradient, with the flipped kernel)."""
    n, offs_hw, pid_c = _image_block(tl.program_id(0), tl.cdiv(C, BLOCK_C), H * W, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = _depthwise_tile(src_ptr, w_ptr, w_ptr, n, offs_hw, offs_c, C, H, W,
                          ss_n, ss_c, ss_hw, dilation, KSIZE, False, False, True)
    tl.store(dst_ptr + _plane_offsets(n, offs_hw, offs_c, sd_n, sd_c, sd_hw),
             acc.to(dst_ptr.dtype.element_ty),
             mask=(offs_hw < H * W)[:, None] & (offs_c < C)[None, :])


@triton.jit
def _depthwise_weight_grad_kernel(x_ptr, grad_mid_ptr, partial_ptr, N, C, H, W, dilation,
                                  sx_n, sx_c, sx_hw,
                                  KSIZE: tl.constexpr, BLOCK_P: tl.constexpr,
                                  BLOCK_C: tl.constexpr):
    """partial[split, c, tap] = sum over this split's positions of grad_mid * shifted x.
    Grid: (splits, channel blocks, KSIZE*KSIZE taps); splits stride over the (image,
    position block) pairs."""
    split = tl.program_id(0)
    splits = tl.num_programs(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(2)
    c_ok = offs_c < C
    pad = dilation * (KSIZE // 2)
    dh = (tap // KSIZE) * dilation - pad
    dw = (tap % KSIZE) * dilation - pad
    hw_blocks = tl.cdiv(H * W, BLOCK_P)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for block in range(split, N * hw_blocks, splits):
        n = block // hw_blocks
        offs_hw = block % hw_blocks * BLOCK_P + tl.arange(0, BLOCK_P)
        hw_ok = offs_hw < H * W
        ih = offs_hw // W + dh
        iw = offs_hw % W + dw
        ok = hw_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x = tl.load(x_ptr + _plane_offsets(n, offs_hw + dh * W + dw, offs_c, sx_n, sx_c, sx_hw),
                    mask=ok[:, None] & c_ok[None, :], other=0.0)
        rows = (n * H * W + offs_hw).to(tl.int64)[:, None] * C + offs_c[None, :]
        grad = tl.load(grad_mid_ptr + rows, mask=hw_ok[:, None] & c_ok[None, :], other=0.0)
        acc += x.to(tl.float32) * grad.to(tl.float32)
    total = tl.sum(acc, axis=0)
    tl.store(partial_ptr + (split * C + offs_c) * (KSIZE * KSIZE) + tap, total, mask=c_ok)


# ----------------------------------------------------------------------------- launchers

def _dot_config(dtype: torch.dtype) -> DotConfig:
    """tl.dot operands (see the module docstring): fp32 follows PyTorch's convolution TF32
    switch; bf16 operands are fp32 when launching for the interpreter, whose bf16 dots are
    wrong (the one launch that differs from a GPU's; the compile check launches as a GPU)."""
    return dot_config(dtype, allow_tf32=torch.backends.cudnn.allow_tf32)


def _new_tensor(shape, like: torch.Tensor, memory_format=torch.contiguous_format,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    return empty_output(shape, dtype or like.dtype, like.device, memory_format)


def _bias_or(bias: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A contiguous bias, or any pointer for the kernel to ignore (HAS_*_BIAS=False)."""
    return placeholder if bias is None else bias.contiguous()


# Blocks of the two depthwise kernels that are not autotuned, the same on the GPU and in the
# interpreter (so the compile check sees what a GPU launches).
INPUT_GRAD_BLOCKS = (32, 32, 8)  # (BLOCK_P, BLOCK_C, num_warps)
WEIGHT_GRAD_BLOCKS = (64, 32)  # (BLOCK_P, BLOCK_C)
WEIGHT_GRAD_MAX_SPLITS = 64


def _planar(t: torch.Tensor) -> torch.Tensor:
    """t itself when its positions are addressable as (h*W + w)*s_w (NCHW, channels_last, an
    expanded gradient), else a copy in x's memory format."""
    if t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3):
        return t
    return t.contiguous(memory_format=output_memory_format(t))


def _plane_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(s_n, s_c, s_hw) of a planar tensor."""
    return t.stride(0), t.stride(1), t.stride(3)


def _launch_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation: int,
                    relu: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    cout = pw_weight.shape[0]
    out = _new_tensor((n, cout, h, w), x, output_memory_format(x))
    if out.numel() == 0:
        return out
    x = _planar(x)
    dw_w, pw_w = dw_weight.contiguous(), pw_weight.reshape(cout, c).contiguous()
    dot = _dot_config(x.dtype)

    def grid(meta):
        return (n * triton.cdiv(h * w, meta["BLOCK_P"]) * triton.cdiv(cout, meta["BLOCK_CO"]),)

    exact = dot.dtype == tl.float32 and dot.precision == "ieee"
    kernel, dot_args = ((_dwsep_forward_exact_kernel, {}) if exact else
                        (_dwsep_forward_kernel,
                         {"DOT_DTYPE": dot.dtype, "DOT_PRECISION": dot.precision}))
    kernel[grid](
        x, dw_w, _bias_or(dw_bias, dw_w), pw_w, _bias_or(pw_bias, pw_w), out,
        c, h, w, cout, dilation, *_plane_strides(x), *_plane_strides(out),
        KSIZE=dw_weight.shape[-1], HAS_DW_BIAS=dw_bias is not None,
        HAS_PW_BIAS=pw_bias is not None, RELU=relu, **dot_args,
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
    dot = _dot_config(x.dtype)

    def grid(meta):
        return (n * triton.cdiv(h * w, meta["BLOCK_P"]) * triton.cdiv(c, meta["BLOCK_CI"]),)

    _dwsep_backward_mid_kernel[grid](
        x, dw_w, _bias_or(dw_bias, dw_w), pw_w, grad_out, mid, grad_mid,
        c, h, w, cout, dilation, *_plane_strides(x), *_plane_strides(grad_out),
        KSIZE=dw_weight.shape[-1], HAS_DW_BIAS=dw_bias is not None, RELU=relu,
        DOT_DTYPE=dot.dtype, DOT_PRECISION=dot.precision,
    )
    return mid, grad_mid


def _launch_input_grad(grad_mid, x, dw_weight, dilation: int) -> torch.Tensor:
    n, c, h, w = x.shape
    grad_x = _new_tensor(x.shape, x, output_memory_format(x))
    flipped = dw_weight.flip(-2, -1).contiguous()
    block_p, block_c, warps = INPUT_GRAD_BLOCKS
    grid = (n * triton.cdiv(h * w, block_p) * triton.cdiv(c, block_c),)
    # grad_mid is (N*H*W, C) row-major, i.e. NHWC: plane strides h*w*c, 1, c.
    _depthwise_kernel[grid](
        grad_mid, flipped, grad_x, c, h, w, dilation, h * w * c, 1, c, *_plane_strides(grad_x),
        KSIZE=dw_weight.shape[-1], BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )
    return grad_x


def _launch_depthwise_weight_grad(grad_mid, x, dw_weight, dilation: int) -> torch.Tensor:
    n, c, h, w = x.shape
    ksize = dw_weight.shape[-1]
    block_p, block_c = WEIGHT_GRAD_BLOCKS
    splits = min(n * triton.cdiv(h * w, block_p), WEIGHT_GRAD_MAX_SPLITS)
    partial = _new_tensor((splits, c, ksize * ksize), x, dtype=torch.float32)
    _depthwise_weight_grad_kernel[(splits, triton.cdiv(c, block_c), ksize * ksize)](
        x, grad_mid, partial, n, c, h, w, dilation, *_plane_strides(x),
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
    x, grad_out = _planar(x), _planar(grad_out)
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
    return x.new_empty((n, pw_weight.shape[0], h, w)).contiguous(
        memory_format=output_memory_format(x))


@torch.library.custom_op(BACKWARD_OP_NAME, mutates_args=())
def _dwsep_conv2d_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor,
    dw_bias: torch.Tensor | None, pw_weight: torch.Tensor, dilation: int, relu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_backward(grad_out, x, dw_weight, dw_bias, pw_weight, dilation, relu)


@_dwsep_conv2d_backward_op.register_fake
def _(grad_out, x, dw_weight, dw_bias, pw_weight, dilation, relu):
    c, cout = x.shape[1], pw_weight.shape[0]
    return (x.new_empty(x.shape).contiguous(memory_format=output_memory_format(x)),
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
