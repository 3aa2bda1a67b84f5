"""PSPNet (Zhao et al., CVPR 2017).

Dilated ResNet at output stride 8 -> pyramid pooling module (bins 1, 2, 3, 6: adaptive average
pool, 1x1 conv to C/4 + BN + ReLU, bilinear up-sampling back, concatenated with its input) ->
3x3 conv 512 + BN + ReLU + dropout 0.1 -> 1x1 classifier -> bilinear up-sampling to the input.
In training, an auxiliary FCN head on layer3 (3x3 conv 256) adds a loss weighted 0.4:
`forward_with_aux(x)` returns (logits, [(0.4, aux_logits)]); `forward` never runs it.
Stated choice: the backbone has torchvision's single 7x7 stem, so torchvision ResNet weights load;
the paper's own ResNet (and mmseg's ResNetV1c) uses a three-conv 3x3 deep stem.
The default is ResNet-50 (the paper's ablation backbone, mmseg's reference config);
`pspnet-resnet101` is the paper's headline backbone.
None of these ops has a Triton path, so `kernels` changes nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers import ConvBNAct
from segbench.models._registry import register_model
from segbench.models.backbones import ResNet, load_backbone_state
from segbench.models.fcn import FCNHead

AUX_WEIGHT = 0.4


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    def __init__(self, channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNAct(channels, channels // len(bins), 1))
            for b in bins
        )
        self.out_channels = channels + len(bins) * (channels // len(bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [_upsample(stage(x), x.shape[-2:]) for stage in self.stages], dim=1)


class PSPNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, depth: int = 50,
                 base_width: int = 64, blocks: Sequence[int] | None = None,
                 head_channels: int = 512, aux_channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.backbone = ResNet(depth, in_channels, output_stride=8, base_width=base_width,
                               blocks=blocks)
        self.ppm = PyramidPooling(self.backbone.channels[3])
        self.head = FCNHead(self.ppm.out_channels, head_channels, num_classes, dropout)
        self.aux_head = FCNHead(self.backbone.channels[2], aux_channels, num_classes, dropout)

    def _logits(self, feature: torch.Tensor, size) -> torch.Tensor:
        return _upsample(self.head(self.ppm(feature)), size)

    def forward_with_aux(self, x: torch.Tensor):
        features = self.backbone(x)
        logits = self._logits(features[3], x.shape[-2:])
        if not self.training:
            return logits, []
        return logits, [(AUX_WEIGHT, _upsample(self.aux_head(features[2]), x.shape[-2:]))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.backbone(x)[3], x.shape[-2:])

    def load_pretrained(self, path):
        """Load a torchvision resnet50/101 state_dict file into the backbone (fc: unexpected)."""
        return load_backbone_state(self.backbone, path)


@register_model("pspnet", paper_input_size=473, default=True,
                description="PSPNet, dilated ResNet-50 OS8, bins 1/2/3/6, aux 0.4 (paper/mmseg)")
def pspnet(num_classes, in_channels=1, kernels="torch", **kw):
    return PSPNet(num_classes, in_channels, depth=50, **kw)


@register_model("pspnet-resnet101", paper_input_size=473,
                description="PSPNet, dilated ResNet-101 OS8 (paper headline backbone)")
def pspnet_resnet101(num_classes, in_channels=1, kernels="torch", **kw):
    return PSPNet(num_classes, in_channels, depth=101, **kw)


@register_model("pspnet-small", paper_input_size=473, cpu=True,
                description="PSPNet topology, ResNet-50 layout at width 16, one block per stage")
def pspnet_small(num_classes, in_channels=1, kernels="torch", **kw):
    return PSPNet(num_classes, in_channels, base_width=16, blocks=(1, 1, 1, 1),
                  head_channels=64, aux_channels=32, **kw)
