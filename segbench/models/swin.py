"""Swin Transformer + UPerNet (Liu et al., ICCV 2021; head: Xiao et al., ECCV 2018).

The segmentation setup of the Swin paper (its official mmseg configs): a Swin backbone with
drop path 0.3, a UPerNet head of 512 channels and an auxiliary FCN head on stage 3 (256 channels,
loss weight 0.4).
- UPerNet: a pyramid pooling module on the last stage (adaptive average pools to 1, 2, 3, 6 bins,
  1x1 conv each, up-sampled and concatenated with the stage, 3x3 conv), 1x1 lateral convs on the
  other stages, top-down addition of the up-sampled coarser level, a 3x3 conv per level, all
  levels up-sampled to stride 4 and concatenated, a 3x3 fusion conv, dropout 0.1, 1x1 classifier.
- FCN auxiliary head: 3x3 conv, dropout 0.1, 1x1 classifier.
Every conv of the heads is conv + BatchNorm + ReLU; up-sampling is bilinear, align_corners=False.
The stride-4 logits are up-sampled to the padded input size and cropped to the input, so any
H x W (odd sizes too) maps to itself (`SegmentationModel(..., crop=True)`); in training,
`forward_with_aux(x)` returns (logits, [(0.4, aux)]).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from segbench.layers import PPM, PPM_BINS, ConvBNAct, SegmentationModel, resize
from segbench.models._registry import register_model
from segbench.models.backbones._pretrained import LoadReport
from segbench.models.backbones.swin import SWIN_CONFIGS, SwinTransformer
from segbench.models.fcn import FCNHead

AUX_STAGE = 2  # the auxiliary FCN head reads stage 3


def _init_classifier(conv: nn.Conv2d) -> nn.Conv2d:
    """mmseg's initialisation of a head's 1x1 classifier: weight normal (std 0.01), bias 0."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class UPerHead(nn.Module):
    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 bins: Sequence[int] = PPM_BINS, dropout: float = 0.1):
        super().__init__()
        *lateral_in, top_in = in_channels
        self.in_index = tuple(range(len(in_channels)))  # every stage, the finest first
        self.psp_modules = PPM(top_in, channels, bins)
        self.bottleneck = ConvBNAct(self.psp_modules.out_channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNAct(c, channels, 1) for c in lateral_in)
        self.fpn_convs = nn.ModuleList(ConvBNAct(channels, channels, 3) for _ in lateral_in)
        self.fpn_bottleneck = ConvBNAct(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = _init_classifier(nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        *lower, top = features
        levels = [conv(f) for conv, f in zip(self.lateral_convs, lower, strict=True)]
        levels.append(self.bottleneck(self.psp_modules(top)))
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + resize(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels[:-1], strict=True)]
        outs.append(levels[-1])
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [resize(o, size) for o in outs[1:]], 1))
        return self.conv_seg(self.dropout(fused))


class SwinUPerNet(SegmentationModel):
    def __init__(self, num_classes: int, in_channels: int = 1, size: str = "tiny",
                 head_channels: int = 512, aux_channels: int = 256, **backbone_kw):
        backbone = SwinTransformer(in_channels, **SWIN_CONFIGS[size], **backbone_kw)
        head = UPerHead(backbone.channels, head_channels, num_classes)
        aux = FCNHead(backbone.channels[AUX_STAGE], aux_channels, num_classes, in_index=AUX_STAGE)
        _init_classifier(aux[-1])
        super().__init__(backbone, head, [aux], crop=True)

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """ImageNet Swin weights into the backbone (see `SwinTransformer.load_pretrained`)."""
        return self.backbone.load_pretrained(path)


@register_model("swin", paper_input_size=512, default=True,
                description="Swin-T + UPerNet (512 ch) + aux FCN, window 7, drop path 0.3 (paper)")
def swin(num_classes, in_channels=1, **kw):
    return SwinUPerNet(num_classes, in_channels, size="tiny", **kw)


@register_model("swin-s", paper_input_size=512,
                description="Swin-S + UPerNet (512 ch) + aux FCN, window 7, drop path 0.3 (paper)")
def swin_s(num_classes, in_channels=1, **kw):
    return SwinUPerNet(num_classes, in_channels, size="small", **kw)


@register_model("swin-b", paper_input_size=512,
                description="Swin-B + UPerNet (512 ch) + aux FCN, window 7, drop path 0.3 (paper)")
def swin_b(num_classes, in_channels=1, **kw):
    return SwinUPerNet(num_classes, in_channels, size="base", **kw)


@register_model("swin-small", paper_input_size=512, cpu=True,
                description="Swin 32-dim, depths 2-2-2-2, heads 1-2-4-8, window 7, drop path 0.1 "
                            "+ UPerNet (64 ch) + aux FCN (32 ch) (CPU variant)")
def swin_small(num_classes, in_channels=1, **kw):
    kw = dict(head_channels=64, aux_channels=32, drop_path_rate=0.1) | kw
    return SwinUPerNet(num_classes, in_channels, size="mini", **kw)
