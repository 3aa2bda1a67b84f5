"""VGG16 and VGG16-BN (Simonyan & Zisserman, ICLR 2015) conv stack in torchvision's layout.

All 13 convs and 5 pools live in one `features` Sequential whose indices are torchvision's
(`features.0.weight`, ... `features.28.weight` for vgg16; conv/BN/ReLU triples for vgg16_bn), so a
torchvision state_dict's `features.*` loads with `load_backbone_state`. The classifier is not
here: a model that wants fc6/fc7 as convolutions (FCN) owns them and maps `classifier.0.*` /
`classifier.3.*` onto its own 7x7 / 1x1 convs (the Linear weights are reshaped, see `_pretrained`).

The network is five blocks, each some 3x3 convs (+BN) + ReLU and then a pool. Per block one can set
- `pools[i]`: `(kernel, stride, padding)` of its max-pool, or None for no pool (an Identity keeps
  the torchvision indices); the default is the 2x2/2 pool of VGG;
- `dilations[i]`: the dilation (and padding) of the block's convs.
`width_mult` scales every block's width (small variants).

Three ways to use it:
- `forward(x)` -> the five block outputs after their pools [pool1..pool5] (FCN takes pool3, pool4,
  pool5; DeepLab v1 takes the last);
- DeepLab-LargeFOV: `pools=((3, 2, 1),) * 3 + ((3, 1, 1),) * 2, dilations=(1, 1, 1, 1, 2)`;
- SegNet: `pools=(None,) * 5`, then `conv_block(i, x)` runs block i's convs only and the caller
  pools with indices in between, keeping each pre-pool map for the unpool's output size.
`channels` and `strides` describe the five block outputs (strides after each block's pool).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.models.backbones._weight_init import init_conv_bn

VGG16_DEPTHS = (2, 2, 3, 3, 3)  # 3x3 convs per block
VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG_POOL = (2, 2, 0)  # kernel, stride, padding


class VGG16(nn.Module):
    def __init__(self, in_channels: int = 1, batch_norm: bool = False, width_mult: float = 1.0,
                 pools: Sequence[tuple[int, int, int] | None] = (VGG_POOL,) * 5,
                 dilations: Sequence[int] = (1,) * 5):
        super().__init__()
        if len(pools) != 5 or len(dilations) != 5:
            raise ValueError("pools and dilations need one entry per VGG block (5)")
        layers: list[nn.Module] = []
        self._bounds = []  # (first layer, pool layer) index of each block within `features`
        channels, strides, stride = [], [], 1
        for depth, width, pool, dilation in zip(VGG16_DEPTHS, VGG16_WIDTHS, pools, dilations,
                                                strict=True):
            out_channels, start = max(1, round(width * width_mult)), len(layers)
            for _ in range(depth):
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=dilation,
                                        dilation=dilation))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            self._bounds.append((start, len(layers)))
            layers.append(nn.Identity() if pool is None else nn.MaxPool2d(*pool))
            stride *= 1 if pool is None else pool[1]
            channels.append(out_channels)
            strides.append(stride)
        self.features = nn.Sequential(*layers)
        self.channels, self.strides = tuple(channels), tuple(strides)
        init_conv_bn(self)

    def conv_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block i's convs (+BN) + ReLUs, without its pool."""
        start, pool = self._bounds[i]
        for layer in self.features[start:pool]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, (_, pool) in enumerate(self._bounds):
            x = self.features[pool](self.conv_block(i, x))
            outputs.append(x)
        return outputs


def vgg16(**kw) -> VGG16:
    return VGG16(batch_norm=False, **kw)


def vgg16_bn(**kw) -> VGG16:
    return VGG16(batch_norm=True, **kw)
