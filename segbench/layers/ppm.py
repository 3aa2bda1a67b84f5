from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.layers.conv import ConvBNAct
from segbench.layers.resize import resize

PPM_BINS = (1, 2, 3, 6)


class PPM(nn.ModuleList):
    """Pyramid pooling module (PSPNet, Zhao et al. 2017; also UPerNet's top level): one branch
    per bin (adaptive average pool to b x b, 1x1 conv + BN + ReLU to `channels`), each up-sampled
    back to the input's size; returns the input and the branches concatenated, in that order
    (`out_channels` channels)."""

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int] = PPM_BINS):
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNAct(in_channels, channels, 1))
                         for b in bins)
        self.out_channels = in_channels + len(bins) * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(resize(branch(x), x.shape[-2:]) for branch in self)], dim=1)
