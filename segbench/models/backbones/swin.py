"""Swin Transformer (Liu et al., ICCV 2021) as a segmentation backbone.

A 4x4 patch embedding (conv, stride 4) and LayerNorm, then four stages of Swin blocks with
patch merging (2x2 neighbours concatenated, LayerNorm, linear 4C -> 2C) between them. A block is
LayerNorm -> window attention (MxM windows, M = 7, learned relative position bias) -> residual,
LayerNorm -> MLP (ratio 4, GELU) -> residual; every second block shifts its windows by M // 2 with
a cyclic shift and masks attention (-100) between tokens that the roll brought from different
regions. Stochastic depth grows linearly over the blocks up to `drop_path_rate`.

As in the official segmentation code: the input is padded to a multiple of the patch size, each
block pads its map to a multiple of the window (after its norm; the padded tokens take part in
attention, unmasked) and crops back, merging pads odd sizes, and every stage output gets its own
LayerNorm (`norm0`..`norm3`). As in the official classification code, a stage whose map is no
larger than the window (min(H, W) <= M) uses a window of min(H, W) and no shift; the bias of the
smaller window is read from the same table. Features are kept (N, H, W, C) inside.

`forward(x)` returns the four stage outputs (N, C_i, H_i, W_i) at strides 4, 8, 16, 32, with
C_i = embed_dim * 2**i (`channels`). Parameter names follow the official release (and timm before
0.9), so its ImageNet checkpoints load with `load_pretrained` (see there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers import DropPath, WindowAttentionCore
from segbench.models.backbones._pretrained import (
    LoadReport,
    load_state,
    read_state_dict,
    strip_prefixes,
)

SWIN_CONFIGS = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    # CPU variant (not in the paper): head dim 32 like T/S/B, one shifted block per stage
    "mini": dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
}
SHIFT_MASK_VALUE = -100.0  # the official code's additive mask between regions
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")  # recomputed here, never loaded


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of `window` -> (B * nW, window**2, C), windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window**2, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window: int, table_window: int | None = None) -> torch.Tensor:
    """(N, N) row of the ((2T-1)**2)-entry bias table for each token pair of a window (N =
    window**2), T = table_window (default window): (dh + T - 1) * (2T - 1) + (dw + T - 1)."""
    table_window = table_window or window
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)  # (2, N)
    delta = (coords[:, :, None] - coords[:, None, :]) + (table_window - 1)  # (2, N, N)
    return delta[0] * (2 * table_window - 1) + delta[1]


def window_and_shift(H: int, W: int, window: int) -> tuple[int, int]:
    """The window side and shift a stage with an H x W map uses."""
    if min(H, W) <= window:
        return min(H, W), 0
    return window, window // 2


def shifted_window_mask(H: int, W: int, window: int, shift: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """(nW, N, N) additive mask for the shifted windows of an H x W map (padded to the window).
    After the roll, a padded side of length L holds three regions: [0, L - window),
    [L - window, L - shift) and [L - shift, L); tokens of different regions may not attend."""
    def regions(size: int) -> torch.Tensor:
        padded = torch.arange(math.ceil(size / window) * window, device=device)
        return (padded >= len(padded) - window).long() + (padded >= len(padded) - shift).long()

    labels = regions(H)[:, None] * 3 + regions(W)[None, :]
    labels = window_partition(labels[None, :, :, None], window).squeeze(-1)  # (nW, N)
    same = labels[:, :, None] == labels[:, None, :]
    return torch.full(same.shape, SHIFT_MASK_VALUE, device=device).masked_fill_(same, 0.0)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a relative position bias.

    `forward(x, mask)`: x (B * nW, N, C) with N = w**2 for a window w <= `window`; mask
    (nW, N, N) or None. The core, softmax(q k^T * scale + bias + mask) v, is
    `segbench.layers.WindowAttentionCore`, which has a Triton path.
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = WindowAttentionCore()
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self, window: int) -> torch.Tensor:
        """(heads, N, N) bias of a window side <= self.window."""
        index = self.relative_position_index
        if window != self.window:
            index = relative_position_index(window, self.window).to(index.device)
        N = window * window
        return self.relative_position_bias_table[index.view(-1)].view(N, N, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        bias = self.relative_position_bias(math.isqrt(N))
        x = self.core(q, k, v, bias=bias, mask=mask, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, window: int, shift: int,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, H, W, C); windows of side `window`, cyclically shifted by `shift` (mask given)."""
        _, H, W, _ = x.shape
        y = F.pad(self.norm1(x), (0, 0, 0, -W % window, 0, -H % window))
        Hp, Wp = y.shape[1:3]
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, window), mask), window, Hp, Wp)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :H, :W])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C): 2x2 neighbours concatenated in the official
    order (0,0), (1,0), (0,1), (1,1), LayerNorm, linear without bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks (odd ones shifted) and an optional patch merging; returns (output, next input)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int,
                 drop_paths: Sequence[float], downsample: bool):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, window, drop_path=p)
                                    for p in drop_paths)
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = x.shape[1:3]
        window, shift = window_and_shift(H, W, self.window)
        mask = shifted_window_mask(H, W, window, shift, x.device) if shift else None
        for i, block in enumerate(self.blocks):
            x = block(x, window, shift, mask) if i % 2 else block(x, window, 0, None)
        return x, (x if self.downsample is None else self.downsample(x))


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) -> (B, ceil(H/4), ceil(W/4), dim): right/bottom padding, conv 4/4, norm."""

    def __init__(self, in_channels: int, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % self.patch, 0, -H % self.patch))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    def __init__(self, in_channels: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, drop_path_rate: float = 0.3):
        super().__init__()
        self.channels = [embed_dim * 2**i for i in range(len(depths))]
        self.strides = [4 * 2**i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(in_channels, embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear from 0
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(dim, depth, heads, window_size, rates[start:start + depth],
                      downsample=i < len(depths) - 1)
            for i, (dim, depth, heads, start) in enumerate(
                zip(self.channels, depths, num_heads, starts, strict=True)))
        for i, dim in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        features = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            features.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
        return features

    def load_pretrained(self, path: str | Path, verbose: bool = True) -> LoadReport:
        """Load a local Swin state_dict: the official release's file (a dict with "model"),
        timm's (before or after 0.9, when the merging moved to the next stage), or an mmseg
        checkpoint's `backbone.*`. Relative position tables of another window size are resized
        (bicubic), RGB patch-embedding filters are adapted to `in_channels` (see `_pretrained`),
        the index/mask buffers are recomputed, the classifier (`head`, `norm`) is unexpected."""
        state = _official_layout(read_state_dict(path))
        return load_state(self, state, fit=_fit_bias_table, derived=DERIVED_BUFFERS,
                          verbose=verbose)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)


def _official_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip mmseg's `backbone.`; undo timm >= 0.9, whose stage i + 1 owns the merging that the
    official layout puts at the end of stage i (detected by a merging in the last stage)."""
    state = strip_prefixes(state, ("backbone.",))
    if not any(re.match(r"layers\.3\.downsample\.", k) for k in state):
        return state

    def rename(key: str) -> str:
        found = re.match(r"layers\.(\d+)\.downsample\.", key)
        if found is None:
            return key
        return f"layers.{int(found[1]) - 1}.downsample." + key[found.end():]

    return {rename(k): v for k, v in state.items()}


def _fit_bias_table(key: str, tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """`load_state`'s `fit`: a relative position bias table of another window size, resized
    (other tensors are left to the generic rules, e.g. RGB filters adapted)."""
    if key.endswith("relative_position_bias_table"):
        return _resize_bias_table(tensor, target.shape)
    return None


def _resize_bias_table(table: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """((2M-1)**2, heads) -> ((2M'-1)**2, heads) by bicubic interpolation of each head's grid."""
    side, new_side = math.isqrt(table.shape[0]), math.isqrt(shape[0])
    if table.shape[1] != shape[1] or side**2 != table.shape[0] or new_side**2 != shape[0]:
        return None
    grid = table.T.reshape(1, -1, side, side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(shape[1], -1).T.contiguous()
