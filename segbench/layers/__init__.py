"""Blocks shared by several architectures. The three ops that have Triton kernels take a
`kernels` switch ("torch" | "triton"); the rest are plain PyTorch."""

from segbench.layers.attention import window_attention
from segbench.layers.conv import ConvBNAct
from segbench.layers.droppath import DropPath
from segbench.layers.kernel_switch import (
    KERNEL_BACKENDS,
    KernelSwitch,
    resolve_backend,
    set_kernels,
    uses_kernels,
)
from segbench.layers.pooling import MaxPoolWithIndices, MaxUnpool
from segbench.layers.separable import SeparableConv2d

__all__ = ["KERNEL_BACKENDS", "ConvBNAct", "DropPath", "KernelSwitch", "MaxPoolWithIndices",
           "MaxUnpool", "SeparableConv2d", "resolve_backend", "set_kernels", "uses_kernels",
           "window_attention"]
