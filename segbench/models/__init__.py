"""Model zoo: `create_model(name, num_classes, ...)` and `list_models()`.

Each family module registers its variants when imported; the imports below are the whole list.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models import (  # noqa: F401  # noqa: F401
    deeplab,  # noqa: F401
    fcn,
    pspnet,
    segformer,
    segnet,
    swin,  # noqa: F401
    unet,  # noqa: F401  (registers its variants)
    vit,
)
from segbench.models._registry import (
    ARCHITECTURES,
    ModelSpec,
    list_models,
    model_spec,
    registered_architectures,
    variant_for_profile,
)

KERNEL_BACKENDS = ("auto", "torch", "triton")

__all__ = [
    "ARCHITECTURES", "KERNEL_BACKENDS", "ModelSpec", "create_model", "list_models",
    "model_spec", "registered_architectures", "resolve_kernels", "variant_for_profile",
]  # fmt: skip


def resolve_kernels(kernels: str) -> str:
    """`auto` means Triton on CUDA and PyTorch on CPU (the interpreter is for tests only)."""
    if kernels not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernels backend {kernels!r}; expected one of {KERNEL_BACKENDS}")
    if kernels != "auto":
        return kernels
    return "triton" if torch.cuda.is_available() else "torch"


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 1,
    kernels: str = "auto",
    pretrained: str | None = None,
    **variant_kw,
) -> nn.Module:
    """Build a registered model: `model(x)` maps (N, in_channels, H, W) to logits
    (N, num_classes, H, W)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class), "
                         f"got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    spec = model_spec(name)
    model = spec.builder(num_classes=num_classes, in_channels=in_channels,
                         kernels=resolve_kernels(kernels), **variant_kw)
    if pretrained is not None:
        if not hasattr(model, "load_pretrained"):
            raise ValueError(f"model {spec.name!r} has no pretrained-backbone loader")
        model.load_pretrained(pretrained)
    return model
