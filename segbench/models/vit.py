"""SETR (Zheng et al., CVPR 2021): a plain ViT encoder with three decoders.

The image is cut into 16x16 patches and encoded by a ViT (segbench.models.backbones.vit) whose
token maps, 1/16 of the input, feed one of the paper's decoders:
- Naive: 1x1 conv + BN + ReLU, 1x1 classifier, bilinear x16;
- PUP (progressive up-sampling): four (3x3 conv + BN + ReLU, bilinear x2) stages, 1x1 classifier;
- MLA (multi-level feature aggregation): the outputs of four layers (6/12/18/24 of ViT-L) are each
  projected by a 1x1 conv, summed top-down from the deepest, refined by a 3x3 conv, by two more
  3x3 convs to 128 channels and up-sampled x4; the four streams are concatenated and classified.
Each head first applies a LayerNorm to the tokens, as in mmsegmentation. Layer numbers are 1-based
(the paper's Z_l). Training adds auxiliary heads (loss weight 0.4) on intermediate layers, as in
mmsegmentation's configs: Z10/15/20 for Naive and PUP, Z6/12/18/24 for MLA; every auxiliary head
is one (LayerNorm, 3x3 conv + BN + ReLU, x2, 1x1 classifier) stage, a simplification for Naive and
MLA, whose mmseg auxiliaries use 1x1 convs (MLA's on the aggregated maps).
Inputs whose sides are not multiples of 16 are zero-padded at the bottom/right (by the ViT) and
the logits, up-sampled to the padded size, cropped back, so the output always has the input's
size (`SegmentationModel(..., crop=True)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from segbench.layers import AUX_WEIGHT, ConvBNAct, SegmentationModel, resize
from segbench.models._registry import register_model
from segbench.models.backbones._pretrained import LoadReport
from segbench.models.backbones.vit import VIT_SIZES, VisionTransformer


def _norm_map(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of an (N, C, H, W) map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return resize(x, [factor * n for n in x.shape[-2:]])


class NaiveHead(nn.Module):
    def __init__(self, in_dim: int, channels: int, num_classes: int, in_index: int = -1):
        super().__init__()
        self.in_index = in_index
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.conv = ConvBNAct(in_dim, channels, kernel_size=1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.conv(_norm_map(self.norm, feats[self.in_index])))


class PUPHead(nn.Module):
    def __init__(self, in_dim: int, channels: int, num_classes: int, stages: int = 4,
                 in_index: int = -1):
        super().__init__()
        self.in_index = in_index
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.convs = nn.ModuleList(ConvBNAct(in_dim if i == 0 else channels, channels)
                                   for i in range(stages))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = _norm_map(self.norm, feats[self.in_index])
        for conv in self.convs:
            x = _upsample(conv(x), 2)
        return self.classifier(x)


class MLAHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, in_index: Sequence[int],
                 mla_channels: int = 256, head_channels: int = 128):
        super().__init__()
        self.in_index = tuple(in_index)
        levels = len(self.in_index)
        self.norms = nn.ModuleList(nn.LayerNorm(in_dim, eps=1e-6) for _ in range(levels))
        self.proj = nn.ModuleList(ConvBNAct(in_dim, mla_channels, 1) for _ in range(levels))
        self.aggregate = nn.ModuleList(ConvBNAct(mla_channels, mla_channels)
                                       for _ in range(levels))
        self.heads = nn.ModuleList(nn.Sequential(ConvBNAct(mla_channels, head_channels),
                                                 ConvBNAct(head_channels, head_channels))
                                   for _ in range(levels))
        self.classifier = nn.Conv2d(levels * head_channels, num_classes, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        levels = [feats[i] for i in self.in_index]
        projected = [proj(_norm_map(norm, f))
                     for f, norm, proj in zip(levels, self.norms, self.proj, strict=True)]
        running, summed = 0, []
        for x in reversed(projected):  # top-down: the deepest level first
            running = running + x
            summed.insert(0, running)
        streams = [_upsample(head(agg(x)), 4)
                   for x, agg, head in zip(summed, self.aggregate, self.heads, strict=True)]
        return self.classifier(torch.cat(streams, dim=1))


class SETR(SegmentationModel):
    """The ViT returns the maps of `layers` and `aux_layers` (1-based), in layer order; each
    head reads its own (`in_index`). Logits are cropped to the input (crop=True: the ViT pads
    its input to a multiple of the patch size)."""

    def __init__(self, num_classes: int, in_channels: int = 1, size: str = "large",
                 depth: int | None = None, decoder: str = "pup", layers: Sequence[int] = (24,),
                 aux_layers: Sequence[int] = (10, 15, 20), channels: int = 256,
                 img_size: int = 512, drop: float = 0.1, aux_weight: float = AUX_WEIGHT):
        vit_cfg = dict(VIT_SIZES[size], **({} if depth is None else {"depth": depth}))
        backbone_layers = sorted(set(layers) | set(aux_layers))
        backbone = VisionTransformer(in_channels, img_size=img_size, drop=drop,
                                     out_indices=[i - 1 for i in backbone_layers], **vit_cfg)
        dim, index = backbone.embed_dim, backbone_layers.index
        if decoder == "naive":
            head = NaiveHead(dim, channels, num_classes, index(layers[-1]))
        elif decoder == "pup":
            head = PUPHead(dim, channels, num_classes, in_index=index(layers[-1]))
        elif decoder == "mla":
            head = MLAHead(dim, num_classes, [index(i) for i in layers])
        else:
            raise ValueError(f"unknown SETR decoder {decoder!r}; expected naive, pup or mla")
        aux = [PUPHead(dim, channels, num_classes, stages=1, in_index=index(i))
               for i in aux_layers]
        super().__init__(backbone, head, aux, aux_weight, crop=True)

    def load_pretrained(self, path: str | Path) -> LoadReport:
        return self.backbone.load_pretrained(path)


@register_model("vit", paper_input_size=512, default=True,
                description="SETR-PUP on ViT-L/16, 3 auxiliary heads (paper)")
def vit(num_classes, in_channels=1, **kw):
    return SETR(num_classes, in_channels, decoder="pup", **kw)


@register_model("vit-setr-naive", paper_input_size=512,
                description="SETR-Naive on ViT-L/16, 3 auxiliary heads")
def vit_setr_naive(num_classes, in_channels=1, **kw):
    return SETR(num_classes, in_channels, decoder="naive", **kw)


@register_model("vit-setr-mla", paper_input_size=512,
                description="SETR-MLA on ViT-L/16 layers 6/12/18/24, 4 auxiliary heads")
def vit_setr_mla(num_classes, in_channels=1, **kw):
    return SETR(num_classes, in_channels, decoder="mla", layers=(6, 12, 18, 24),
                aux_layers=(6, 12, 18, 24), **kw)


@register_model("vit-b16", paper_input_size=224,
                description="SETR-PUP on ViT-B/16 (ImageNet grid 14x14)")
def vit_b16(num_classes, in_channels=1, **kw):
    return SETR(num_classes, in_channels, size="base", layers=(12,), aux_layers=(5, 8, 10),
                img_size=224, **kw)


@register_model("vit-small", paper_input_size=256, cpu=True,
                description="SETR-PUP on a 6-layer ViT-Tiny (192 dim, 3 heads, patch 16)")
def vit_small(num_classes, in_channels=1, **kw):
    return SETR(num_classes, in_channels, size="tiny", depth=6, layers=(6,), aux_layers=(3,),
                channels=64, img_size=256, **kw)
