"""Key names and shapes of torchvision's ResNet and segmentation checkpoints, written out from
torchvision's model definitions (resnet.py, segmentation/deeplabv3.py, segmentation/fcn.py)
independently of segbench's models, and filled with distinct random values, so that a test can
tell by value which file tensor landed where."""

from __future__ import annotations

import hashlib

import torch

Shape = tuple[int, ...]


def _bn(prefix: str, channels: int) -> dict[str, Shape]:
    return {f"{prefix}.{name}": (channels,)
            for name in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def resnet(prefix: str = "", blocks=(3, 4, 23, 3), width: int = 64,
           in_channels: int = 3) -> dict[str, Shape]:
    """torchvision ResNet (Bottleneck, expansion 4) without avgpool/fc; `width` 64 is
    torchvision's, smaller widths keep the same layout."""
    shapes = {f"{prefix}conv1.weight": (width, in_channels, 7, 7), **_bn(f"{prefix}bn1", width)}
    inplanes = width
    for stage, count in enumerate(blocks):
        planes = width * 2**stage
        for block in range(count):
            p = f"{prefix}layer{stage + 1}.{block}."
            shapes |= {f"{p}conv1.weight": (planes, inplanes, 1, 1), **_bn(f"{p}bn1", planes),
                       f"{p}conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}bn2", planes),
                       f"{p}conv3.weight": (4 * planes, planes, 1, 1),
                       **_bn(f"{p}bn3", 4 * planes)}
            if block == 0:
                shapes |= {f"{p}downsample.0.weight": (4 * planes, inplanes, 1, 1),
                           **_bn(f"{p}downsample.1", 4 * planes)}
            inplanes = 4 * planes
    return shapes


def fcn_head(prefix: str, in_channels: int, num_classes: int) -> dict[str, Shape]:
    """torchvision FCNHead: conv 3x3 (in -> in/4, no bias), BN, ReLU, Dropout, conv 1x1."""
    mid = in_channels // 4
    return {f"{prefix}0.weight": (mid, in_channels, 3, 3), **_bn(f"{prefix}1", mid),
            f"{prefix}4.weight": (num_classes, mid, 1, 1), f"{prefix}4.bias": (num_classes,)}


def deeplab_head(in_channels: int, num_classes: int, channels: int = 256) -> dict[str, Shape]:
    """torchvision DeepLabHead under `classifier.`: ASPP (convs 0: 1x1, 1-3: 3x3 atrous, 4:
    pooling with its conv at 1, BN at 2; project conv + BN), conv 3x3, BN, ReLU, conv 1x1."""
    p = "classifier.0."
    shapes = {f"{p}convs.0.0.weight": (channels, in_channels, 1, 1),
              **_bn(f"{p}convs.0.1", channels)}
    for branch in (1, 2, 3):
        shapes |= {f"{p}convs.{branch}.0.weight": (channels, in_channels, 3, 3),
                   **_bn(f"{p}convs.{branch}.1", channels)}
    shapes |= {f"{p}convs.4.1.weight": (channels, in_channels, 1, 1),
               **_bn(f"{p}convs.4.2", channels),
               f"{p}project.0.weight": (channels, 5 * channels, 1, 1),
               **_bn(f"{p}project.1", channels),
               "classifier.1.weight": (channels, channels, 3, 3), **_bn("classifier.2", channels),
               "classifier.4.weight": (num_classes, channels, 1, 1),
               "classifier.4.bias": (num_classes,)}
    return shapes


def deeplabv3_resnet101(num_classes: int = 21) -> dict[str, Shape]:
    """torchvision `deeplabv3_resnet101` with its auxiliary classifier (the released weights')."""
    return (resnet("backbone.") | deeplab_head(2048, num_classes)
            | fcn_head("aux_classifier.", 1024, num_classes))


def random_state(shapes: dict[str, Shape], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of those shapes, no two equal (num_batches_tracked counts 1, 2, ...)."""
    g = torch.Generator().manual_seed(seed)
    return {key: torch.tensor(i + 1) if shape == () else torch.randn(shape, generator=g)
            for i, (key, shape) in enumerate(shapes.items())}


def digest(t: torch.Tensor) -> str:
    t = t.detach().contiguous().reshape(-1)
    return hashlib.sha1(t.view(torch.uint8).numpy().tobytes() + str(t.dtype).encode()).hexdigest()


def source_of_every_tensor(model: torch.nn.Module,
                           state: dict[str, torch.Tensor]) -> dict[str, str | None]:
    """For every tensor of the model, the file key whose value it holds (None: none does)."""
    by_value = {digest(v): k for k, v in state.items()}
    return {k: by_value.get(digest(v)) for k, v in model.state_dict().items()}
