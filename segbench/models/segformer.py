"""SegFormer (Xie et al., NeurIPS 2021): a Mix Transformer encoder and an all-MLP decoder.

The MiT encoder (segbench.models.backbones.mit) gives four maps at 1/4..1/32 of the input. The
decoder maps each to one width with a Linear (a 1x1 conv), up-samples the three coarser ones to
1/4, concatenates them (deepest first, as the reference code), fuses with a 1x1 conv + BN + ReLU,
and classifies after dropout 0.1; the logits are up-sampled bilinearly to the input size.
`load_pretrained` takes a MiT encoder file, or a whole Hugging Face or official SegFormer
checkpoint (encoder and `decode_head.*`).
Decoder width 256 for B0/B1, 768 for B2..B5 (paper Table 1); stochastic depth 0.1 in the encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from segbench.layers import ConvBNAct, SegmentationModel, resize
from segbench.models._registry import register_model
from segbench.models.backbones._pretrained import LoadReport, load_state, read_state_dict
from segbench.models.backbones.mit import MIT_CONFIGS, MixVisionTransformer, official_layout

DECODE_HEAD = "decode_head."
# decode-head key prefixes of the Hugging Face (SegformerDecodeHead: linear_c.i, linear_fuse,
# batch_norm, classifier) and the official (linear_c1..4, ConvModule linear_fuse.conv/.bn,
# linear_pred) checkpoints, and of this model before its head was named `head`, -> SegFormerHead's
# (whose linear_fuse is a ConvBNAct)
DECODE_HEAD_MAP = {
    "decode_head.linear_c.": "head.linear_c.",
    "decode_head.linear_fuse.": "head.linear_fuse.0.",
    "decode_head.batch_norm.": "head.linear_fuse.1.",
    "decode_head.classifier.": "head.linear_pred.",
    **{f"decode_head.linear_c{i + 1}.": f"head.linear_c.{i}." for i in range(4)},
    "decode_head.linear_fuse.conv.": "head.linear_fuse.0.",
    "decode_head.linear_fuse.bn.": "head.linear_fuse.1.",
    "decode_head.linear_pred.": "head.linear_pred.",
    "decode_head.linear_fuse.0.": "head.linear_fuse.0.",
    "decode_head.linear_fuse.1.": "head.linear_fuse.1.",
}

class MLP(nn.Module):
    """Per-token Linear on an (N, C, H, W) map."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SegFormerHead(nn.Module):
    def __init__(self, in_dims, embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(MLP(d, embed_dim) for d in in_dims)
        self.linear_fuse = ConvBNAct(len(in_dims) * embed_dim, embed_dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        maps = [resize(mlp(f), size) if f.shape[-2:] != size else mlp(f)
                for f, mlp in zip(feats, self.linear_c, strict=True)]
        x = self.linear_fuse(torch.cat(maps[::-1], dim=1))
        return self.linear_pred(self.dropout(x))


class SegFormer(SegmentationModel):
    def __init__(self, num_classes: int, in_channels: int = 1, variant: str = "b0",
                 decoder_dim: int = 256, drop_path: float = 0.1):
        backbone = MixVisionTransformer(in_channels, drop_path=drop_path, **MIT_CONFIGS[variant])
        super().__init__(backbone, SegFormerHead(backbone.dims, decoder_dim, num_classes))

    def load_pretrained(self, path: str | Path, verbose: bool = True) -> LoadReport:
        """A MiT encoder file into the backbone (see `MixVisionTransformer.load_pretrained`), or
        a whole SegFormer checkpoint with a `decode_head.*` (Hugging Face or official) into the
        model; a decode head of another class count is reported as shape-mismatched."""
        state = official_layout(read_state_dict(path))
        if not any(k.startswith(DECODE_HEAD) for k in state):
            return load_state(self.backbone, state, verbose=verbose)
        state = {k if k.startswith(DECODE_HEAD) else "backbone." + k: v for k, v in state.items()}
        return load_state(self, state, {"backbone.": "backbone.", **DECODE_HEAD_MAP},
                          verbose=verbose)

def _segformer(variant: str, decoder_dim: int):
    def build(num_classes, in_channels=1, **kw):
        return SegFormer(num_classes, in_channels, variant=variant, decoder_dim=decoder_dim, **kw)

    return build


# B0 is the CPU variant; B2, the mid-size model of the paper's ADE20K/Cityscapes tables, is the
# paper default for GPU runs.
for _variant, _dim in [("b0", 256), ("b1", 256), ("b2", 768), ("b3", 768), ("b4", 768),
                       ("b5", 768)]:
    register_model(f"segformer-{_variant}", paper_input_size=512, default=_variant == "b2",
                   cpu=_variant == "b0",
                   description=f"SegFormer-{_variant.upper()}: MiT-{_variant.upper()}, "
                               f"all-MLP decoder width {_dim}")(_segformer(_variant, _dim))
