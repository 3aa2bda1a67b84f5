from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resampling of an (N, C, H, W) map to `size` (H', W'), align_corners=False: the
    up-sampling of every segmentation head and shell here (torchvision's and mmseg's)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
