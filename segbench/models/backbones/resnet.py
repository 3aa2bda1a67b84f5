"""Dilated ResNet-50/101 (He et al., CVPR 2016) in torchvision's layout, as a feature extractor.

Parameter names follow torchvision (`conv1`, `bn1`, `layer1`..`layer4`, bottleneck `conv1..3`,
`bn1..3`, `downsample.0/1`; the stride sits on the 3x3 conv, "ResNet v1.5"), so a torchvision
state_dict loads with `load_backbone_state`; there is no classifier `fc`. The stem is the single
7x7 conv + 3x3 max-pool of torchvision (not the three-conv "deep stem" of PSPNet's own ResNet).

Output stride, as torchvision's `replace_stride_with_dilation`: OS16 turns layer4's stride into
dilation 2, OS8 also turns layer3's into dilation 2 and layer4's into 4. In a dilated stage the
first block keeps the previous stage's dilation and the later blocks use the new one.
`multi_grid` (DeepLab v3) instead sets layer4's per-block rates to its dilation times the grid.

`forward(x)` returns the four stage outputs [layer1, layer2, layer3, layer4]; `channels` and
`strides` (effective output strides, e.g. (4, 8, 8, 8) at OS8) describe them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.models.backbones._weight_init import init_conv_bn

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
DILATED_STAGES = {32: (), 16: (3,), 8: (2, 3)}  # stage indices whose stride becomes dilation


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stage(in_channels: int, planes: int, stride: int, rates: Sequence[int]) -> nn.Sequential:
    blocks = [Bottleneck(in_channels, planes, stride, rates[0])]
    blocks += [Bottleneck(planes * Bottleneck.expansion, planes, 1, r) for r in rates[1:]]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    def __init__(self, depth: int = 50, in_channels: int = 1, output_stride: int = 32,
                 base_width: int = 64, blocks: Sequence[int] | None = None,
                 multi_grid: Sequence[int] | None = None):
        super().__init__()
        if output_stride not in DILATED_STAGES:
            raise ValueError(f"output_stride must be one of 8, 16, 32, got {output_stride}")
        blocks = tuple(blocks or STAGE_BLOCKS[depth])
        if multi_grid is not None and len(multi_grid) != blocks[3]:
            raise ValueError(f"multi_grid needs one rate per layer4 block ({blocks[3]}), "
                             f"got {tuple(multi_grid)}")
        self.conv1 = nn.Conv2d(in_channels, base_width, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)

        channels, strides = [], []
        in_ch, total_stride, dilation = base_width, 4, 1
        for i, n in enumerate(blocks):
            planes, stride, previous = base_width * 2**i, 1 if i == 0 else 2, dilation
            if i in DILATED_STAGES[output_stride]:
                dilation, stride = dilation * stride, 1
            rates = [previous] + [dilation] * (n - 1)
            if i == 3 and multi_grid is not None:
                rates = [dilation * m for m in multi_grid]
            self.add_module(f"layer{i + 1}", _stage(in_ch, planes, stride, rates))
            in_ch, total_stride = planes * Bottleneck.expansion, total_stride * stride
            channels.append(in_ch)
            strides.append(total_stride)
        self.channels, self.strides = tuple(channels), tuple(strides)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def resnet50(**kw) -> ResNet:
    return ResNet(depth=50, **kw)


def resnet101(**kw) -> ResNet:
    return ResNet(depth=101, **kw)
