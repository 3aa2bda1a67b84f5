"""The model registry: every architecture variant is a named builder with a few facts.

Names are `arch` or `arch-variant` (fcn-8s, segformer-b2, unet-small). Each architecture has one
paper-faithful default (`default=True`) and one small variant for CPU runs and tests (`cpu=True`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ARCHITECTURES = (
    "fcn", "unet", "segnet", "deeplabv1", "deeplabv2", "deeplabv3", "deeplabv3plus",
    "pspnet", "vit", "segformer", "swin",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    builder: Callable[..., nn.Module]
    paper_input_size: int  # the input side length the paper reports params/FLOPs at
    default: bool  # the paper-faithful configuration of its architecture
    cpu: bool  # the small variant used by the cpu and smoke profiles
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    paper_input_size: int = 512,
    default: bool = False,
    cpu: bool = False,
    description: str = "",
):
    """Decorator: register `builder(num_classes, in_channels, kernels, **kw) -> nn.Module`."""
    arch = name.split("-", 1)[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"model name {name!r} must start with one of {', '.join(ARCHITECTURES)}")

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, arch, builder, paper_input_size, default, cpu,
                                    description or (builder.__doc__ or "").strip())
        return builder

    return decorate


def list_models(arch: str | None = None) -> list[str]:
    """Every registered name (of one architecture if given), in the order of ARCHITECTURES,
    each architecture's paper default first."""
    specs = [s for s in _REGISTRY.values() if arch is None or s.arch == arch]
    specs.sort(key=lambda s: (ARCHITECTURES.index(s.arch), not s.default))
    return [s.name for s in specs]


def registered_architectures() -> list[str]:
    return [a for a in ARCHITECTURES if list_models(a)]


def model_spec(name: str) -> ModelSpec:
    """The spec of a model name; an architecture name alone means its paper default."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in ARCHITECTURES:
        defaults = [s for s in _REGISTRY.values() if s.arch == name and s.default]
        if defaults:
            return defaults[0]
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")


def variant_for_profile(arch: str, small: bool) -> ModelSpec:
    """The variant a profile runs: the small one (cpu, smoke) or the paper default (gpu)."""
    specs = [s for s in _REGISTRY.values() if s.arch == arch and (s.cpu if small else s.default)]
    if not specs:
        kind = "small (cpu=True)" if small else "paper-default (default=True)"
        raise ValueError(f"architecture {arch!r} has no {kind} variant registered")
    return specs[0]
