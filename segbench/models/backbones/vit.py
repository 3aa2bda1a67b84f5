"""Vision Transformer (Dosovitskiy et al., ICLR 2021) as a dense feature extractor.

A 16x16 patch-embedding conv, an optional class token, learned position embeddings, and pre-norm
blocks (LayerNorm -> multi-head self-attention -> LayerNorm -> GELU MLP, both residual). Attention
goes through `F.scaled_dot_product_attention`, so FLOP counters see it (nn.MultiheadAttention's
eval fast path hides it). The position embeddings are learned for one grid (`img_size / patch`) and
resized bicubically to whatever grid the input gives.

Parameter names are timm's (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.norm1`,
`attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`, `norm`), so a timm ViT state_dict loads
with `load_pretrained`; timm's classifier (`head`, `fc_norm`) is reported as unexpected.

`forward(x)` zero-pads the input at the bottom/right to a multiple of the patch size and returns
the token maps (N, C, ceil(H/p), ceil(W/p)) of the blocks in `out_indices` (0-based; default: the
last block), `strides` = p for each; the last block's map has the final `norm` applied, as in
mmsegmentation's ViT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segbench.models.backbones._pretrained import (
    LoadReport,
    load_state,
    read_state_dict,
    strip_prefixes,
)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int],
                     num_prefix_tokens: int) -> torch.Tensor:
    """(1, prefix + h*w, C) learned on a square h x w grid -> (1, prefix + H*W, C), bicubic."""
    prefix, tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"position embedding has {tokens.shape[1]} patch tokens, "
                         "not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    tokens = tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([prefix, tokens.flatten(2).transpose(1, 2)], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, in_channels: int = 3, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, patch_size: int = 16, img_size: int = 224,
                 mlp_ratio: float = 4.0, class_token: bool = True, drop: float = 0.0,
                 out_indices: Sequence[int] | None = None):
        super().__init__()
        out_indices = (depth - 1,) if out_indices is None else out_indices
        if any(not 0 <= i < depth for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must lie in [0, {depth})")
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.grid = (img_size // patch_size,) * 2
        self.out_indices = tuple(out_indices)
        self.strides = (patch_size,) * len(self.out_indices)
        self.num_prefix_tokens = int(class_token)
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_tokens = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, drop)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.patch_size
        x = self.patch_embed(F.pad(x, [0, -x.shape[-1] % p, 0, -x.shape[-2] % p]))
        n, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = self.pos_drop(x + resize_pos_embed(self.pos_embed, (h, w), self.num_prefix_tokens))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == len(self.blocks) - 1:
                x = self.norm(x)
            if i in self.out_indices:
                tokens = x[:, self.num_prefix_tokens:]
                outs.append(tokens.transpose(1, 2).reshape(n, c, h, w))
        return outs

    def load_pretrained(self, path: str | Path, verbose: bool = True) -> LoadReport:
        """Load a timm (or mmseg `backbone.`-prefixed) ViT state_dict from a local file; the
        position embeddings are resized to this model's grid, an RGB patch conv is adapted."""
        state = strip_prefixes(read_state_dict(path), ("module.", "backbone."))
        pos = state.get("pos_embed")
        patches = 0 if pos is None else pos.shape[1] - self.num_prefix_tokens
        if patches > 0 and math.isqrt(patches) ** 2 == patches:  # else: reported as mismatched
            state["pos_embed"] = resize_pos_embed(pos, self.grid, self.num_prefix_tokens)
        return load_state(self, state, verbose=verbose)


# timm's ViT sizes: SETR uses Large; Base at 224 is the ImageNet reference (86.6M, 17.6 GFLOPs).
VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}
