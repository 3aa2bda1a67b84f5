"""Triton kernels for the three operations that define DeepLab v3+, SegNet and Swin.

Each public function has the meaning of its PyTorch reference (see each module's
`*_reference`), forward and backward, and is registered as a torch custom op.
"""

from kernels.dwsep_conv import depthwise_separable_conv2d  # noqa: F401
from kernels.max_unpool import max_pool2d_with_indices, max_unpool2d, max_unpool2d_compact  # noqa: F401
from kernels.window_attention import window_attention  # noqa: F401
