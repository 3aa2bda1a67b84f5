"""Checks before anything is trained or written: the prepared data fits in memory, every model
takes the run's image size, and its training fits in memory. Each failure is one line.

Memory estimates: the dataset takes slices x (channels x size² float32 + size² int64 mask)
bytes; the slice count comes from a preparation at 16 px, since it does not depend on the
size. A model's training takes about 4x its parameter bytes (weights, gradients, two AdamW
moments) plus batch x the activation memory of one image, measured by one forward at batch 1
with autograd on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from segbench.config import RunConfig, UsageError
from segbench.data import PreparedDataset
from segbench.measure.memory import (
    MB,
    available_device_bytes,
    available_host_bytes,
    is_out_of_memory,
    peak_growth_mb,
)
from segbench.models import create_model

PROBE_SIZE = 16
GB = 2**30
OPTIMIZER_COPIES = 4  # weights, gradients and AdamW's two moments


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def dataset_bytes(slices: int, channels: int, image_size: int) -> int:
    return slices * image_size * image_size * (channels * 4 + 8)


def check_dataset_memory(cfg: RunConfig, load_at: Callable[[int], PreparedDataset]) -> None:
    """Refuse a dataset that cannot be prepared in the memory left; `load_at(size)` prepares
    the run's data at another image size."""
    size = cfg.profile.image_size
    available = available_host_bytes()
    if cfg.force or available is None or size <= PROBE_SIZE:
        return
    probe = load_at(PROBE_SIZE)
    slices = sum(len(split) for split in probe.splits.values())
    needed = dataset_bytes(slices, probe.in_channels, size)
    if needed > available[0]:
        raise UsageError(f"not enough memory: {cfg.dataset} at {size} px takes about "
                         f"{_gb(needed)} prepared ({slices} slices x {probe.in_channels} "
                         f"channel(s) x {size}² float32 + int64 masks), {_gb(available[0])} "
                         f"available ({available[1]}); use a smaller --image-size, or "
                         "--force to try anyway")


def _probe(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The eval output of x, and the memory (MB) one forward with autograd on adds."""
    model.eval()
    outputs = []
    growth = peak_growth_mb(lambda: outputs.append(model(x)), x.device)
    return outputs[0].detach(), growth


def _build(name: str, data: PreparedDataset, cfg: RunConfig) -> torch.nn.Module:
    """The model as training will build it; weights given with --pretrained that cannot be
    read or fit too few of its tensors are the user's mistake, told in one line."""
    try:
        return create_model(name, data.num_classes, data.in_channels, pretrained=cfg.pretrained)
    except (OSError, ValueError) as e:
        if cfg.pretrained is None:
            raise
        raise UsageError(f"--pretrained {cfg.pretrained} for {name}: {e}") from None


def check_models(specs: list, data: PreparedDataset, cfg: RunConfig) -> None:
    """Every model must take the run's image size and fit its training into memory: fail
    now, in one line, not after hours."""
    size, device = cfg.profile.image_size, torch.device(cfg.device)
    too_large = []
    for spec in specs:
        model = _build(spec.name, data, cfg).to(device)
        x = torch.zeros(1, data.in_channels, size, size, device=device)
        try:
            out, activation_mb = _probe(model, x)
        except Exception as e:  # noqa: BLE001  (any failure of a plain forward is fatal here)
            if is_out_of_memory(e):
                too_large.append(f"{spec.name} (out of memory at batch 1)")
                continue
            raise UsageError(f"image size {size} is too small for {spec.name} "
                             f"({str(e).splitlines()[0]}); use a larger --image-size") from None
        if out.shape[-2:] != (size, size):
            raise UsageError(f"{spec.name} returns {tuple(out.shape[-2:])} "
                             f"for a {size}x{size} input")
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        needed = OPTIMIZER_COPIES * weights + cfg.profile.batch_size * activation_mb * MB
        del model, out
        available = available_device_bytes(device)
        if available is not None and needed > available[0]:
            too_large.append(f"{spec.name} ({_gb(needed)}: {cfg.profile.batch_size} x "
                             f"{activation_mb:.0f} MB activations + "
                             f"{OPTIMIZER_COPIES} x {weights / MB:.0f} MB weights and optimizer "
                             f"state; {_gb(available[0])} available, {available[1]})")
    if too_large and not cfg.force:
        raise UsageError(f"not enough memory to train at {size} px, batch "
                         f"{cfg.profile.batch_size}: {'; '.join(too_large)}; use a smaller "
                         "--image-size, leave them out of --arch, or --force to try anyway")
