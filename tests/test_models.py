"""One test class for every registered model (the smp BaseModelTester pattern).

Small (cpu=True) variants run forward/backward here; every registered variant is built and
run once at a small input under the `slow` marker.
"""

from __future__ import annotations

import pytest
import torch

from segbench.measure.flops import count_flops
from segbench.models import (
    ARCHITECTURES,
    _registry,
    create_model,
    list_models,
    model_spec,
    registered_architectures,
)

SMALL = [n for n in list_models() if model_spec(n).cpu]
ALL = list_models()


def _input(batch, channels, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, h, w, generator=g)


@pytest.mark.parametrize("name", SMALL)
class TestSmallModel:
    def test_output_shape_odd_sizes(self, name):
        model = create_model(name, num_classes=3, in_channels=1).eval()
        with torch.no_grad():
            for h, w in [(64, 64), (57, 71)]:
                out = model(_input(1, 1, h, w))
                assert isinstance(out, torch.Tensor)
                assert out.shape == (1, 3, h, w)
                assert torch.isfinite(out).all()

    def test_three_input_channels(self, name):
        model = create_model(name, num_classes=4, in_channels=3).eval()
        with torch.no_grad():
            assert model(_input(2, 3, 48, 48)).shape == (2, 4, 48, 48)

    def test_backward_reaches_every_parameter(self, name):
        torch.manual_seed(0)
        model = create_model(name, num_classes=3, in_channels=1).train()
        aux = getattr(model, "forward_with_aux", None)
        if aux is not None:
            out, extras = aux(_input(2, 1, 64, 64))
            loss = out.square().mean() + sum(w * a.square().mean() for w, a in extras)
        else:
            loss = model(_input(2, 1, 64, 64)).square().mean()
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient: {missing[:5]}"

    def test_flops_are_countable(self, name):
        model = create_model(name, num_classes=3, in_channels=1)
        result = count_flops(model, _input(1, 1, 64, 64))
        assert result["flops"] > 0
        assert result["flops_uncounted_ops"] == "", result["flops_uncounted_ops"]

    def test_eval_is_deterministic(self, name):
        model = create_model(name, num_classes=3, in_channels=1).eval()
        x = _input(1, 1, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_every_variant_builds_and_runs(name):
    model = create_model(name, num_classes=2, in_channels=1).eval()
    with torch.no_grad():
        assert model(_input(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_unet_matches_paper_parameter_count():
    # 31.04M parameters is the figure for the 64-channel, BN, transposed-conv U-Net.
    n = sum(p.numel() for p in create_model("unet", 2, in_channels=1).parameters())
    assert abs(n / 1e6 - 31.04) < 0.05


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'nope'; valid: .*unet"):
        create_model("nope", 3)


def test_architectures_are_the_registered_families_in_import_order():
    assert ARCHITECTURES == ("fcn", "unet", "segnet", "deeplabv1", "deeplabv2", "deeplabv3",
                             "deeplabv3plus", "pspnet", "vit", "segformer", "swin")
    assert ARCHITECTURES == tuple(dict.fromkeys(model_spec(n).arch for n in list_models()))


def test_a_new_architecture_is_one_registration(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    monkeypatch.setattr(_registry, "_ARCHITECTURES", list(_registry._ARCHITECTURES))
    _registry.register_model("toynet", default=True)(lambda num_classes, in_channels=1: None)
    assert registered_architectures()[-1] == "toynet"
    assert model_spec("toynet").name == "toynet" and list_models("toynet") == ["toynet"]
