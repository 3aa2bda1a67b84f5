"""DeepLab v1 (Chen et al., ICLR 2015), v2 (TPAMI 2018), v3 (arXiv 2017) and v3+ (ECCV 2018).

Every version is `DeepLab(backbone, head)`: the backbone returns a list of feature maps, the head
turns them into class scores at the backbone's output stride, and bilinear up-sampling brings
them to the input size (any size, odd too). v1 and v2 can add their CRF post-processing.
- v1 "LargeFOV": VGG16 with pool4/pool5 at stride 1 (3x3, pad 1) and conv5 at dilation 2
  (output stride 8), fc6 as a 3x3 conv at rate 12 with 1024 channels, fc7 1x1 1024, dropout.
- v2: ResNet-101 at output stride 8 and "ASPP-L": four 3x3 convs at rates 6/12/18/24, each
  producing class scores, summed.
- v3: ASPP of a 1x1 conv, three 3x3 atrous convs (6/12/18 at OS16, doubled at OS8) and an
  image-level pooling branch, 256 channels each with BN + ReLU, concatenated and projected by a
  1x1 conv. The 3x3 conv + BN + ReLU before the classifier is torchvision's head (the paper goes
  from the projection to the classifier); it is kept so the parameter count matches torchvision.
- v3+: the v3 encoder with atrous depthwise-separable convs in ASPP, and a decoder: stride-4
  backbone features projected to 48 channels, concatenated with the x4 up-sampled encoder output,
  two 3x3 separable convs of 256, a classifier, x4 up-sampling. Every separable conv is
  `segbench.layers.SeparableConv2d`, so `set_kernels(model, "triton")` swaps in the fused kernel.
Output stride: v2 and v3 take `output_stride=` (8, 16, 32; the atrous rates follow it, as the
papers' rates at OS8 resp. OS16 scaled by 8/OS resp. 16/OS); v3+ passes it to its backbone; v1's
LargeFOV pooling fixes it at 8.
`deeplabv3-os8` is torchvision's `deeplabv3_resnet101`: ResNet-101 at OS8, rates 12/24/36, and
torchvision's auxiliary FCN head on layer3 (loss weight 0.5; `aux_head=True` adds it to any v3).
v2/v3 load a torchvision ResNet file into the backbone, or a whole torchvision segmentation
checkpoint (`backbone.*`, `classifier.*`, `aux_classifier.*`) into the model.

The CRF is a mean-field approximation of the fully connected CRF of Kraehenbuehl & Koltun (2011)
restricted to a local window (see `MeanFieldCRF`); it is off by default and, like the papers'
post-processing, runs only in eval mode (so latency measurements include it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers import ConvBNAct, SegmentationModel, SeparableConv2d, resize
from segbench.models._registry import register_model
from segbench.models.backbones import ResNet, vgg16
from segbench.models.backbones._pretrained import load_backbone_or_model
from segbench.models.backbones.xception import AlignedXception
from segbench.models.fcn import TORCHVISION_AUX_MAP, TORCHVISION_AUX_WEIGHT, torchvision_aux_head

LARGEFOV_POOLS = ((3, 2, 1),) * 3 + ((3, 1, 1),) * 2
LARGEFOV_DILATIONS = (1, 1, 1, 1, 2)
LARGEFOV_OUTPUT_STRIDE = 8  # what LARGEFOV_POOLS give
LARGEFOV_RATE = 12
V2_RATES = (6, 12, 18, 24)  # at output stride 8
V3_RATES_OS16 = (6, 12, 18)  # doubled at output stride 8


# --- CRF post-processing --------------------------------------------------------------------

def _offsets(radius: int) -> list[tuple[int, int]]:
    """Every (dy, dx) of a (2r+1)^2 window but its centre."""
    span = range(-radius, radius + 1)
    return [(dy, dx) for dy in span for dx in span if (dy, dx) != (0, 0)]


def _shifted(x: torch.Tensor, radius: int) -> list[torch.Tensor]:
    """x[..., i + dy, j + dx] at (i, j) for every window offset, zero outside the image."""
    h, w = x.shape[-2:]
    padded = F.pad(x, [radius] * 4)
    return [padded[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]
            for dy, dx in _offsets(radius)]


class MeanFieldCRF(nn.Module):
    """Mean-field inference in a CRF with Potts compatibility and two Gaussian kernels:
    appearance `w_bilateral * exp(-|p_i-p_j|^2 / 2 theta_alpha^2 - |I_i-I_j|^2 / 2 theta_beta^2)`
    and smoothness `w_spatial * exp(-|p_i-p_j|^2 / 2 theta_gamma^2)`.

    The dense CRF's all-pairs filtering is approximated by a (2*radius+1)^2 window, so affinities
    beyond `radius` pixels are dropped. As in the densecrf library DeepLab used, each kernel is
    symmetrically normalised (k_ij / sqrt(d_i d_j), d = row sums), which keeps a message within
    [0, w] whatever the window size. theta_beta is in input units (images here are z-scored; the
    papers' 3-5 were on 0-255 RGB). Returns log Q, so softmax(output) is the CRF marginal.
    """

    def __init__(self, iterations: int = 10, radius: int = 5, w_bilateral: float = 4.0,
                 theta_alpha: float = 50.0, theta_beta: float = 0.5, w_spatial: float = 3.0,
                 theta_gamma: float = 3.0):
        super().__init__()
        self.iterations, self.radius = iterations, radius
        self.w_bilateral, self.theta_alpha, self.theta_beta = w_bilateral, theta_alpha, theta_beta
        self.w_spatial, self.theta_gamma = w_spatial, theta_gamma

    def _normalised(self, kernel: list[torch.Tensor], weight: float) -> list[torch.Tensor]:
        """weight * k_ij / sqrt(d_i d_j), per offset."""
        scale = torch.stack(kernel).sum(0).clamp_min(1e-12).rsqrt()
        return [weight * k * scale * scale_j
                for k, scale_j in zip(kernel, _shifted(scale, self.radius), strict=True)]

    def _pairwise(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Per window offset, the (N, 1, H, W) weight of the neighbour at that offset."""
        inside = _shifted(torch.ones_like(image[:, :1]), self.radius)
        neighbours = _shifted(image, self.radius)
        bilateral, spatial = [], []
        for (dy, dx), valid, neighbour in zip(_offsets(self.radius), inside, neighbours,
                                              strict=True):
            d2 = float(dy * dy + dx * dx)
            contrast = (image - neighbour).square().sum(1, keepdim=True)
            bilateral.append(valid * torch.exp(-d2 / (2 * self.theta_alpha**2)
                                               - contrast / (2 * self.theta_beta**2)))
            spatial.append(valid * math.exp(-d2 / (2 * self.theta_gamma**2)))
        return [b + s for b, s in zip(self._normalised(bilateral, self.w_bilateral),
                                      self._normalised(spatial, self.w_spatial), strict=True)]

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # float32 throughout: under fp16 the kernel's small weights and degrees underflow.
        pairwise = self._pairwise(image.float())
        unary = logits.float().log_softmax(1)
        log_q = unary
        for _ in range(self.iterations):
            q = log_q.exp()
            # Potts: label l at i costs sum_j k_ij (1 - Q_j(l)); the constant part drops out.
            message = sum(k * q_j for k, q_j in zip(pairwise, _shifted(q, self.radius),
                                                    strict=True))
            log_q = (unary + message).log_softmax(1)
        return log_q.to(logits.dtype)


# --- heads ----------------------------------------------------------------------------------

class LargeFOVHead(nn.Sequential):
    """DeepLab v1's fc6 (3x3 at `rate`), fc7 (1x1), each ReLU + dropout, and the classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 1024,
                 rate: int = LARGEFOV_RATE, dropout: float = 0.5):
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate),
            nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(features[-1])


class ASPPSum(nn.Module):
    """DeepLab v2's ASPP: parallel 3x3 atrous convs straight to class scores, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = V2_RATES):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r)
                                      for r in rates)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return sum(branch(features[-1]) for branch in self.branches)


