"""Inference throughput in images/s at the largest of a few batch sizes that fits, and the
GPU energy per image where NVML exposes an energy counter."""

from __future__ import annotations

import torch
from torch import nn

from segbench.measure.device import EnergyMeter
from segbench.measure.memory import is_out_of_memory
from segbench.measure.timing import percentile, time_calls_ms


@torch.no_grad()
def throughput(model: nn.Module, image_shape: tuple[int, int, int], device: torch.device,
               batches: tuple[int, ...], repeats: int, amp: bool = False) -> dict:
    model.eval()
    for batch in sorted(batches, reverse=True):
        try:
            return _at_batch(model, image_shape, device, batch, repeats, amp)
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError(f"out of memory at every throughput batch size {batches}")


def _at_batch(model, image_shape, device, batch, repeats, amp) -> dict:
    x = torch.randn(batch, *image_shape, device=device)

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)

    forward()  # warm-up at this batch size (also the out-of-memory probe)
    meter = EnergyMeter(device)
    with meter.measuring():
        times = time_calls_ms(forward, device, warmup=0, repeats=repeats)
    median_s = percentile(times, 50) / 1e3
    energy = meter.joules / (batch * repeats) if meter.joules is not None else None
    return {"throughput_img_s": batch / median_s, "throughput_batch": batch,
            "energy_j_per_img": energy}
