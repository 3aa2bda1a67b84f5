"""The CNN backbones' initialisation (torchvision's ResNet/VGG scheme)."""

from __future__ import annotations

from torch import nn


def init_conv_bn(module: nn.Module) -> None:
    """He-normal conv weights (fan_out, ReLU gain) and zero conv biases; BatchNorm weight 1,
    bias 0. Submodules are visited in `module.modules()` order, so the draws are reproducible."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
