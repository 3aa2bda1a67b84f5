"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017).

Encoder: the 13 convs of VGG16-BN (no fully connected layers); each of its five 2x2/2 max-pools
keeps the argmax indices. Decoder: mirrored, five blocks of 3, 3, 3, 2, 2 convs; each block first
max-unpools its input with the indices (and the output size) of the matching encoder pool, then
3x3 conv + BN + ReLU, the last conv of a block narrowing to the next block's width. The last
decoder conv outputs the class scores directly (no BN/ReLU), as the paper's final classifier.
The pool/unpool pair comes from `segbench.layers` and has a Triton path (`set_kernels`).
Any input size: floor pooling, and each unpool restores the exact pre-pool size.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.layers import ConvBNAct, MaxPoolWithIndices, MaxUnpool
from segbench.models._registry import register_model
from segbench.models.backbones import load_backbone_state, vgg16_bn
from segbench.models.backbones.vgg import VGG16_DEPTHS


class DecoderBlock(nn.Module):
    """Max-unpool, then `depth` 3x3 convs; the last one to `out_channels` (scores if `last`)."""

    def __init__(self, channels: int, out_channels: int, depth: int, last: bool = False):
        super().__init__()
        self.unpool = MaxUnpool(2, 2)
        convs = [ConvBNAct(channels, channels) for _ in range(depth - 1)]
        convs.append(nn.Conv2d(channels, out_channels, 3, padding=1) if last
                     else ConvBNAct(channels, out_channels))
        self.convs = nn.Sequential(*convs)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.convs(self.unpool(x, indices, size))


class SegNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, width_mult: float = 1.0):
        super().__init__()
        self.encoder = vgg16_bn(in_channels=in_channels, width_mult=width_mult, pools=(None,) * 5)
        self.pools = nn.ModuleList(MaxPoolWithIndices(2, 2) for _ in range(5))
        widths = self.encoder.channels
        self.decoder = nn.ModuleList(
            DecoderBlock(widths[i], widths[i - 1] if i else num_classes, VGG16_DEPTHS[i],
                         last=i == 0)
            for i in reversed(range(5))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        memory = []
        for i, pool in enumerate(self.pools):
            x = self.encoder.conv_block(i, x)
            size = x.shape
            x, indices = pool(x)
            memory.append((indices, size))
        for block in self.decoder:
            x = block(x, *memory.pop())
        return x

    def load_pretrained(self, path):
        """Load a torchvision vgg16_bn state_dict file into the encoder (classifier: unexpected)."""
        return load_backbone_state(self.encoder, path)


@register_model("segnet", paper_input_size=360, default=True,
                description="SegNet, VGG16-BN encoder, index-unpooling mirrored decoder (paper)")
def segnet(num_classes, in_channels=1, **kw):
    return SegNet(num_classes, in_channels, **kw)


@register_model("segnet-small", paper_input_size=360, cpu=True,
                description="SegNet topology at 1/8 width (CPU variant)")
def segnet_small(num_classes, in_channels=1, **kw):
    return SegNet(num_classes, in_channels, width_mult=1 / 8, **kw)
