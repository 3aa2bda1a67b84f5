"""Training throughput: images/s over timed training steps (forward, loss, backward, AdamW
update) at the profile's batch, after warm-up steps, in timed rounds like every timing."""

from __future__ import annotations

from torch import nn

from segbench.measure.context import MeasureContext, MeasureInputs
from segbench.measure.modes import train_step_fn
from segbench.measure.timing import timed_rounds


def training_speed(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext) -> dict:
    batch = inputs.train_images.shape[0]
    timing = timed_rounds(train_step_fn(model, inputs, ctx), ctx.device,
                          max(ctx.profile.latency_warmup, 1), ctx.profile.throughput_repeats)
    return {"train_step_ms": timing.median_ms, "train_img_s": batch / (timing.median_ms / 1e3),
            "train_step_spread_pct": 100 * timing.spread, "timing": [timing.line("train", batch)]}
