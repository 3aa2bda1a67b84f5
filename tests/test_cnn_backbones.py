"""Shared CNN backbones (VGG16, dilated ResNet), their torchvision-layout loading, and the
FCN / SegNet / PSPNet specifics the generic model tests do not see."""

from __future__ import annotations

import pytest
import torch
import torchvision_layouts

from segbench.layers import set_kernels
from segbench.measure.flops import count_params
from segbench.models import create_model
from segbench.models.backbones import ResNet, load_backbone_state, resnet50, vgg16, vgg16_bn
from segbench.models.fcn import bilinear_upsampling

# torchvision's vgg16 / vgg16_bn `features` indices of the 13 convs
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]


def tiny_resnet(**kw):
    return ResNet(50, base_width=8, blocks=(1, 2, 1, 2), **kw)


def _save(state, tmp_path, name="weights.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("output_stride, strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)),
                                                    (8, (4, 8, 8, 8))])
def test_resnet_output_strides(output_stride, strides):
    model = tiny_resnet(output_stride=output_stride).eval()
    assert model.strides == strides
    assert model.channels == (32, 64, 128, 256)
    with torch.no_grad():
        features = model(torch.randn(1, 1, 64, 64))
    assert [f.shape[1] for f in features] == list(model.channels)
    assert [64 // f.shape[-1] for f in features] == list(strides)


def test_resnet_dilation_as_torchvision_and_multi_grid():
    model = tiny_resnet(output_stride=8)
    assert [b.conv2.dilation[0] for b in model.layer3] == [1]
    assert [b.conv2.dilation[0] for b in model.layer4] == [2, 4]
    assert all(b.conv2.stride == (1, 1) for b in [*model.layer3, *model.layer4])
    grid = tiny_resnet(output_stride=16, multi_grid=(1, 2))
    assert [b.conv2.dilation[0] for b in grid.layer4] == [2, 4]
    with pytest.raises(ValueError, match="output_stride"):
        tiny_resnet(output_stride=4)


def test_backbone_keys_follow_torchvision():
    keys = set(resnet50(in_channels=3).state_dict())
    assert len(keys) == 318  # torchvision resnet50's 320 minus fc.weight, fc.bias
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.num_batches_tracked", "layer4.2.conv3.weight",
            "layer3.5.bn2.bias"} <= keys
    assert "layer2.1.downsample.0.weight" not in keys
    convs = [k for k in vgg16().state_dict() if k.endswith(".weight")]
    assert convs == [f"features.{i}.weight" for i in VGG16_CONVS]
    bn = vgg16_bn().state_dict()
    assert [k for k in bn if k.endswith(".weight") and bn[k].dim() == 4] == \
        [f"features.{i}.weight" for i in VGG16_BN_CONVS]
    assert all(f"features.{i + 1}.running_mean" in bn for i in VGG16_BN_CONVS)


def test_vgg_pool_and_dilation_options():
    x = torch.randn(1, 1, 64, 64)
    largefov = vgg16(width_mult=1 / 16, pools=((3, 2, 1),) * 3 + ((3, 1, 1),) * 2,
                     dilations=(1, 1, 1, 1, 2))
    assert largefov.strides == (2, 4, 8, 8, 8)
    assert [f.shape[-1] for f in largefov(x)] == [32, 16, 8, 8, 8]
    unpooled = vgg16_bn(width_mult=1 / 16, pools=(None,) * 5)
    assert unpooled(x)[-1].shape == (1, 32, 64, 64)
    assert unpooled.conv_block(1, torch.randn(1, 4, 16, 16)).shape == (1, 8, 16, 16)


def test_resnet_state_loads_with_report_and_rgb_to_grey(tmp_path):
    source = tiny_resnet(in_channels=3).state_dict()
    source["fc.weight"], source["fc.bias"] = torch.randn(10, 256), torch.randn(10)
    target = tiny_resnet(in_channels=1)
    report = load_backbone_state(target, _save(source, tmp_path), verbose=False)
    assert report.unexpected == ["fc.weight", "fc.bias"]
    assert report.missing == [] and report.mismatched == []
    assert report.adapted == ["conv1.weight"]
    assert len(report.matched) == len(target.state_dict())
    state = target.state_dict()
    torch.testing.assert_close(state["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(state["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])


def test_report_lists_missing_and_mismatched(tmp_path, capsys):
    source = tiny_resnet(in_channels=3).state_dict()
    del source["layer2.0.bn1.weight"]
    source["layer1.0.conv1.weight"] = torch.randn(9, 16, 1, 1)
    target = tiny_resnet(in_channels=2)
    before = target.state_dict()["layer1.0.conv1.weight"].clone()
    report = load_backbone_state(target, _save(source, tmp_path))
    assert report.missing == ["layer2.0.bn1.weight"]
    assert report.mismatched == [("layer1.0.conv1.weight", (9, 16, 1, 1), (8, 8, 1, 1))]
    torch.testing.assert_close(target.state_dict()["layer1.0.conv1.weight"], before)
    per_channel = source["conv1.weight"].sum(1) / 2
    for c in range(2):
        torch.testing.assert_close(target.conv1.weight[:, c], per_channel)
    assert "1 missing" in capsys.readouterr().out


def test_missing_file_and_bad_content_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_backbone_state(tiny_resnet(), tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="state_dict"):
        load_backbone_state(tiny_resnet(), _save([1, 2], tmp_path))


