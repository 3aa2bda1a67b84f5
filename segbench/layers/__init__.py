"""Blocks shared by several architectures: convolutions, pooling, attention, and the pieces of a
segmentation model (resize, PPM, SegmentationModel). The layers with a Triton path subclass
`KernelSwitch`; `set_kernels(model, backend)` switches them after construction."""

from segbench.layers.attention import WindowAttentionCore, window_attention
from segbench.layers.conv import ConvBNAct
from segbench.layers.droppath import DropPath
from segbench.layers.kernel_switch import (
    KERNEL_BACKENDS,
    KernelSwitch,
    kernel_switches,
    resolve_backend,
    set_kernels,
    switch_kernels,
    uses_kernels,
)
from segbench.layers.pooling import MaxPoolWithIndices, MaxUnpool
from segbench.layers.ppm import PPM, PPM_BINS
from segbench.layers.resize import resize
from segbench.layers.segmentation_model import AUX_WEIGHT, SegmentationModel
from segbench.layers.separable import SeparableConv2d

__all__ = ["AUX_WEIGHT", "KERNEL_BACKENDS", "PPM", "PPM_BINS", "ConvBNAct", "DropPath",
           "KernelSwitch", "MaxPoolWithIndices", "MaxUnpool", "SegmentationModel",
           "SeparableConv2d", "WindowAttentionCore", "kernel_switches", "resize",
           "resolve_backend", "set_kernels", "switch_kernels", "uses_kernels",
           "window_attention"]
