"""Triton kernels for the three operations that define DeepLab v3+, SegNet and Swin.

Each public function has the meaning of its PyTorch reference (see each module's
`*_reference`), forward and backward, and is registered as a torch custom op.
"""
