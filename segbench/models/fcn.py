"""FCN (Long, Shelhamer & Darrell, CVPR 2015): FCN-32s/16s/8s on VGG16, FCN on dilated ResNet-50.

VGG16 variants, as the paper's VOC nets: VGG16 convs, fc6 as a 7x7 conv to 4096 and fc7 as a 1x1
conv, each ReLU + dropout 0.5, a 1x1 class-score layer (zero-initialised). FCN-16s adds the score
of pool4 (1x1 conv) to the 2x up-sampled fc7 score; FCN-8s then does the same with pool3. The 2x
up-samplings are transposed convs initialised to bilinear and learned; the final 32x/16x/8x one
is a bilinear transposed conv kept fixed (requires_grad False), as in the reference nets.
Stated departure: the original pads the input by 100 px and crops the score maps with offsets;
here fc6 is padded ("same"), the input is zero-padded on the bottom/right to a multiple of 32,
and the output is cropped back, so output = input size for any size.

`fcn-resnet50` is torchvision's `fcn_resnet50`: dilated ResNet-50 at output stride 8, a head of
3x3 conv 512 + BN + ReLU + dropout 0.1 + 1x1 classifier, bilinear up-sampling to the input size;
`aux_head=True` adds torchvision's auxiliary FCN head on layer3 (loss weight 0.5). It loads a
torchvision ResNet-50 file into the backbone, or a whole torchvision `fcn_resnet50` checkpoint
(`backbone.*`, `classifier.*`, `aux_classifier.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers import ConvBNAct, SegmentationModel
from segbench.models._registry import register_model
from segbench.models.backbones import load_backbone_state, resnet50, vgg16
from segbench.models.backbones._pretrained import load_backbone_or_model

# torchvision vgg16 keys -> FCN keys; fc6/fc7 Linear weights are reshaped into the convs.
VGG_PREFIX_MAP = {"features.": "backbone.features.", "classifier.0.": "fc6.",
                  "classifier.3.": "fc7."}


def bilinear_upsampling(channels: int, factor: int, learned: bool) -> nn.ConvTranspose2d:
    """Per-channel transposed conv (kernel 2f, stride f, pad f/2: exactly f times larger),
    initialised to bilinear interpolation; channel c only feeds channel c at init."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, factor, padding=factor // 2, bias=False)
    center = factor - 0.5
    taps = 1 - torch.abs(torch.arange(2 * factor, dtype=torch.float32) - center) / factor
    with torch.no_grad():
        up.weight.zero_()
        up.weight[range(channels), range(channels)] = taps[:, None] * taps[None, :]
    up.weight.requires_grad_(learned)
    return up


class FCNVGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, output_stride: int = 8,
                 width_mult: float = 1.0, fc_channels: int = 4096, dropout: float = 0.5):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"FCN output_stride must be 8, 16 or 32, got {output_stride}")
        self.backbone = vgg16(in_channels=in_channels, width_mult=width_mult)
        fc = max(1, round(fc_channels * width_mult))
        self.fc6 = nn.Conv2d(self.backbone.channels[4], fc, 7, padding=3)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.dropout = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        # skip fusions, coarse to fine: pool4 (FCN-16s), then pool3 (FCN-8s)
        skip_channels = self.backbone.channels[3:1:-1][: {32: 0, 16: 1, 8: 2}[output_stride]]
        self.score_pools = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in skip_channels)
        self.upscore2 = nn.ModuleList(bilinear_upsampling(num_classes, 2, learned=True)
                                      for _ in skip_channels)
        self.upscore_final = bilinear_upsampling(num_classes, output_stride, learned=False)
        for score in [self.score_fr, *self.score_pools]:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, [0, -w % 32, 0, -h % 32])
        pools = self.backbone(x)
        x = self.dropout(F.relu(self.fc6(pools[4])))
        x = self.dropout(F.relu(self.fc7(x)))
        score = self.score_fr(x)
        skips = pools[3:1:-1][: len(self.score_pools)]
        for feature, score_pool, up in zip(skips, self.score_pools, self.upscore2, strict=True):
            score = up(score) + score_pool(feature)
        return self.upscore_final(score)[..., :h, :w]

    def load_pretrained(self, path):
        """Load a torchvision vgg16 state_dict file: convs, and fc6/fc7 reshaped into convs."""
        return load_backbone_state(self, path, prefix_map=VGG_PREFIX_MAP)


