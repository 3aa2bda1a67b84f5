"""segbench.layers: the kernel switch (every Triton path behind one KernelSwitch, validated,
switched after construction), the folded-BatchNorm cache of SeparableConv2d, and the shared
segmentation pieces (resize, PPM, SegmentationModel)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch
from torch import nn

import segbench.layers
from segbench.layers import (
    PPM,
    KernelSwitch,
    SegmentationModel,
    SeparableConv2d,
    kernel_switches,
    resize,
    resolve_backend,
    set_kernels,
    switch_kernels,
)
from segbench.models import create_model, list_models, model_spec

SMALL = [n for n in list_models() if model_spec(n).cpu]


def _kernel_imports(path: Path) -> list[tuple[str | None, int]]:
    """(enclosing class or None, line) of every import from the `kernels` package in a file."""
    found = []

    def visit(node: ast.AST, owner: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
                continue
            modules = ([child.module or ""] if isinstance(child, ast.ImportFrom) else
                       [a.name for a in child.names] if isinstance(child, ast.Import) else [])
            if any(m == "kernels" or m.startswith("kernels.") for m in modules):
                found.append((owner, child.lineno))
            visit(child, owner)

    visit(ast.parse(path.read_text()), None)
    return found


def test_every_layer_with_a_triton_path_is_a_kernel_switch():
    # A layer reaches Triton by importing from the `kernels` package; any such import must sit
    # in a KernelSwitch subclass, so set_kernels reaches it and `--kernels both` differs; and
    # every KernelSwitch has such a path.
    owners, switches = set(), set()
    for info in pkgutil.iter_modules(segbench.layers.__path__):
        module = importlib.import_module(f"segbench.layers.{info.name}")
        for owner, line in _kernel_imports(Path(module.__file__)):
            where = f"{module.__name__}:{line}"
            assert owner is not None, f"{where} imports kernels outside a layer class"
            assert issubclass(getattr(module, owner), KernelSwitch), f"{where}: {owner}"
            owners.add(owner)
        switches |= {name for name, value in vars(module).items() if isinstance(value, type)
                     and issubclass(value, KernelSwitch) and value is not KernelSwitch
                     and value.__module__ == module.__name__}
    assert owners and owners == switches


@pytest.mark.parametrize("name", ["segnet-small", "deeplabv3plus-small", "swin-small"])
def test_set_kernels_flips_every_triton_layer_of_a_model(name):
    model = create_model(name, 2)
    layers = kernel_switches(model)
    assert layers and {layer.kernels for layer in layers} == {"torch"}
    assert set_kernels(model, "triton") is model
    assert {layer.kernels for layer in layers} == {"triton"}
    with switch_kernels(model, "torch"):
        assert {layer.kernels for layer in layers} == {"torch"}
    assert {layer.kernels for layer in layers} == {"triton"}


def test_models_without_triton_layers_have_no_switch():
    plain = [n for n in SMALL if not kernel_switches(create_model(n, 2))]
    assert {model_spec(n).arch for n in plain} == {
        "fcn", "unet", "deeplabv1", "deeplabv2", "deeplabv3", "pspnet", "vit", "segformer"}


def test_backend_names_are_checked_and_auto_resolved_in_one_place():
    with pytest.raises(ValueError, match="unknown kernels backend 'trition'"):
        set_kernels(create_model("segnet-small", 2), "trition")
    with pytest.raises(ValueError, match="unknown kernels backend 'auto'"):
        set_kernels(create_model("segnet-small", 2), "auto")  # resolve it first
    layer = SeparableConv2d(4, 4)
    with pytest.raises(ValueError, match="expected one of torch, triton"):
        layer.kernels = "cuda"
    assert layer.kernels == "torch"
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="trition"):
        resolve_backend("trition", "cpu")


# ----------------------------------------------------------- SeparableConv2d's folded weights

def _randomised(layer: SeparableConv2d) -> SeparableConv2d:
    """Every weight and BatchNorm statistic drawn from U(0.5, 1.5) (variances stay positive)."""
    with torch.no_grad():
        for tensor in layer.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    return layer


def _torch_path(layer: SeparableConv2d, x: torch.Tensor) -> torch.Tensor:
    with switch_kernels(layer, "torch"), torch.no_grad():
        return layer(x)


def test_folded_weights_follow_training_and_loading():
    pytest.importorskip("triton")  # the interpreter on CPU
    torch.manual_seed(0)
    layer = set_kernels(_randomised(SeparableConv2d(3, 4, dilation=2)), "triton").eval()
    x = torch.randn(2, 3, 5, 4)
    expected = _torch_path(layer, x)  # (a switch drops the folding; switched back here)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
        folded = layer._folded
        layer(x)
        assert folded is not None and layer._folded is folded  # nothing changed: reused

    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()(x).square().mean().backward()  # new running statistics, then new weights
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), _torch_path(layer, x), rtol=1e-4, atol=1e-4)

        other = _randomised(SeparableConv2d(3, 4, dilation=2))
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), _torch_path(other.eval(), x), rtol=1e-4, atol=1e-4)


def test_fused_eval_forward_passes_gradients_to_the_weights():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    layer = set_kernels(_randomised(SeparableConv2d(3, 4)), "triton").eval()
    reference = _randomised(SeparableConv2d(3, 4)).eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(1, 3, 4, 5)
    layer(x).sum().backward()
    reference(x).sum().backward()
    torch.testing.assert_close(layer.depthwise.weight.grad, reference.depthwise.weight.grad,
                               rtol=1e-4, atol=1e-4)
    assert layer._folded is None  # with autograd nothing is kept


# ----------------------------------------------------------------- segmentation pieces

def test_resize_is_bilinear_without_corner_alignment():
    x = torch.tensor([[[[0.0, 1.0]]]])
    torch.testing.assert_close(resize(x, (1, 4)), torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]))


def test_ppm_concatenates_input_and_one_branch_per_bin():
    torch.manual_seed(0)
    ppm = PPM(8, 2, bins=(1, 3)).eval()
    x = torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        out = ppm(x)
    assert ppm.out_channels == 12 and out.shape == (1, 12, 5, 7)
    torch.testing.assert_close(out[:, :8], x, rtol=0, atol=0)
    pooled = out[:, 8:10, :1, :1]  # the 1x1 bin, up-sampled: constant over the map
    torch.testing.assert_close(out[:, 8:10], pooled.expand(-1, -1, 5, 7))
    assert not torch.allclose(out[:, 10:12], out[:, 10:12, :1, :1].expand(-1, -1, 5, 7))


class _Strided(nn.Module):
    """Two maps at strides 2 and 4 whose sides round up, as a padding backbone's do."""

    strides = (2, 4)

    def forward(self, x):
        return [nn.functional.avg_pool2d(x, s, s, ceil_mode=True) for s in self.strides]


class _Head(nn.Module):
    def __init__(self, in_index):
        super().__init__()
        self.in_index = in_index

    def forward(self, features):
        return features[self.in_index]


def test_segmentation_model_crop_resizes_to_the_covered_area():
    x = torch.randn(2, 1, 9, 13)
    model = SegmentationModel(_Strided(), _Head(0), [_Head(1)], aux_weight=0.3, crop=True)
    features = _Strided()(x)
    logits, aux = model.train().forward_with_aux(x)
    torch.testing.assert_close(logits, resize(features[0], (10, 14))[..., :9, :13])
    assert [w for w, _ in aux] == [0.3]
    torch.testing.assert_close(aux[0][1], resize(features[1], (12, 16))[..., :9, :13])
    assert model.eval().forward_with_aux(x)[1] == []
    plain = SegmentationModel(_Strided(), _Head(1))
    torch.testing.assert_close(plain(x), resize(features[1], (9, 13)))
