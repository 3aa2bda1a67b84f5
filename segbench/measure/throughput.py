"""Inference throughput in images/s at the largest of a few batch sizes that fits, and the
GPU energy per image where NVML exposes an energy counter."""

from __future__ import annotations

import torch
from torch import nn

from segbench.measure.context import MeasureContext, MeasureInputs, inference_fn
from segbench.measure.device import EnergyMeter
from segbench.measure.memory import is_out_of_memory
from segbench.measure.timing import timed_rounds


def throughput(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext) -> dict:
    batches = ctx.profile.throughput_batches
    for batch in sorted(batches, reverse=True):
        try:
            return _at_batch(model, inputs, ctx, batch)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError(f"out of memory at every throughput batch size {batches}")


def _at_batch(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext, batch: int) -> dict:
    forward = inference_fn(model, torch.randn(batch, *inputs.image_shape, device=ctx.device), ctx)
    forward()  # warm-up at this batch size (also the out-of-memory probe)
    meter = EnergyMeter(ctx.device)
    with meter.measuring():
        timing = timed_rounds(forward, ctx.device, warmup=0, calls=ctx.profile.throughput_repeats)
    energy = meter.joules / (batch * timing.calls_made) if meter.joules is not None else None
    return {"throughput_img_s": batch / (timing.median_ms / 1e3), "throughput_batch": batch,
            "throughput_spread_pct": 100 * timing.spread, "energy_j_per_img": energy,
            "timing": [timing.line("throughput", batch)]}
