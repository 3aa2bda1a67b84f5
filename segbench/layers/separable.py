"""Atrous depthwise-separable convolution, the building block of DeepLab v3+ (ASPP, decoder,
Xception): depthwise KxK (dilated) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SeparableConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, relu_out: bool = True, kernels: str = "torch"):
        super().__init__()
        self.stride, self.dilation, self.kernels, self.relu_out = stride, dilation, kernels, relu_out
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride,
                                   padding=dilation * (kernel_size // 2), dilation=dilation,
                                   groups=in_channels, bias=False)
        self.bn_depthwise = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pointwise = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_depthwise(self.depthwise(x)))
        x = self.bn_pointwise(self.pointwise(x))
        return F.relu(x) if self.relu_out else x
