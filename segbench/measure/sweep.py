"""Batch sweep: latency and throughput at each batch size of the run's sweep, in order, until
one does not fit. Before each batch, the memory it will need is extrapolated linearly from the
previous batch's peak; a batch that would not fit in what is left is not tried (on a CPU the
kernel would kill the process instead of failing the allocation)."""

from __future__ import annotations

import torch
from torch import nn

from segbench.measure.context import MeasureContext, MeasureInputs, inference_fn
from segbench.measure.memory import MB, available_device_bytes, is_out_of_memory, peak_growth_mb
from segbench.measure.timing import timed_rounds


def _oom_line(batch: int, reason: str) -> dict:
    return {"batch": batch, "status": "oom", "reason": reason}


def _expected_mb(batch: int, previous: tuple[int, float] | None) -> float | None:
    if previous is None:
        return None
    previous_batch, previous_mb = previous
    return previous_mb * batch / previous_batch


def batch_sweep(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext) -> dict:
    """`sweep`: one line per batch tried; `timing`: the timing lines of those batches."""
    lines, timings, previous = [], [], None
    for batch in ctx.batch_sweep:
        expected, available = _expected_mb(batch, previous), available_device_bytes(ctx.device)
        if expected is not None and available is not None and expected * MB > available[0]:
            lines.append(_oom_line(batch, f"about {expected:.0f} MB needed, "
                                   f"{available[0] / MB:.0f} MB available ({available[1]}); "
                                   "not tried"))
            break
        forward = inference_fn(model, torch.randn(batch, *inputs.image_shape,
                                                  device=ctx.device), ctx)
        try:
            peak_mb = peak_growth_mb(forward, ctx.device)  # the warm-up call, measured
            timing = timed_rounds(forward, ctx.device, warmup=0,
                                  calls=ctx.profile.throughput_repeats)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            lines.append(_oom_line(batch, f"{type(e).__name__}: {str(e)[:120]}"))
            break
        previous = (batch, peak_mb)
        timings.append(timing.line("sweep", batch))
        lines.append({"batch": batch, "status": "ok", "latency_ms": timing.median_ms,
                      "latency_p95_ms": timing.p95_ms, "spread_pct": 100 * timing.spread,
                      "throughput_img_s": batch / (timing.median_ms / 1e3), "peak_mem_mb": peak_mb,
                      "timing_unstable": timings[-1]["unstable"],
                      "reason": timings[-1]["reason"]})
    return {"sweep": lines, "timing": timings} if lines else {}
