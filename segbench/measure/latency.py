"""Inference latency at batch 1: warm-up, many repeats, median and p95."""

from __future__ import annotations

import torch
from torch import nn

from segbench.measure.context import MeasureContext, MeasureInputs, inference_fn
from segbench.measure.timing import percentile, time_calls_ms


def latency(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext) -> dict:
    x = torch.randn(1, *inputs.image_shape, device=ctx.device)
    times = time_calls_ms(inference_fn(model, x, ctx), ctx.device, ctx.profile.latency_warmup,
                          ctx.profile.latency_repeats)
    return {"latency_ms": percentile(times, 50), "latency_p95_ms": percentile(times, 95)}
