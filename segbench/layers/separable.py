"""Atrous depthwise-separable convolution, the building block of DeepLab v3+ (ASPP, decoder,
Xception): depthwise KxK (dilated) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_BACKENDS = ("torch", "triton")
SUPPORTED_KERNEL_SIZES = (3, 5)  # those of kernels.depthwise_separable_conv2d


def _folded_batchnorm(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(y) == y * scale + shift in eval mode, computed in fp32."""
    scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
    return scale, bn.bias.float() - bn.running_mean.float() * scale


class SeparableConv2d(nn.Module):
    """With kernels="triton", eval mode folds both BatchNorms into the conv weights and biases
    and runs the fused Triton kernel (`kernels.depthwise_separable_conv2d`, ReLU in between).

    Training runs the unfused torch path under either setting: BatchNorm in training
    normalises with the batch statistics of the whole depthwise output, which a fused kernel
    cannot know before it has produced that output, so fusing would have to write it out
    anyway. The kernel takes stride 1 and 3x3 or 5x5 kernels only, so other layers (the
    strided ones of Xception's entry flow) also run the torch path.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, relu_out: bool = True, kernels: str = "torch"):
        super().__init__()
        if kernels not in KERNEL_BACKENDS:
            raise ValueError(f"kernels must be one of {KERNEL_BACKENDS}, got {kernels!r}")
        self.stride, self.dilation, self.kernels = stride, dilation, kernels
        self.relu_out = relu_out
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride,
                                   padding=dilation * (kernel_size // 2), dilation=dilation,
                                   groups=in_channels, bias=False)
        self.bn_depthwise = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pointwise = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_fused_kernel():
            x = self._fused_forward(x)
        else:
            x = F.relu(self.bn_depthwise(self.depthwise(x)))
            x = self.bn_pointwise(self.pointwise(x))
        return F.relu(x) if self.relu_out else x

    def _uses_fused_kernel(self) -> bool:
        return (self.kernels == "triton" and not self.training and self.stride == 1
                and self.depthwise.kernel_size[0] in SUPPORTED_KERNEL_SIZES)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        # Imported here: triton is installed only where it runs (Linux x86-64).
        from kernels.dwsep_conv import depthwise_separable_conv2d

        dw_scale, dw_shift = _folded_batchnorm(self.bn_depthwise)
        pw_scale, pw_shift = _folded_batchnorm(self.bn_pointwise)
        dw_weight = self.depthwise.weight.float() * dw_scale[:, None, None, None]
        pw_weight = self.pointwise.weight.float() * pw_scale[:, None, None, None]
        dtype = x.dtype
        return depthwise_separable_conv2d(
            x, dw_weight.to(dtype), dw_shift.to(dtype), pw_weight.to(dtype), pw_shift.to(dtype),
            dilation=self.dilation, mid_activation="relu",
        )
