from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.layers.resize import resize

AUX_WEIGHT = 0.4  # mmseg's auxiliary loss weight (its PSPNet, UPerNet and SETR configs)


class SegmentationModel(nn.Module):
    """backbone -> head -> logits at the input size, plus weighted auxiliary heads in training
    (torchvision's `_SimpleSegmentationModel`, mmseg's `EncoderDecoder`).

    The backbone returns a list of feature maps; every head takes that list, reads the maps it
    needs and returns class scores. `forward(x)` runs the main head only. `forward_with_aux(x)`
    returns (logits, [(aux_weight, aux_logits), ...]) in training and (forward(x), []) in eval:
    auxiliary heads only add training losses.

    Logits reach the input size in one of two ways:
    - crop=False (torchvision, mmseg): bilinear up-sampling to the input size;
    - crop=True, for backbones that pad their input at every stride (Swin, SETR's ViT): a head's
      logits cover the area `stride * size` of the first feature map it reads (`in_index`, an
      int or a tuple), from the top-left corner; they are up-sampled to that area (unless they
      are already at it) and cropped to the input.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_heads: Sequence[nn.Module] = (),
                 aux_weight: float = AUX_WEIGHT, crop: bool = False):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.aux_heads = nn.ModuleList(aux_heads)
        self.aux_weight, self.crop = aux_weight, crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.head, self.backbone(x), x)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        if not self.training:
            return self(x), []
        features = self.backbone(x)
        logits = self._logits(self.head, features, x)  # before the aux heads: dropout draws
        return logits, [(self.aux_weight, self._logits(head, features, x))
                        for head in self.aux_heads]

    def _logits(self, head: nn.Module, features: list[torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
        logits, size = head(features), x.shape[-2:]
        if not self.crop:
            return resize(logits, size)
        first = head.in_index if isinstance(head.in_index, int) else head.in_index[0]
        covered = tuple(self.backbone.strides[first] * n for n in features[first].shape[-2:])
        if tuple(logits.shape[-2:]) != covered:
            logits = resize(logits, covered)
        return logits[..., : size[0], : size[1]]