class ImagePooling(nn.Sequential):
    """ASPP's image-level branch: global average pool, 1x1 conv, BN, ReLU, up-sampled back."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvBNAct(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    """DeepLab v3's ASPP (separable=True: v3+'s, with atrous depthwise-separable 3x3 branches).
    Dropout 0.1 after the projection is the reference implementation's keep probability 0.9."""

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = V3_RATES_OS16,
                 separable: bool = False, dropout: float = 0.1):
        super().__init__()
        atrous = [SeparableConv2d(in_channels, channels, 3, dilation=r)
                  if separable else ConvBNAct(in_channels, channels, 3, dilation=r) for r in rates]
        self.branches = nn.ModuleList([ConvBNAct(in_channels, channels, 1), *atrous,
                                       ImagePooling(in_channels, channels)])
        self.project = nn.Sequential(ConvBNAct(channels * len(self.branches), channels, 1),
                                     nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3Head(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, channels: int = 256,
                 rates: Sequence[int] = V3_RATES_OS16):
        super().__init__(ASPP(in_channels, channels, rates), ConvBNAct(channels, channels, 3),
                         nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(features[-1])


class DeepLabV3PlusHead(nn.Module):
    """Separable ASPP on the last features, then the decoder with the stride-4 features."""

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int,
                 channels: int = 256, rates: Sequence[int] = V3_RATES_OS16,
                 low_level_projection: int = 48):
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, separable=True)
        self.low_level = ConvBNAct(low_level_channels, low_level_projection, 1)
        self.fuse = nn.Sequential(
            SeparableConv2d(channels + low_level_projection, channels, 3),
            SeparableConv2d(channels, channels, 3),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low_level = self.low_level(features[0])
        x = resize(self.aspp(features[-1]), low_level.shape[-2:])
        return self.classifier(self.fuse(torch.cat([x, low_level], dim=1)))


# --- model ----------------------------------------------------------------------------------

def torchvision_deeplabv3_head_map(rates: int = len(V3_RATES_OS16)) -> dict[str, str]:
    """Key prefixes of torchvision's DeepLabHead (`classifier.`: ASPP `convs` of conv 0 + BN 1,
    the pooling branch's conv 1 + BN 2, `project` conv 0 + BN 1; then conv 1, BN 2, classifier
    4) -> those of DeepLabV3Head under `head.`."""
    pooling = rates + 1
    aspp = {f"classifier.0.convs.{i}.{layer}.": f"head.0.branches.{i}.{layer}."
            for i in range(pooling) for layer in (0, 1)}
    aspp |= {f"classifier.0.convs.{pooling}.{layer + 1}.": f"head.0.branches.{pooling}.1.{layer}."
             for layer in (0, 1)}
    aspp |= {f"classifier.0.project.{layer}.": f"head.0.project.0.{layer}." for layer in (0, 1)}
    return aspp | {"classifier.1.": "head.1.0.", "classifier.2.": "head.1.1.",
                   "classifier.4.": "head.2."}


class DeepLab(SegmentationModel):
    """backbone -> head -> bilinear up-sampling to the input size (-> CRF, in eval mode)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_heads: Sequence[nn.Module] = (),
                 crf: MeanFieldCRF | None = None,
                 pretrained_prefix_map: dict[str, str] | None = None,
                 checkpoint_head_map: dict[str, str] | None = None):
        super().__init__(backbone, head, aux_heads, aux_weight=TORCHVISION_AUX_WEIGHT)
        self.crf = crf
        self.pretrained_prefix_map = pretrained_prefix_map
        self.checkpoint_head_map = checkpoint_head_map or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.crf is not None and not self.training:
            logits = self.crf(logits, x)
        return logits

    def load_pretrained(self, path: str, verbose: bool = True):
        """Backbone weights from a local state_dict in the backbone's layout (torchvision's for
        VGG16 `features.*` and ResNet; the model's own for Xception), or a whole torchvision
        segmentation checkpoint: `backbone.*`, and for v3 `classifier.*` and `aux_classifier.*`
        (other heads' keys are reported as unexpected)."""
        return load_backbone_or_model(self, path, self.checkpoint_head_map,
                                      self.pretrained_prefix_map, verbose=verbose)


def _rates_at(output_stride: int, rates: Sequence[int], reference_stride: int) -> tuple[int, ...]:
    """Atrous rates given at `reference_stride`, scaled to keep the field of view."""
    return tuple(r * reference_stride // output_stride for r in rates)


def deeplab_v1(num_classes: int, in_channels: int = 1, width_mult: float = 1.0,
               fc_channels: int = 1024, rate: int = LARGEFOV_RATE, crf: bool = False,
               output_stride: int = LARGEFOV_OUTPUT_STRIDE) -> DeepLab:
    if output_stride != LARGEFOV_OUTPUT_STRIDE:
        raise ValueError(f"DeepLab v1 LargeFOV has output stride {LARGEFOV_OUTPUT_STRIDE} only "
                         f"(its VGG16 pooling layout), got output_stride={output_stride}")
    backbone = vgg16(in_channels=in_channels, width_mult=width_mult, pools=LARGEFOV_POOLS,
                     dilations=LARGEFOV_DILATIONS)
    head = LargeFOVHead(backbone.channels[-1], num_classes, fc_channels, rate)
    return DeepLab(backbone, head, crf=MeanFieldCRF() if crf else None,
                   pretrained_prefix_map={"features.": "features."})


def deeplab_v2(num_classes: int, in_channels: int = 1, rates: Sequence[int] = V2_RATES,
               crf: bool = False, output_stride: int = 8, **backbone_kw) -> DeepLab:
    """`rates` are those at output stride 8, the paper's."""
    backbone = ResNet(in_channels=in_channels, output_stride=output_stride, **backbone_kw)
    head = ASPPSum(backbone.channels[-1], num_classes, _rates_at(output_stride, rates, 8))
    return DeepLab(backbone, head, crf=MeanFieldCRF() if crf else None)


def deeplab_v3(num_classes: int, in_channels: int = 1, output_stride: int = 16,
               channels: int = 256, rates_at_os16: Sequence[int] = V3_RATES_OS16,
               aux_head: bool = False, **backbone_kw) -> DeepLab:
    backbone = ResNet(in_channels=in_channels, output_stride=output_stride, **backbone_kw)
    head = DeepLabV3Head(backbone.channels[-1], num_classes, channels,
                         _rates_at(output_stride, rates_at_os16, 16))
    aux = [torchvision_aux_head(backbone, num_classes)] if aux_head else []
    head_map = torchvision_deeplabv3_head_map(len(rates_at_os16)) | TORCHVISION_AUX_MAP
    return DeepLab(backbone, head, aux, checkpoint_head_map=head_map)


def deeplab_v3plus(num_classes: int, backbone: nn.Module, channels: int = 256,
                   rates_at_os16: Sequence[int] = V3_RATES_OS16) -> DeepLab:
    head = DeepLabV3PlusHead(backbone.channels[-1], backbone.channels[0], num_classes, channels,
                             _rates_at(backbone.strides[-1], rates_at_os16, 16))
    return DeepLab(backbone, head)


# --- registered variants --------------------------------------------------------------------
# The DeepLab papers evaluate PASCAL VOC images padded to 513x513 (v1/v2 train on 306/321 crops
# but test at 513), so every paper default reports its size at 513.
# Small variants see 64-128 px inputs instead of 513, so their feature maps are 4-8x smaller:
# their atrous rates are the paper's divided by 6, to keep the field of view inside the image.

SMALL_RATE_DIVISOR = 6


def _small(rates: Sequence[int]) -> tuple[int, ...]:
    return tuple(r // SMALL_RATE_DIVISOR for r in rates)


@register_model("deeplabv1", paper_input_size=513, default=True,
                description="DeepLab v1 LargeFOV: VGG16 OS8, fc6 3x3 rate 12 x1024 (paper)")
def deeplabv1(num_classes, in_channels=1, **kw):
    return deeplab_v1(num_classes, in_channels, **kw)


@register_model("deeplabv1-small", paper_input_size=513, cpu=True,
                description="DeepLab v1 LargeFOV, VGG16 at 1/8 width, fc 128, rate 2 (CPU variant)")
def deeplabv1_small(num_classes, in_channels=1, **kw):
    return deeplab_v1(num_classes, in_channels, width_mult=1 / 8, fc_channels=128,
                      rate=LARGEFOV_RATE // SMALL_RATE_DIVISOR, **kw)


@register_model("deeplabv2", paper_input_size=513, default=True,
                description="DeepLab v2: ResNet-101 OS8, ASPP-L rates 6/12/18/24 (paper)")
def deeplabv2(num_classes, in_channels=1, **kw):
    return deeplab_v2(num_classes, in_channels, depth=101, **kw)


@register_model("deeplabv2-small", paper_input_size=513, cpu=True,
                description="DeepLab v2: ResNet width 16, 1 block/stage, OS8, rates 1/2/3/4 (CPU)")
def deeplabv2_small(num_classes, in_channels=1, **kw):
    return deeplab_v2(num_classes, in_channels, rates=_small(V2_RATES), depth=50,
                      base_width=16, blocks=(1, 1, 1, 1), **kw)


# ResNet-101 at OS16: the paper's main configuration (its ablations train and report at OS16;
# OS8 is an evaluation-time option that costs ~4x the ASPP and layer4 FLOPs for ~1 point).
@register_model("deeplabv3", paper_input_size=513, default=True,
                description="DeepLab v3: ResNet-101 OS16, ASPP 6/12/18 + image pooling (paper)")
def deeplabv3(num_classes, in_channels=1, output_stride=16, **kw):
    return deeplab_v3(num_classes, in_channels, output_stride, depth=101, **kw)


@register_model("deeplabv3-resnet50", paper_input_size=513,
                description="DeepLab v3: ResNet-50 OS16")
def deeplabv3_resnet50(num_classes, in_channels=1, output_stride=16, **kw):
    return deeplab_v3(num_classes, in_channels, output_stride, depth=50, **kw)


@register_model("deeplabv3-os8", paper_input_size=513,
                description="DeepLab v3: ResNet-101 OS8, ASPP 12/24/36, aux FCN head on layer3 "
                            "(torchvision deeplabv3_resnet101)")
def deeplabv3_os8(num_classes, in_channels=1, output_stride=8, aux_head=True, **kw):
    return deeplab_v3(num_classes, in_channels, output_stride, depth=101, aux_head=aux_head,
                      **kw)


@register_model("deeplabv3-small", paper_input_size=513, cpu=True,
                description="DeepLab v3: ResNet width 16, 1 block/stage, OS16, ASPP 64 (CPU)")
def deeplabv3_small(num_classes, in_channels=1, output_stride=16, **kw):
    return deeplab_v3(num_classes, in_channels, output_stride, channels=64,
                      rates_at_os16=_small(V3_RATES_OS16), depth=50, base_width=16,
                      blocks=(1, 1, 1, 1), **kw)


@register_model("deeplabv3plus", paper_input_size=513, default=True,
                description="DeepLab v3+: Aligned Xception-65 OS16, sep. ASPP + decoder (paper)")
def deeplabv3plus(num_classes, in_channels=1, output_stride=16, **kw):
    return deeplab_v3plus(num_classes, AlignedXception(in_channels, output_stride), **kw)


@register_model("deeplabv3plus-resnet101", paper_input_size=513,
                description="DeepLab v3+: ResNet-101 OS16, separable ASPP + decoder")
def deeplabv3plus_resnet101(num_classes, in_channels=1, output_stride=16, **kw):
    return deeplab_v3plus(num_classes, ResNet(101, in_channels, output_stride), **kw)


@register_model("deeplabv3plus-small", paper_input_size=513, cpu=True,
                description="DeepLab v3+: small Aligned Xception (2 middle blocks), OS16 (CPU)")
def deeplabv3plus_small(num_classes, in_channels=1, output_stride=16, **kw):
    backbone = AlignedXception(in_channels, output_stride, stem=(8, 16), entry=(16, 32, 64),
                               middle_blocks=2, exit_widths=(96, 128, 128, 160))
    return deeplab_v3plus(num_classes, backbone, channels=64,
                          rates_at_os16=_small(V3_RATES_OS16), **kw)