def test_fcn_loads_torchvision_vgg_with_fc_as_conv(tmp_path):
    model = create_model("fcn-small", 3, in_channels=3)
    source = {f"features.{k}": v for k, v in model.backbone.features.state_dict().items()}
    fc = model.fc6.out_channels
    fc6 = torch.randn(fc, model.fc6.in_channels * 49)  # Linear over flattened (C, 7, 7)
    source.update({"classifier.0.weight": fc6, "classifier.0.bias": torch.randn(fc),
                   "classifier.3.weight": torch.randn(fc, fc), "classifier.3.bias": torch.randn(fc),
                   "classifier.6.weight": torch.randn(1000, fc),
                   "classifier.6.bias": torch.randn(1000)})
    report = model.load_pretrained(_save(source, tmp_path))
    assert report.adapted == ["fc6.weight", "fc7.weight"]
    assert report.unexpected == ["classifier.6.weight", "classifier.6.bias"]
    assert all(k.startswith(("score", "upscore")) for k in report.missing)
    torch.testing.assert_close(model.fc6.weight[:, :, 2, 5], fc6.view(fc, -1, 7, 7)[:, :, 2, 5])


def test_create_model_pretrained_loads_backbone(tmp_path):
    source = ResNet(50, in_channels=3, base_width=16, blocks=(1, 1, 1, 1)).state_dict()
    model = create_model("pspnet-small", 3, in_channels=1,
                         pretrained=str(_save(source, tmp_path)))
    grey = source["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(model.backbone.conv1.weight, grey)


def test_fcn_upsampling_is_bilinear_and_skips_follow_variant():
    up = bilinear_upsampling(2, 8, learned=False)
    out = up(torch.ones(1, 2, 4, 4))
    assert out.shape == (1, 2, 32, 32) and not up.weight.requires_grad
    torch.testing.assert_close(out[..., 4:-4, 4:-4], torch.ones(1, 2, 24, 24))
    skips = {n: len(create_model(n, 2, width_mult=1 / 16).score_pools)
             for n in ("fcn-32s", "fcn-16s", "fcn-8s")}
    assert skips == {"fcn-32s": 0, "fcn-16s": 1, "fcn-8s": 2}


def test_set_kernels_reaches_segnet_pool_pair_and_decoder_mirrors_encoder():
    model = set_kernels(create_model("segnet-small", 5), "triton")
    assert all(p.kernels == "triton" for p in model.pools)
    assert all(b.unpool.kernels == "triton" for b in model.decoder)
    assert [len(b.convs) for b in model.decoder] == [3, 3, 3, 2, 2]
    assert model.decoder[-1].convs[-1].out_channels == 5


def test_pspnet_aux_head_only_in_training():
    model = create_model("pspnet-small", 3).train()
    x = torch.randn(2, 1, 40, 52)
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 3, 40, 52)
    assert [(w, a.shape) for w, a in aux] == [(0.4, (2, 3, 40, 52))]
    assert model.eval().forward_with_aux(x)[1] == []


# Published parameter counts (millions) of the paper defaults, and our tolerance to them:
# FCN-8s: Caffe voc-fcn8s, 21 classes, incl. the fixed 8x deconvolution (134.5M);
# SegNet: 11 CamVid classes, 29.46M (ENet paper Table 3; SegNet paper: 29.5M);
# ResNet-50 without fc: torchvision's 25.557M - 2.049M fc = 23.508M;
# PSPNet-R50-D8 in mmseg incl. its aux head ~49.0M (mmseg's deep stem adds ~0.02M);
# torchvision fcn_resnet50 (21 classes) 35.322218M minus its aux head's 2.365205M.
@pytest.mark.parametrize("name, classes, published, tol", [
    ("fcn-8s", 21, 134.5, 0.05), ("segnet", 11, 29.46, 0.05), ("pspnet", 21, 49.0, 0.1),
    ("fcn-resnet50", 21, 32.957013, 1e-6),
])  # fmt: skip
def test_paper_default_parameter_counts(name, classes, published, tol):
    params = count_params(create_model(name, classes, in_channels=3)) / 1e6
    assert abs(params - published) < tol, f"{name}: {params:.3f}M vs published {published}M"


def test_resnet50_backbone_parameter_count():
    assert abs(count_params(resnet50(in_channels=3)) / 1e6 - 23.508) < 0.001


@pytest.mark.parametrize("aux_head", [False, True])
def test_fcn_resnet50_loads_a_whole_torchvision_checkpoint(tmp_path, aux_head):
    # torchvision fcn_resnet50's layout at 1/8 width: layer3 128, layer4 256 channels
    layout = torchvision_layouts.resnet("backbone.", blocks=(1, 1, 1, 1), width=8)
    layout |= torchvision_layouts.fcn_head("classifier.", 256, 3)
    layout |= torchvision_layouts.fcn_head("aux_classifier.", 128, 3)
    state = torchvision_layouts.random_state(layout)
    torch.save(state, tmp_path / "fcn.pth")
    model = create_model("fcn-resnet50", 3, in_channels=3, base_width=8, blocks=(1, 1, 1, 1),
                         aux_head=aux_head)
    report = model.load_pretrained(tmp_path / "fcn.pth", verbose=False)
    sources = torchvision_layouts.source_of_every_tensor(model, state)
    assert None not in sources.values() and report.missing == [] and report.mismatched == []
    aux_keys = sorted(k for k in state if k.startswith("aux_classifier."))
    assert sorted(report.unexpected) == ([] if aux_head else aux_keys)
    assert sources["head.0.1.running_mean"] == "classifier.1.running_mean"
    assert sources["head.2.weight"] == "classifier.4.weight"


def test_fcn_resnet50_with_aux_head_is_torchvision_fcn_resnet50():
    with torch.device("meta"):
        model = create_model("fcn-resnet50", 21, in_channels=3, aux_head=True)
    assert count_params(model) == 35_322_218
