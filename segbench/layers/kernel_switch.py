"""The one switch between the PyTorch and the Triton path of a model, set after construction.

Layers that hold a Triton path subclass `KernelSwitch`; `set_kernels(model, backend)` walks the
modules (as timm's `set_grad_checkpointing` does) and flips every such layer. Builders take no
backend argument: a model is built, trained, then switched in place and back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

KERNEL_BACKENDS = ("torch", "triton")


def check_backend(backend: str) -> str:
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernels backend {backend!r}; expected one of "
                         f"{', '.join(KERNEL_BACKENDS)}")
    return backend


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """`auto` means Triton on CUDA and PyTorch elsewhere (the interpreter is for tests)."""
    if backend == "auto":
        return "triton" if torch.device(device).type == "cuda" else "torch"
    return check_backend(backend)


class KernelSwitch(nn.Module):
    """A layer with a Triton path. `kernels` is "torch" until `set_kernels` says otherwise;
    subclasses that prepare something for a backend (folded BatchNorm, say) do it lazily in
    forward, or override `kernels_changed` to drop what they prepared."""

    _kernels: str = "torch"

    @property
    def kernels(self) -> str:
        return self._kernels

    @kernels.setter
    def kernels(self, backend: str) -> None:
        self._kernels = check_backend(backend)
        self.kernels_changed()

    def kernels_changed(self) -> None:
        """Called after every switch; the default has nothing to drop."""


def kernel_switches(model: nn.Module) -> list[KernelSwitch]:
    return [m for m in model.modules() if isinstance(m, KernelSwitch)]


def uses_kernels(model: nn.Module) -> bool:
    """Whether any layer of the model has a Triton path."""
    return bool(kernel_switches(model))


def set_kernels(model: nn.Module, backend: str) -> nn.Module:
    """Switch every KernelSwitch layer of `model` to `backend` ("torch" | "triton"), in place;
    "auto" must be resolved first (`resolve_backend`)."""
    check_backend(backend)
    for layer in kernel_switches(model):
        layer.kernels = backend
    return model


@contextmanager
def switch_kernels(model: nn.Module, backend: str) -> Iterator[nn.Module]:
    """`set_kernels(model, backend)` inside a with block; afterwards every layer is switched
    back to the backend it had (e.g. measure a trained model on both backends, in place)."""
    layers = kernel_switches(model)
    before = [layer.kernels for layer in layers]
    set_kernels(model, backend)
    try:
        yield model
    finally:
        for layer, previous in zip(layers, before, strict=True):
            layer.kernels = previous
