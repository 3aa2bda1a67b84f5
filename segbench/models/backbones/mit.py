"""Mix Transformer MiT-B0..B5, SegFormer's encoder (Xie et al., NeurIPS 2021).

Four stages at strides 4/8/16/32. Each starts with an overlapping patch embedding (a 7x7 stride-4
conv, then 3x3 stride-2 convs, each + LayerNorm) and stacks blocks of
- efficient self-attention: queries from all N tokens, keys and values from the map shrunk by a
  strided RxR conv + LayerNorm (R = 8/4/2/1 per stage), so attention costs N * N/R^2;
- Mix-FFN: Linear -> 3x3 depthwise conv -> GELU -> Linear, which supplies the positional
  information (there are no position embeddings, so any input size works);
with pre-norm residuals and stochastic depth, then a LayerNorm per stage.
Attention goes through `F.scaled_dot_product_attention` (counted by segbench.measure.flops).

Parameter names follow the official NVlabs/SegFormer `mix_transformer.py` (`patch_embed1.proj`,
`block1.0.attn.q`, `attn.kv`, `attn.sr`, `attn.norm`, `mlp.dwconv.dwconv`, `norm1`, ...), the
layout of the released ImageNet `mit_b*.pth` files; `hf_to_official` converts a Hugging Face
`segformer.encoder.*` state_dict (separate key/value Linears are concatenated into `kv`).
`forward(x)` returns the four stage maps (N, C_i, H/4, ...), sides rounded up at every stride.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers import DropPath
from segbench.models.backbones._pretrained import (
    LoadReport,
    load_state,
    read_state_dict,
    strip_prefixes,
)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.num_heads
        q = self.q(x).reshape(b, n, self.num_heads, d).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w))
            x = self.norm(reduced.flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int = 4,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(nn.Module):
    """Stage i (1..4) is `patch_embed{i}`, `block{i}`, `norm{i}`, the official attribute names."""

    def __init__(self, in_channels: int = 3, dims: Sequence[int] = (32, 64, 160, 256),
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (1, 2, 5, 8),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), mlp_ratio: int = 4,
                 drop_path: float = 0.1):
        super().__init__()
        self.dims = tuple(dims)
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]  # linear in depth
        stages = zip(dims, depths, num_heads, sr_ratios, strict=True)
        for i, (dim, depth, heads, sr) in enumerate(stages):
            first = sum(depths[:i])
            embed = (OverlapPatchEmbed(in_channels, dim, 7, 4) if i == 0 else
                     OverlapPatchEmbed(dims[i - 1], dim, 3, 2))
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(dim, heads, sr, mlp_ratio, rates[first + j]) for j in range(depth)))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, len(self.dims) + 1):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            outs.append(x)
        return outs

    def load_pretrained(self, path: str | Path, verbose: bool = True) -> LoadReport:
        """Load an official (`mit_b*.pth`, or mmseg-style `backbone.`-prefixed) or a Hugging Face
        (`segformer.encoder.`) MiT state_dict from a local file; an RGB stem is adapted."""
        return load_state(self, official_layout(read_state_dict(path)), verbose=verbose)


def official_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder keys of an official, mmseg-style (`backbone.`) or Hugging Face MiT state_dict in
    the official layout, at the encoder's root; other keys (a decode head) are kept as given."""
    return strip_prefixes(hf_to_official(state), ("module.", "backbone."))


_HF_RENAMES = [  # (Hugging Face pattern, official replacement), applied in order
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"patch_embed\1.norm."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", r"patch_embed\1."),
    (r"^segformer\.encoder\.block\.(\d+)\.", r"block\1."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", r"norm\1."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
]


def _hf_key(key: str) -> str:
    for pattern, replacement in _HF_RENAMES:
        key = re.sub(pattern, replacement, key)
    # HF numbers stages from 0, the official names from 1
    return re.sub(r"^(patch_embed|block|norm)(\d+)\.",
                  lambda m: f"{m.group(1)}{int(m.group(2)) + 1}.", key)


def hf_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face `segformer.encoder.*` keys -> official MiT keys; key + value -> kv.
    Keys outside the encoder (a decode or classification head) are kept unchanged."""
    out = {}
    for key, tensor in state.items():
        if not key.startswith("segformer.encoder."):
            out[key] = tensor
        elif ".attention.self.value." in key:
            continue
        elif ".attention.self.key." in key:
            value = state[key.replace(".key.", ".value.")]
            kv = _hf_key(key.replace(".attention.self.key.", ".attn.kv."))
            out[kv] = torch.cat([tensor, value])
        else:
            out[_hf_key(key)] = tensor
    return out


# Paper Table 6 (appendix): widths, depths; heads (1, 2, 5, 8) and reductions (8, 4, 2, 1) for all.
MIT_CONFIGS = {
    "b0": dict(dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": dict(dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "b2": dict(dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "b3": dict(dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "b4": dict(dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "b5": dict(dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}
