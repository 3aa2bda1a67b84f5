"""DeepLab v1/v2/v3/v3+ and Aligned Xception: the paper facts the shared model tests can't see."""

from __future__ import annotations

import pytest
import torch
import torchvision_layouts
from torch import nn

from segbench.layers import SeparableConv2d, set_kernels
from segbench.measure.flops import count_params
from segbench.models import create_model
from segbench.models.backbones import ResNet, vgg16
from segbench.models.backbones._pretrained import PretrainedMismatchError
from segbench.models.backbones.xception import AlignedXception
from segbench.models.deeplab import (
    ASPP,
    ASPPSum,
    MeanFieldCRF,
    deeplab_v3,
    deeplab_v3plus,
)

TINY_RESNET = dict(depth=50, base_width=8, blocks=(1, 1, 1, 1))
SMALL_XCEPTION = dict(stem=(8, 16), entry=(16, 32, 64), middle_blocks=2,
                      exit_widths=(96, 128, 128, 160))


def _paper_model(name: str) -> nn.Module:
    """A paper default for counting only: built on the meta device, no memory, no init cost."""
    with torch.device("meta"):
        return create_model(name, num_classes=21, in_channels=3)


def _atrous_rates(aspp: ASPP) -> tuple[int, ...]:
    """Dilations of the 3x3 branches, read off the convs themselves."""
    return tuple(m.dilation[0] for branch in aspp.branches[1:-1] for m in branch.modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_v3_aspp_rates_follow_output_stride(output_stride, rates):
    model = deeplab_v3(2, 1, output_stride=output_stride, **TINY_RESNET)
    assert model.backbone.strides[-1] == output_stride
    assert _atrous_rates(model.head[0]) == rates


def test_v3plus_aspp_rates_follow_backbone_stride_and_are_separable():
    for output_stride, rates in [(16, (6, 12, 18)), (8, (12, 24, 36))]:
        backbone = AlignedXception(1, output_stride, **SMALL_XCEPTION)
        aspp = deeplab_v3plus(2, backbone, channels=32).head.aspp
        assert _atrous_rates(aspp) == rates
        assert all(isinstance(b, SeparableConv2d) for b in aspp.branches[1:-1])


def test_v2_aspp_sums_four_class_score_branches():
    head = _paper_model("deeplabv2").head
    assert isinstance(head, ASPPSum)
    assert [b.dilation[0] for b in head.branches] == [6, 12, 18, 24]
    assert all(b.in_channels == 2048 and b.out_channels == 21 for b in head.branches)
    head = ASPPSum(8, 3, rates=(1, 2)).eval()
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(head([x]), head.branches[0](x) + head.branches[1](x))


def test_v3plus_decoder_projects_stride4_features_to_48_channels():
    model = create_model("deeplabv3plus-small", num_classes=3).eval()
    seen = {}
    model.head.low_level.register_forward_hook(lambda m, i, o: seen.update(i=i[0], o=o))
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 80)).shape == (1, 3, 64, 80)
    assert seen["o"].shape == (1, 48, 16, 20)
    assert seen["i"].shape[1] == model.backbone.channels[0]
    paper = _paper_model("deeplabv3plus").head
    assert (paper.low_level[0].in_channels, paper.low_level[0].out_channels) == (256, 48)
    assert paper.fuse[0].depthwise.in_channels == 256 + 48


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_xception_output_stride(output_stride):
    backbone = AlignedXception(2, output_stride, **SMALL_XCEPTION).eval()
    with torch.no_grad():
        low, out = backbone(torch.randn(1, 2, 64, 64))
    assert backbone.strides == (4, output_stride)
    assert low.shape == (1, 32, 16, 16)
    assert out.shape == (1, 160, 64 // output_stride, 64 // output_stride)
    # Strides given up become atrous rates of the units after them (reference xception_65).
    last_rate = backbone.blocks[-1].convs[0].dilation
    assert last_rate == {8: 4, 16: 2, 32: 1}[output_stride]


def test_xception65_layout():
    backbone = _paper_model("deeplabv3plus").backbone
    assert len(backbone.blocks) == 3 + 16 + 2
    assert [b.convs[-1].pointwise.out_channels for b in backbone.blocks[:3]] == [128, 256, 728]
    assert [c.pointwise.out_channels for c in backbone.blocks[-1].convs] == [1536, 1536, 2048]
    assert backbone.blocks[-1].residual is False
    assert not any(isinstance(m, nn.MaxPool2d) for m in backbone.modules())


def test_set_kernels_reaches_every_v3plus_separable_conv():
    # Xception-65: 3 entry + 16 middle + 2 exit blocks of 3 separable convs; ASPP 3; decoder 2.
    paper = _paper_model("deeplabv3plus")
    assert sum(isinstance(m, SeparableConv2d) for m in paper.modules()) == 63 + 3 + 2
    resnet = _paper_model("deeplabv3plus-resnet101")
    assert sum(isinstance(m, SeparableConv2d) for m in resnet.modules()) == 3 + 2
    small = set_kernels(create_model("deeplabv3plus-small", num_classes=2), "triton")
    kernels = {m.kernels for m in small.modules() if isinstance(m, SeparableConv2d)}
    assert kernels == {"triton"}


def _uniform_case(height=15, width=15, margin=2.0):
    """Class 0 everywhere with `margin` logits, except the centre pixel, which says class 1."""
    logits = torch.zeros(1, 2, height, width)
    logits[:, 0] = margin
    logits[:, :, height // 2, width // 2] = torch.tensor([0.0, margin])
    return logits


def test_crf_relabels_a_single_wrong_pixel_in_a_uniform_region():
    logits = _uniform_case()
    assert logits.argmax(1).sum() == 1
    out = MeanFieldCRF(iterations=5)(logits, torch.zeros(1, 1, 15, 15))
    assert out.shape == logits.shape
    assert out.argmax(1).sum() == 0


@pytest.mark.parametrize("contrast, kept", [(3.0, True), (0.0, False)])
def test_crf_keeps_a_thin_structure_only_where_the_image_shows_it(contrast, kept):
    image = torch.zeros(1, 1, 16, 16)
    image[..., 7:9] = contrast
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 0] = 1.0
    logits[:, :, :, 7:9] = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    out = MeanFieldCRF()(logits, image)
    assert torch.equal(out.argmax(1), logits.argmax(1)) == kept


def test_crf_model_output_is_log_probability_in_eval_only():
    torch.manual_seed(0)
    model = create_model("deeplabv1-small", num_classes=3, crf=True)
    x = torch.randn(1, 1, 33, 41)
    with torch.no_grad():
        out = model.eval()(x)
        raw = model.train()(x)
    assert out.shape == raw.shape == (1, 3, 33, 41)
    assert (out <= 0).all()
    torch.testing.assert_close(out.logsumexp(1), torch.zeros(1, 33, 41), atol=1e-5, rtol=0)
    assert not torch.allclose(raw.logsumexp(1), torch.zeros(1, 33, 41), atol=1e-2)


# Published parameter counts, 21 VOC classes, RGB input:
# - torchvision deeplabv3_resnet101 / _resnet50: 60,996,202 / 42,004,074 including the auxiliary
#   FCNHead(1024) on layer3 (2,365,205 parameters), which the paper's model does not have;
# - DeepLab-LargeFOV (VGG16 convs 14.71M + fc6 3x3x512x1024 + fc7 + fc8): ~20.5M;
# - DeepLab v2 ResNet-101: the 42.5M backbone + four 3x3x2048x21 ASPP-L branches (1.55M);
# - DeepLab v3+ Xception-65 in the reference implementation: ~41M.
TORCHVISION_AUX_HEAD = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21


@pytest.mark.parametrize("name, expected, tolerance", [
    ("deeplabv3", 60_996_202 - TORCHVISION_AUX_HEAD, 0),
    ("deeplabv3-os8", 60_996_202, 0),
    ("deeplabv3-resnet50", 42_004_074 - TORCHVISION_AUX_HEAD, 0),
    ("deeplabv1", 20.5e6, 0.05e6),
    ("deeplabv2", 42_500_160 + 4 * (2048 * 9 * 21 + 21), 0),
    ("deeplabv3plus", 41.0e6, 0.1e6),
])  # fmt: skip
def test_paper_defaults_match_published_parameter_counts(name, expected, tolerance):
    assert abs(count_params(_paper_model(name)) - expected) <= tolerance


def test_load_pretrained_takes_torchvision_layout(tmp_path):
    model = create_model("deeplabv1-small", num_classes=2, in_channels=3)
    state = vgg16(in_channels=3, width_mult=1 / 8).state_dict()
    state["classifier.0.weight"] = torch.randn(4096, 8)  # torchvision's fc6: not DeepLab's
    torch.save(state, tmp_path / "vgg.pth")
    report = model.load_pretrained(tmp_path / "vgg.pth")
    assert report.unexpected == ["classifier.0.weight"] and not report.missing
    torch.testing.assert_close(model.backbone.features[0].weight, state["features.0.weight"])

    model = create_model("deeplabv2-small", num_classes=2, in_channels=1)
    state = ResNet(50, 3, base_width=16, blocks=(1, 1, 1, 1)).state_dict()
    torch.save(state, tmp_path / "resnet.pth")
    report = model.load_pretrained(tmp_path / "resnet.pth")
    assert report.adapted == ["conv1.weight"] and not report.missing
    torch.testing.assert_close(model.backbone.layer4[0].conv2.weight,
                               state["layer4.0.conv2.weight"])


def test_torchvision_deeplabv3_resnet101_loads_every_tensor_into_deeplabv3_os8(tmp_path):
    state = torchvision_layouts.random_state(torchvision_layouts.deeplabv3_resnet101())
    torch.save(state, tmp_path / "deeplabv3_resnet101.pth")
    model = create_model("deeplabv3-os8", num_classes=21, in_channels=3)
    report = model.load_pretrained(tmp_path / "deeplabv3_resnet101.pth", verbose=False)
    assert (report.missing, report.unexpected, report.mismatched, report.adapted) == ([],) * 4
    sources = torchvision_layouts.source_of_every_tensor(model, state)
    assert None not in sources.values()  # by value: every tensor of the model came from the file
    assert sorted(sources.values()) == sorted(state)  # and every file tensor went somewhere
    assert {ours: sources[ours] for ours in [
        "backbone.layer4.2.conv3.weight", "head.0.branches.4.1.1.running_var",
        "head.0.project.0.0.weight", "head.2.bias", "aux_heads.0.0.1.weight"]} == {
        "backbone.layer4.2.conv3.weight": "backbone.layer4.2.conv3.weight",
        "head.0.branches.4.1.1.running_var": "classifier.0.convs.4.2.running_var",
        "head.0.project.0.0.weight": "classifier.0.project.0.weight",
        "head.2.bias": "classifier.4.bias",
        "aux_heads.0.0.1.weight": "aux_classifier.1.weight"}
    assert model.backbone.strides[-1] == 8 and _atrous_rates(model.head[0]) == (12, 24, 36)


def test_torchvision_checkpoint_without_aux_head_model_reports_the_aux_keys(tmp_path):
    layout = torchvision_layouts.resnet("backbone.", blocks=(1, 1, 1, 1), width=16)
    layout |= torchvision_layouts.deeplab_head(512, 2, channels=64)  # layer4: 16 * 8 * 4
    layout |= torchvision_layouts.fcn_head("aux_classifier.", 256, 2)
    state = torchvision_layouts.random_state(layout)
    torch.save(state, tmp_path / "tv.pth")
    model = create_model("deeplabv3-small", num_classes=2, in_channels=3)
    report = model.load_pretrained(tmp_path / "tv.pth", verbose=False)
    assert sorted(report.unexpected) == sorted(k for k in state if k.startswith("aux_classifier"))
    assert report.missing == [] and report.mismatched == []
    torch.testing.assert_close(model.head[2].weight, state["classifier.4.weight"])


def test_weights_that_fit_nothing_are_refused_and_change_nothing(tmp_path):
    torch.save({"encoder.weight": torch.randn(4, 4), "decoder.bias": torch.randn(4)},
               tmp_path / "unrelated.pth")
    torch.save({"backbone.stem.weight": torch.randn(4, 4)}, tmp_path / "whole.pth")
    with pytest.raises(PretrainedMismatchError,
                       match=r"fit 0 of the \d+ tensors of the ResNet, fewer than "
                             r"MIN_MATCHED_SHARE = 50%.*0 matched"):
        create_model("deeplabv3-small", 2, pretrained=str(tmp_path / "unrelated.pth"))
    model = create_model("deeplabv3-small", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PretrainedMismatchError, match="tensors of the DeepLab") as refused:
        model.load_pretrained(tmp_path / "whole.pth")
    assert refused.value.report.unexpected == ["backbone.stem.weight"]
    assert isinstance(refused.value, ValueError)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["deeplabv2-small", "deeplabv3-small", "deeplabv3plus-small"])
def test_builders_take_output_stride(name):
    model = create_model(name, 2, output_stride=8).eval()
    assert model.backbone.strides[-1] == 8
    with torch.no_grad():
        assert model(torch.randn(1, 1, 33, 35)).shape == (1, 2, 33, 35)


def test_output_stride_scales_the_rates_and_v1_refuses_another_stride():
    with torch.device("meta"):
        v2 = create_model("deeplabv2", 21, output_stride=16)
        v3 = create_model("deeplabv3-resnet50", 21, output_stride=8)
    assert [b.dilation[0] for b in v2.head.branches] == [3, 6, 9, 12]
    assert _atrous_rates(v3.head[0]) == (12, 24, 36)
    with pytest.raises(ValueError, match="output stride 8 only"):
        create_model("deeplabv1-small", 2, output_stride=16)
