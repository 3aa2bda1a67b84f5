"""The FLOP counter against layers whose multiply-adds are counted by hand."""

import torch
import torch.nn.functional as F
from torch import nn

from segbench.measure.flops import count_flops, count_params


def test_conv_layer_by_hand():
    # 3x3 conv, 4 -> 8 channels, 10x12 output, no bias: 10*12*8 outputs x 4*3*3 MACs each
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    result = count_flops(conv, torch.randn(1, 4, 10, 12))
    assert result["flops"] == 10 * 12 * 8 * 4 * 9
    assert result["flops_uncounted_ops"] == ""
    assert count_params(conv) == 8 * 4 * 9


def test_linear_by_hand():
    result = count_flops(nn.Linear(16, 32), torch.randn(5, 16))
    assert result["flops"] == 5 * 16 * 32


class Attention(nn.Module):
    def forward(self, q):
        k = q.flip(-2)
        return F.scaled_dot_product_attention(q, k, q)


def test_scaled_dot_product_attention_counts_both_products():
    batch, heads, tokens, dim = 2, 3, 49, 32
    result = count_flops(Attention(), torch.randn(batch, heads, tokens, dim))
    assert result["flops"] == batch * heads * 2 * tokens * tokens * dim


class Uncountable(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, -1)


def test_ops_fvcore_cannot_count_are_reported():
    result = count_flops(Uncountable(), torch.randn(2, 8))
    assert "aten::cumsum" in result["flops_uncounted_ops"]
