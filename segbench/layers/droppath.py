from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p and
    scale the kept ones by 1 / (1 - p); the identity in eval or when p == 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
