"""Inference latency at batch 1: warm-up, then timed rounds (segbench.measure.timing)."""

from __future__ import annotations

import torch
from torch import nn

from segbench.measure.context import MeasureContext, MeasureInputs, inference_fn
from segbench.measure.timing import timed_rounds


def latency(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext) -> dict:
    x = torch.randn(1, *inputs.image_shape, device=ctx.device)
    timing = timed_rounds(inference_fn(model, x, ctx), ctx.device, ctx.profile.latency_warmup,
                          ctx.profile.latency_repeats)
    return {"latency_ms": timing.median_ms, "latency_p95_ms": timing.p95_ms,
            "latency_spread_pct": 100 * timing.spread, "timing": [timing.line("latency", 1)]}
