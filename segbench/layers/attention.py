"""Window attention core shared by Swin: softmax(q k^T * scale + bias + mask) v per window."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segbench.layers.kernel_switch import KernelSwitch


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """The PyTorch path. q, k, v: (B*nW, heads, N, d); bias: (heads, N, N); mask: (nW, N, N),
    window index = batch index mod nW. bias + mask are materialised for
    scaled_dot_product_attention."""
    attn_mask = None
    if bias is not None:
        attn_mask = bias.unsqueeze(0).to(q.dtype)
    if mask is not None:
        windows = mask.shape[0]
        per_window = mask.to(q.dtype).unsqueeze(1).repeat(q.shape[0] // windows, 1, 1, 1)
        attn_mask = per_window if attn_mask is None else attn_mask + per_window
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class WindowAttentionCore(KernelSwitch):
    """`window_attention` on the torch backend; on the triton backend one fused kernel
    (kernels.window_attention) that adds bias and mask without materialising them."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                scale: float | None = None) -> torch.Tensor:
        if self.kernels == "triton":
            # Imported here so that the torch path works where triton is not installed.
            from kernels.window_attention import window_attention as fused_window_attention

            return fused_window_attention(q, k, v, bias, mask, scale)
        return window_attention(q, k, v, bias, mask, scale)
