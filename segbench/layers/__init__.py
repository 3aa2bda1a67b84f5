"""Blocks shared by several architectures. The three ops that have Triton kernels take a
`kernels` switch ("torch" | "triton"); the rest are plain PyTorch."""

from segbench.layers.attention import window_attention
from segbench.layers.conv import ConvBNAct
from segbench.layers.droppath import DropPath
from segbench.layers.pooling import MaxPoolWithIndices, MaxUnpool
from segbench.layers.separable import SeparableConv2d

__all__ = ["ConvBNAct", "DropPath", "MaxPoolWithIndices", "MaxUnpool", "SeparableConv2d",
           "window_attention"]
