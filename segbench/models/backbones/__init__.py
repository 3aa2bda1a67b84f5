"""Backbones shared by several architectures, in torchvision's parameter layout."""

from segbench.models.backbones._pretrained import LoadReport, load_backbone_state
from segbench.models.backbones.mit import MixVisionTransformer  # noqa: F401
from segbench.models.backbones.resnet import ResNet, resnet50, resnet101
from segbench.models.backbones.swin import SwinTransformer  # noqa: F401
from segbench.models.backbones.vgg import VGG16, vgg16, vgg16_bn
from segbench.models.backbones.vit import VisionTransformer  # noqa: F401
from segbench.models.backbones.xception import AlignedXception, xception65  # noqa: F401

__all__ = ["VGG16", "LoadReport", "ResNet", "load_backbone_state", "resnet50", "resnet101",
           "vgg16", "vgg16_bn"]
