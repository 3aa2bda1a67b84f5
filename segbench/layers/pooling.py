"""SegNet's pooling pair: a max-pool that keeps where each maximum came from, and the unpool
that puts each value back there (zeros elsewhere).

torch backend: F.max_pool2d int64 flat indices. triton backend: 1-byte local indices (argmax
position inside each window) from kernels.max_pool2d_with_indices, 8x smaller to keep for the
decoder and for backward; the two backends' indices are not interchangeable, so a model's pool
and unpool layers are switched together (`set_kernels`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segbench.layers.kernel_switch import KernelSwitch


class MaxPoolWithIndices(KernelSwitch):
    """2x2/2 max-pool returning (values, indices); the indices feed the matching MaxUnpool."""

    def __init__(self, kernel_size: int = 2, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kernels == "triton":
            from kernels import max_pool2d_with_indices  # imports triton: only when asked for

            return max_pool2d_with_indices(x, self.kernel_size, self.stride)
        return F.max_pool2d(x, self.kernel_size, self.stride, return_indices=True)


class MaxUnpool(KernelSwitch):
    def __init__(self, kernel_size: int = 2, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size) -> torch.Tensor:
        # plain ints: under torch.jit.trace (FLOP counting) sizes arrive as tensors
        output_size = [int(s) for s in list(output_size)[-2:]]
        if self.kernels == "triton":
            from kernels import max_unpool2d_compact

            return max_unpool2d_compact(x, indices, self.kernel_size, self.stride,
                                        output_size=output_size)
        return F.max_unpool2d(x, indices, self.kernel_size, self.stride, output_size=output_size)
