"""What every measurement is given: `(model, inputs, ctx) -> dict`.

`MeasureContext` holds the conditions of one row (device, deployment mode, kernels backend,
threads, the profile's repeat counts, the batch sweep); `MeasureInputs` the data the
measurements run on. `inference_fn` is the one forward that accuracy, latency, throughput and
memory all run; `model` is the row's deployed model (segbench.measure.modes).

A measurement returns the row's columns; a value that is a list of dicts is a table of the row
instead (e.g. `timing`, `sweep`), written as one CSV per name over all rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from segbench.config import Mode, Profile
from segbench.data.base import Split
from segbench.recipes import Recipe

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class MeasureContext:
    device: torch.device
    mode: Mode  # resolved: its dtype is concrete
    profile: Profile
    kernels: str = "torch"
    threads: int = 2
    batch_sweep: tuple[int, ...] = ()

    @classmethod
    def build(cls, device: torch.device | str, mode: Mode, profile: Profile,
              kernels: str = "torch", threads: int = 2,
              batch_sweep: tuple[int, ...] = ()) -> MeasureContext:
        device = torch.device(device)
        return cls(device, mode.resolved(device.type), profile, kernels, threads, batch_sweep)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.mode.dtype]

    @property
    def dtype_description(self) -> str:
        if self.autocast_dtype is None:
            return "fp32"
        return f"{self.mode.dtype} autocast (weights fp32)"

    def autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        # a CUDA graph must not capture autocast's cache of cast weights
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None,
                              cache_enabled=not self.mode.cuda_graphs)


@dataclass(frozen=True)
class MeasureInputs:
    image_shape: tuple[int, int, int]  # (C, H, W) of one image
    test: Split  # what accuracy is scored on
    train_images: torch.Tensor  # one training batch at the profile's batch size
    train_masks: torch.Tensor
    num_classes: int
    recipe: Recipe | None = None  # the unit's training recipe (None: the shared one)


def inference_fn(model: nn.Module, x: torch.Tensor,
                 ctx: MeasureContext) -> Callable[[], torch.Tensor]:
    """`fn()` runs one eval forward of `x` without grad, under the row's autocast."""
    model.eval()

    def forward() -> torch.Tensor:
        with torch.no_grad(), ctx.autocast():
            return model(x)

    return forward
