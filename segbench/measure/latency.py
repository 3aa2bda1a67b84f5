"""Inference latency at batch 1: warm-up, many repeats, median and p95."""

from __future__ import annotations

import torch
from torch import nn

from segbench.measure.timing import percentile, time_calls_ms


@torch.no_grad()
def latency(model: nn.Module, image_shape: tuple[int, int, int], device: torch.device,
            warmup: int, repeats: int, amp: bool = False) -> dict:
    model.eval()
    x = torch.randn(1, *image_shape, device=device)

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)

    times = time_calls_ms(forward, device, warmup, repeats)
    return {"latency_ms": percentile(times, 50), "latency_p95_ms": percentile(times, 95)}
