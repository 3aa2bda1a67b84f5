"""Parameters and FLOPs with fvcore, in its convention: one fused multiply-add = one FLOP.

fvcore does not know scaled_dot_product_attention nor the project's Triton custom ops; handles
for them are installed here, so that every attention is counted (QK^T and AV: 2·N·S·d MACs per
head). Ops that fvcore still does not count are returned by name, never silently dropped.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape
from torch import nn

FLOP_CONVENTION = "fvcore: 1 fused multiply-add = 1 FLOP"

# Ops with no multiply-adds (comparisons, element-wise maps, data movement): fvcore's
# convention counts them as 0, so they are not reported as uncounted either.
ZERO_MAC_OPS = {
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div",
    "aten::sigmoid", "aten::gelu", "aten::softmax", "aten::log_softmax", "aten::sqrt",
    "aten::rsub", "aten::neg", "aten::exp", "aten::pow", "aten::mean", "aten::sum",
    "aten::max_pool2d", "aten::max_pool2d_with_indices", "aten::max_unpool2d",
    "aten::avg_pool2d", "aten::hardtanh", "aten::hardtanh_", "aten::leaky_relu",
    "aten::silu", "aten::tanh", "aten::pad", "aten::repeat", "aten::clone",
    "aten::scatter", "aten::scatter_", "aten::abs", "aten::masked_fill_", "aten::fill_",
    "aten::lift_fresh", "aten::linspace", "aten::meshgrid", "aten::rsqrt", "aten::norm",
    "aten::feature_dropout", "aten::dropout_", "aten::square", "aten::clamp_min",
    "aten::ones_like",
}  # fmt: skip


def sdpa_flop_jit(inputs, outputs) -> int:
    """scaled_dot_product_attention: q (..., L, E), k (..., S, E), v (..., S, Ev)."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _kernel_handles() -> dict:
    try:
        from kernels._common import FVCORE_HANDLES
    except ImportError:  # triton not installed: no custom ops can appear in a trace either
        return {}
    return dict(FVCORE_HANDLES)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, inputs: torch.Tensor) -> dict:
    """FLOPs of one forward on `inputs` (eval mode), with the ops fvcore could not count."""
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        # 16 taps per output, as fvcore counts bilinear with 4 (ViT position embeddings)
        analysis.set_op_handle("aten::upsample_bicubic2d", elementwise_flop_counter(0, 16))
        for name, handle in _kernel_handles().items():
            analysis.set_op_handle(name, handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = analysis.total()
        uncounted = Counter({op: n for op, n in analysis.unsupported_ops().items()
                             if op not in ZERO_MAC_OPS})
    finally:
        model.train(was_training)
    return {
        "flops": int(total),
        "gflops": total / 1e9,
        "flops_by_operator": dict(analysis.by_operator()),
        "flops_uncounted_ops": ", ".join(f"{op}x{n}" for op, n in sorted(uncounted.items())),
    }
