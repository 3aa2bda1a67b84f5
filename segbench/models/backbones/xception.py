"""Aligned Xception-65 (Chen et al., ECCV 2018, after Chollet, CVPR 2017), DeepLab v3+'s backbone.

Layout of the reference implementation (tensorflow/models research/deeplab, `xception_65`):
- stem: 3x3/2 conv 32, 3x3 conv 64 (BN + ReLU each);
- entry flow: three blocks of three 3x3 separable convs (128, 256, 728 channels), the last conv
  of each with stride 2, and a strided 1x1 conv + BN on the residual path;
- middle flow: sixteen blocks of three 728-channel separable convs with an identity residual;
- exit flow: a (728, 1024, 1024) block with stride 2 and a 1x1 residual, then separable convs
  of 1536, 1536 and 2048 channels without residual.
Every max-pool of the original Xception is a stride-2 separable conv, and every depthwise conv
is followed by BN + ReLU (`segbench.layers.SeparableConv2d`, which has a Triton path).

Output stride as in the reference: once the running stride reaches `output_stride`, later
strides become 1 and multiply the atrous rate of the units after them (OS16: the exit flow's
second part at rate 2; OS8: the middle flow and exit block at 2, the last convs at 4).

`forward(x)` returns [low-level features, final features]: the input of entry block 2's strided
conv (stride 4, 256 channels: the reference's `entry_flow/block2/.../separable_conv2` that the
v3+ decoder reads) and the exit flow output; `channels` and `strides` describe them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers import ConvBNAct, SeparableConv2d
from segbench.models.backbones._weight_init import init_conv_bn

ENTRY_STRIDES = (2, 2, 2)


class XceptionBlock(nn.Module):
    """Three separable convs, stride on the last; residual: none, identity, or 1x1 conv + BN."""

    def __init__(self, in_channels: int, widths: Sequence[int], stride: int = 1,
                 dilation: int = 1, residual: bool = True):
        super().__init__()
        convs, ch = [], in_channels
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            # Residual blocks add before the ReLU (applied after the sum, as in a ResNet block).
            convs.append(SeparableConv2d(ch, width, 3, stride if last else 1, dilation,
                                         relu_out=not (last and residual)))
            ch = width
        self.convs = nn.ModuleList(convs)
        self.residual = residual
        self.shortcut = None
        if residual and (stride != 1 or in_channels != ch):
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(ch))

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block output and the input of its last (possibly strided) conv."""
        hidden = x
        for conv in self.convs[:-1]:
            hidden = conv(hidden)
        out = self.convs[-1](hidden)
        if self.residual:
            out = F.relu(out + (x if self.shortcut is None else self.shortcut(x)))
        return out, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(x)[0]


class AlignedXception(nn.Module):
    def __init__(self, in_channels: int = 1, output_stride: int = 16,
                 stem: Sequence[int] = (32, 64), entry: Sequence[int] = (128, 256, 728),
                 middle_blocks: int = 16, exit_widths: Sequence[int] = (1024, 1536, 1536, 2048)):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be one of 8, 16, 32, got {output_stride}")
        self.stem = nn.Sequential(ConvBNAct(in_channels, stem[0], 3, stride=2),
                                  ConvBNAct(stem[0], stem[1], 3))
        # (in, widths, stride, residual) of every block after the stem, in order.
        middle = entry[-1]
        plan = [(ch_in, (w, w, w), s, True) for ch_in, w, s in
                zip((stem[1], *entry[:-1]), entry, ENTRY_STRIDES, strict=True)]
        plan += [(middle, (middle,) * 3, 1, True)] * middle_blocks
        plan += [(middle, (middle, exit_widths[0], exit_widths[0]), 2, True),
                 (exit_widths[0], tuple(exit_widths[1:]), 1, False)]

        blocks, current_stride, rate = [], 2, 1
        for ch_in, widths, stride, residual in plan:
            if current_stride == output_stride:
                blocks.append(XceptionBlock(ch_in, widths, 1, rate, residual))
                rate *= stride
            else:
                blocks.append(XceptionBlock(ch_in, widths, stride, 1, residual))
                current_stride *= stride
        self.blocks = nn.ModuleList(blocks)
        self.channels = (entry[1], exit_widths[-1])
        self.strides = (4, output_stride)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        x = self.blocks[0](x)
        x, low_level = self.blocks[1].forward_with_hidden(x)
        for block in self.blocks[2:]:
            x = block(x)
        return [low_level, x]


def xception65(**kw) -> AlignedXception:
    return AlignedXception(**kw)
