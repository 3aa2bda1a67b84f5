"""Model zoo: `create_model(name, num_classes, ...)` and `list_models()`.

Each family module registers its variants when imported; the imports below are the whole list,
and their order is the order of ARCHITECTURES. Models are built on the PyTorch path; switch the
layers that have a Triton path with `segbench.layers.set_kernels(model, backend)`.
"""

from __future__ import annotations

from torch import nn

# isort: off
from segbench.models import fcn, unet, segnet, deeplab, pspnet, vit, segformer, swin  # noqa: F401
# isort: on
from segbench.models._registry import (
    ModelSpec,
    list_models,
    model_spec,
    registered_architectures,
    variant_for_profile,
)

ARCHITECTURES = registered_architectures()

__all__ = [
    "ARCHITECTURES", "ModelSpec", "create_model", "list_models", "model_spec",
    "registered_architectures", "variant_for_profile",
]  # fmt: skip


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 1,
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
    model = spec.builder(num_classes=num_classes, in_channels=in_channels, **variant_kw)
    if pretrained is not None:
        if not hasattr(model, "load_pretrained"):
            raise ValueError(f"model {spec.name!r} has no pretrained-backbone loader")
        model.load_pretrained(pretrained)
    return model
