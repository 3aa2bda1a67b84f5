"""The model registry: every architecture variant is a named builder with a few facts.

Names are `arch` or `arch-variant` (fcn-8s, segformer-b2, unet-small). Each architecture has one
paper-faithful default (`default=True`) and one small variant for CPU runs and tests (`cpu=True`).
The architectures are those registered, in the order they were first registered (the order of
the family imports in `segbench.models`), so a new architecture is one family file and one import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


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
_ARCHITECTURES: list[str] = []  # in the order of their first registration


def register_model(
    name: str,
    *,
    paper_input_size: int = 512,
    default: bool = False,
    cpu: bool = False,
    description: str = "",
):
    """Decorator: register `builder(num_classes, in_channels, **kw) -> nn.Module` under `name`,
    whose part before the first dash names its architecture."""
    arch = name.split("-", 1)[0]

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, arch, builder, paper_input_size, default, cpu,
                                    description or (builder.__doc__ or "").strip())
        if arch not in _ARCHITECTURES:
            _ARCHITECTURES.append(arch)
        return builder

    return decorate


def list_models(arch: str | None = None) -> list[str]:
    """Every registered name (of one architecture if given), architectures in registration
    order, each architecture's paper default first."""
    specs = [s for s in _REGISTRY.values() if arch is None or s.arch == arch]
    specs.sort(key=lambda s: (_ARCHITECTURES.index(s.arch), not s.default))
    return [s.name for s in specs]


def registered_architectures() -> tuple[str, ...]:
    """The architecture names, in registration order."""
    return tuple(_ARCHITECTURES)


def model_spec(name: str) -> ModelSpec:
    """The spec of a model name; an architecture name alone means its paper default."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _ARCHITECTURES:
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
