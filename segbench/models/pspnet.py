"""PSPNet (Zhao et al., CVPR 2017).

Dilated ResNet at output stride 8 -> pyramid pooling module (bins 1, 2, 3, 6: adaptive average
pool, 1x1 conv to C/4 + BN + ReLU, bilinear up-sampling back, concatenated with its input) ->
3x3 conv 512 + BN + ReLU + dropout 0.1 -> 1x1 classifier -> bilinear up-sampling to the input.
In training, an auxiliary FCN head on layer3 (3x3 conv 256) adds a loss weighted 0.4
(`forward_with_aux`, see `segbench.layers.SegmentationModel`).
Stated choice: the backbone has torchvision's single 7x7 stem, so torchvision ResNet weights load;
the paper's own ResNet (and mmseg's ResNetV1c) uses a three-conv 3x3 deep stem.
The default is ResNet-50 (the paper's ablation backbone, mmseg's reference config);
`pspnet-resnet101` is the paper's headline backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.layers import PPM, PPM_BINS, SegmentationModel
from segbench.models._registry import register_model
from segbench.models.backbones import ResNet, load_backbone_state
from segbench.models.fcn import RESNET_LAYER3, FCNHead


class PSPHead(nn.Sequential):
    """The PPM (branches of C / len(bins) channels) on the last feature map, then FCNHead's
    3x3 conv + BN + ReLU, dropout and 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 bins: Sequence[int] = PPM_BINS, dropout: float = 0.1):
        ppm = PPM(in_channels, in_channels // len(bins), bins)
        super().__init__(ppm, *FCNHead(ppm.out_channels, channels, num_classes, dropout))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(features[-1])


class PSPNet(SegmentationModel):
    def __init__(self, num_classes: int, in_channels: int = 1, depth: int = 50,
                 base_width: int = 64, blocks: Sequence[int] | None = None,
                 head_channels: int = 512, aux_channels: int = 256, dropout: float = 0.1):
        backbone = ResNet(depth, in_channels, output_stride=8, base_width=base_width,
                          blocks=blocks)
        head = PSPHead(backbone.channels[3], head_channels, num_classes, dropout=dropout)
        aux = FCNHead(backbone.channels[RESNET_LAYER3], aux_channels, num_classes, dropout,
                      in_index=RESNET_LAYER3)
        super().__init__(backbone, head, [aux])

    def load_pretrained(self, path):
        """Load a torchvision resnet50/101 state_dict file into the backbone (fc: unexpected)."""
        return load_backbone_state(self.backbone, path)


@register_model("pspnet", paper_input_size=473, default=True,
                description="PSPNet, dilated ResNet-50 OS8, bins 1/2/3/6, aux 0.4 (paper/mmseg)")
def pspnet(num_classes, in_channels=1, **kw):
    return PSPNet(num_classes, in_channels, depth=50, **kw)


@register_model("pspnet-resnet101", paper_input_size=473,
                description="PSPNet, dilated ResNet-101 OS8 (paper headline backbone)")
def pspnet_resnet101(num_classes, in_channels=1, **kw):
    return PSPNet(num_classes, in_channels, depth=101, **kw)


@register_model("pspnet-small", paper_input_size=473, cpu=True,
                description="PSPNet topology, ResNet-50 layout at width 16, one block per stage")
def pspnet_small(num_classes, in_channels=1, **kw):
    return PSPNet(num_classes, in_channels, base_width=16, blocks=(1, 1, 1, 1),
                  head_channels=64, aux_channels=32, **kw)