class FCNHead(nn.Sequential):
    """3x3 conv + BN + ReLU + dropout + 1x1 classifier on the feature map `in_index` of the
    backbone's list (torchvision FCNHead; also PSPNet's head and aux head, DeepLab v3's
    torchvision aux head, and Swin-UPerNet's aux head, which re-initialises the classifier)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1):
        super().__init__(ConvBNAct(in_channels, mid_channels), nn.Dropout2d(dropout),
                         nn.Conv2d(mid_channels, num_classes, 1))
        self.in_index = in_index

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(features[self.in_index])


def torchvision_fcn_head_map(source: str, target: str) -> dict[str, str]:
    """Key prefixes of a torchvision FCNHead (conv 0, BN 1, ReLU, dropout, classifier 4) under
    `source` -> those of an FCNHead under `target`."""
    return {f"{source}0.": f"{target}0.0.", f"{source}1.": f"{target}0.1.",
            f"{source}4.": f"{target}2."}


TORCHVISION_AUX_WEIGHT = 0.5  # torchvision's segmentation reference recipe: loss + 0.5 * aux
TORCHVISION_AUX_MAP = torchvision_fcn_head_map("aux_classifier.", "aux_heads.0.")
RESNET_LAYER3 = 2  # index of layer3 in the ResNet feature list, where torchvision's aux reads


def torchvision_aux_head(backbone: nn.Module, num_classes: int) -> FCNHead:
    """torchvision's auxiliary FCN head on a ResNet's layer3."""
    channels = backbone.channels[RESNET_LAYER3]
    return FCNHead(channels, channels // 4, num_classes, in_index=RESNET_LAYER3)


class FCNResNet(SegmentationModel):
    def __init__(self, num_classes: int, in_channels: int = 1, base_width: int = 64,
                 blocks=None, output_stride: int = 8, aux_head: bool = False):
        backbone = resnet50(in_channels=in_channels, output_stride=output_stride,
                            base_width=base_width, blocks=blocks)
        channels = backbone.channels[3]
        head = FCNHead(channels, channels // 4, num_classes)
        aux = [torchvision_aux_head(backbone, num_classes)] if aux_head else []
        super().__init__(backbone, head, aux, aux_weight=TORCHVISION_AUX_WEIGHT)

    def load_pretrained(self, path, verbose: bool = True):
        """A torchvision resnet50 file into the backbone (its fc is unexpected), or a whole
        torchvision fcn_resnet50 checkpoint into the model."""
        head_map = torchvision_fcn_head_map("classifier.", "head.") | TORCHVISION_AUX_MAP
        return load_backbone_or_model(self, path, head_map, verbose=verbose)


@register_model("fcn-8s", paper_input_size=500, default=True,
                description="FCN-8s, VGG16, fc6/fc7 as convs, pool4+pool3 skips (paper)")
def fcn_8s(num_classes, in_channels=1, **kw):
    return FCNVGG(num_classes, in_channels, output_stride=8, **kw)


@register_model("fcn-16s", paper_input_size=500, description="FCN-16s, VGG16, pool4 skip")
def fcn_16s(num_classes, in_channels=1, **kw):
    return FCNVGG(num_classes, in_channels, output_stride=16, **kw)


@register_model("fcn-32s", paper_input_size=500, description="FCN-32s, VGG16, no skip")
def fcn_32s(num_classes, in_channels=1, **kw):
    return FCNVGG(num_classes, in_channels, output_stride=32, **kw)


@register_model("fcn-resnet50", paper_input_size=512,
                description="FCN head on dilated ResNet-50, output stride 8 (torchvision/mmseg)")
def fcn_resnet50(num_classes, in_channels=1, **kw):
    return FCNResNet(num_classes, in_channels, **kw)


@register_model("fcn-small", paper_input_size=500, cpu=True,
                description="FCN-8s topology, VGG16 at 1/16 width, fc 256 (CPU variant)")
def fcn_small(num_classes, in_channels=1, **kw):
    return FCNVGG(num_classes, in_channels, output_stride=8, width_mult=1 / 16, **kw)
