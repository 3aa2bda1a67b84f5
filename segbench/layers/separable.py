"""Atrous depthwise-separable convolution, the building block of DeepLab v3+ (ASPP, decoder,
Xception): depthwise KxK (dilated) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segbench.layers.kernel_switch import KernelSwitch

SUPPORTED_KERNEL_SIZES = (3, 5)  # those of kernels.depthwise_separable_conv2d


def _folded_batchnorm(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(y) == y * scale + shift in eval mode, computed in fp32."""
    scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
    return scale, bn.bias.float() - bn.running_mean.float() * scale


def _tensor_state(t: torch.Tensor) -> tuple:
    """Changes whenever the tensor is replaced (to(), load) or written in place (optimizer
    steps, BatchNorm running statistics, load_state_dict's copy_)."""
    return t.data_ptr(), t._version, t.dtype, t.device


class SeparableConv2d(KernelSwitch):
    """On the triton backend, eval mode folds both BatchNorms into the conv weights and biases
    and runs the fused Triton kernel (`kernels.depthwise_separable_conv2d`, ReLU in between).

    Training runs the unfused torch path on either backend: BatchNorm in training normalises
    with the batch statistics of the whole depthwise output, which a fused kernel cannot know
    before it has produced that output, so fusing would have to write it out anyway. The kernel
    takes stride 1 and 3x3 or 5x5 kernels only, so other layers (the strided ones of Xception's
    entry flow) also run the torch path.

    The folded weights are computed on the first fused forward. Without autograd (inference)
    they are kept, keyed by the identity and version of every tensor they are computed from,
    so training, loading or moving the layer recomputes them; with autograd they are recomputed
    on every call, so that gradients reach the convolutions and BatchNorms.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, relu_out: bool = True):
        super().__init__()
        self.stride, self.dilation = stride, dilation
        self.relu_out = relu_out
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride,
                                   padding=dilation * (kernel_size // 2), dilation=dilation,
                                   groups=in_channels, bias=False)
        self.bn_depthwise = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pointwise = nn.BatchNorm2d(out_channels)
        self._folded: tuple[tuple, tuple[torch.Tensor, ...]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_fused_kernel():
            x = self._fused_forward(x)
        else:
            x = F.relu(self.bn_depthwise(self.depthwise(x)))
            x = self.bn_pointwise(self.pointwise(x))
        return F.relu(x) if self.relu_out else x

    def kernels_changed(self) -> None:
        self._folded = None

    def _uses_fused_kernel(self) -> bool:
        return (self.kernels == "triton" and not self.training and self.stride == 1
                and self.depthwise.kernel_size[0] in SUPPORTED_KERNEL_SIZES)

    def _folded_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(dw_weight, dw_bias, pw_weight, pw_bias) with both BatchNorms folded in, in dtype."""
        dw_scale, dw_shift = _folded_batchnorm(self.bn_depthwise)
        pw_scale, pw_shift = _folded_batchnorm(self.bn_pointwise)
        dw_weight = self.depthwise.weight.float() * dw_scale[:, None, None, None]
        pw_weight = self.pointwise.weight.float() * pw_scale[:, None, None, None]
        return tuple(t.to(dtype) for t in (dw_weight, dw_shift, pw_weight, pw_shift))

    def _current_folded_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        if torch.is_grad_enabled():
            return self._folded_weights(dtype)
        bns = (self.bn_depthwise, self.bn_pointwise)
        sources = [self.depthwise.weight, self.pointwise.weight]
        sources += [t for bn in bns for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)]
        key = (dtype, *(bn.eps for bn in bns), *(_tensor_state(t) for t in sources))
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, self._folded_weights(dtype))
        return self._folded[1]

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        # Imported here: triton is installed only where it runs (Linux x86-64).
        from kernels.dwsep_conv import depthwise_separable_conv2d

        dw_weight, dw_bias, pw_weight, pw_bias = self._current_folded_weights(x.dtype)
        return depthwise_separable_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias,
                                          dilation=self.dilation, mid_activation="relu")
