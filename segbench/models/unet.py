"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

Faithful to the paper's topology: a contracting path of four levels (two 3x3 convs, then 2x2
max-pool, channels doubling from 64), a bottleneck at 1024 channels, an expansive path of four
2x2 transposed convolutions ("up-convolutions") that halve the channels, concatenation with the
encoder feature of the same level, two 3x3 convs, and a 1x1 classifier: 23 conv layers.
Two stated departures, as in most modern re-implementations: convolutions are padded so the
output has the input's size (the paper's valid convs crop), and BatchNorm follows each conv.
Inputs whose side is not a multiple of 16 are handled by padding the up-sampled map to its skip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers import ConvBNAct
from segbench.models._registry import register_model


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvBNAct(in_channels, out_channels),
                         ConvBNAct(out_channels, out_channels))


class Up(nn.Module):
    """2x2 up-convolution halving the channels, concatenation with the skip, two 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, base_channels: int = 64,
                 depth: int = 4):
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.classifier(x)


@register_model("unet", paper_input_size=572, default=True,
                description="U-Net, 4 levels, 64 base channels (paper)")
def unet(num_classes, in_channels=1, **kw):
    return UNet(num_classes, in_channels, base_channels=64, **kw)


@register_model("unet-small", paper_input_size=572, cpu=True,
                description="U-Net, 4 levels, 16 base channels (CPU variant)")
def unet_small(num_classes, in_channels=1, **kw):
    return UNet(num_classes, in_channels, base_channels=16, **kw)
