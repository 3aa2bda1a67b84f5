"""ViT/SETR and MiT/SegFormer: position embeddings, sequence reduction, checkpoint loading,
attention FLOPs counted by hand, parameter counts against the published ones."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from segbench.measure.flops import count_flops, count_params
from segbench.models import create_model
from segbench.models.backbones.mit import EfficientAttention, MixVisionTransformer
from segbench.models.backbones.vit import (
    VIT_SIZES,
    Attention,
    Block,
    VisionTransformer,
    resize_pos_embed,
)
from segbench.models.vit import SETR


def _tiny_vit(in_channels=3, img_size=64, **kw):
    return VisionTransformer(in_channels, embed_dim=32, depth=2, num_heads=2, img_size=img_size,
                             **kw)


def _tiny_mit(in_channels=3):
    return MixVisionTransformer(in_channels, dims=(8, 16, 24, 32), depths=(1, 2, 1, 1),
                                num_heads=(1, 2, 3, 4))


# position embeddings -------------------------------------------------------------------------

def test_pos_embed_resize_keeps_class_token_and_constant_maps():
    cls = torch.randn(1, 1, 8)
    tokens = torch.arange(8.0).repeat(1, 16, 1)  # 4x4 grid, channel c holds the value c everywhere
    out = resize_pos_embed(torch.cat([cls, tokens], 1), (6, 3), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 18, 8)
    torch.testing.assert_close(out[:, :1], cls)
    torch.testing.assert_close(out[:, 1:], torch.arange(8.0).repeat(1, 18, 1))


def test_pos_embed_resize_is_bicubic_and_identity_on_its_own_grid():
    pos = torch.randn(1, 16, 4)
    assert resize_pos_embed(pos, (4, 4), num_prefix_tokens=0) is pos
    grid = pos.reshape(1, 4, 4, 4).permute(0, 3, 1, 2)
    expected = nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resize_pos_embed(pos, (8, 8), 0),
                               expected.flatten(2).transpose(1, 2))


def test_vit_returns_token_maps_on_any_grid():
    vit = _tiny_vit(img_size=64, out_indices=(0, 1)).eval()  # learned on a 4x4 grid
    maps = vit(torch.randn(2, 3, 96, 48))
    assert [m.shape for m in maps] == [(2, 32, 6, 3)] * 2


def test_setr_decoders_and_aux_heads_keep_odd_input_sizes():
    for decoder, layers in [("naive", (4,)), ("pup", (4,)), ("mla", (1, 2, 3, 4))]:
        model = SETR(3, 1, size="tiny", depth=4, decoder=decoder, layers=layers, aux_layers=(2, 3),
                     channels=16, img_size=64)
        logits, aux = model.train().forward_with_aux(torch.randn(1, 1, 57, 71))
        assert logits.shape == (1, 3, 57, 71)
        assert [(w, a.shape) for w, a in aux] == [(0.4, (1, 3, 57, 71))] * 2
        assert model.eval()(torch.randn(1, 1, 57, 71)).shape == (1, 3, 57, 71)


# SegFormer sequence reduction --------------------------------------------------------------------

def test_mit_stage_shapes_round_up_at_every_stride():
    mit = _tiny_mit().eval()
    assert [m.shape for m in mit(torch.randn(1, 3, 57, 71))] == [
        (1, 8, 15, 18), (1, 16, 8, 9), (1, 24, 4, 5), (1, 32, 2, 3)]


@pytest.mark.parametrize("ratio", [8, 4, 2, 1])
def test_efficient_attention_keys_come_from_the_reduced_map(ratio):
    attn = EfficientAttention(dim=16, num_heads=2, sr_ratio=ratio)
    seen = {}
    attn.kv.register_forward_hook(lambda m, inputs, out: seen.update(kv=out.shape))
    out = attn(torch.randn(2, 32 * 24, 16), 32, 24)
    assert out.shape == (2, 32 * 24, 16)
    assert seen["kv"] == (2, (32 // ratio) * (24 // ratio), 32)
    assert hasattr(attn, "sr") == (ratio > 1)


# checkpoint loading ----------------------------------------------------------------------------

def test_vit_loads_timm_layout_with_report(tmp_path):
    source = _tiny_vit(in_channels=3, img_size=32)  # 2x2 grid, RGB, as an ImageNet checkpoint
    state = dict(source.state_dict())
    state["head.weight"], state["head.bias"] = torch.randn(10, 32), torch.randn(10)
    state["blocks.1.mlp.fc1.weight"] = torch.randn(64, 32)  # wrong shape: (128, 32) expected
    torch.save(state, tmp_path / "vit.pth")

    vit = _tiny_vit(in_channels=1, img_size=64)  # grey input, 4x4 grid
    report = vit.load_pretrained(tmp_path / "vit.pth")

    assert sorted(report.unexpected) == ["head.bias", "head.weight"]
    assert report.mismatched == [("blocks.1.mlp.fc1.weight", (64, 32), (128, 32))]
    assert report.missing == []
    assert report.adapted == ["patch_embed.proj.weight"]
    assert len(report.matched) == len(vit.state_dict()) - 1
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(vit.patch_embed.proj.weight,
                               source.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(vit.pos_embed, resize_pos_embed(source.pos_embed, (4, 4), 1))


def _official_to_hf(key: str) -> str:
    """The Hugging Face name of an official MiT key, written out rule by rule for the test."""
    stage = lambda m: str(int(m.group(1)) - 1)  # noqa: E731
    key = re.sub(r"^patch_embed(\d)\.norm\.",
                 lambda m: f"patch_embeddings.{stage(m)}.layer_norm.", key)
    key = re.sub(r"^patch_embed(\d)\.", lambda m: f"patch_embeddings.{stage(m)}.", key)
    key = re.sub(r"^block(\d)\.", lambda m: f"block.{stage(m)}.", key)
    key = re.sub(r"^norm(\d)\.", lambda m: f"layer_norm.{stage(m)}.", key)
    for old, new in [(".attn.q.", ".attention.self.query."), (".attn.sr.", ".attention.self.sr."),
                     (".attn.norm.", ".attention.self.layer_norm."),
                     (".attn.proj.", ".attention.output.dense."), (".norm1.", ".layer_norm_1."),
                     (".norm2.", ".layer_norm_2."), (".mlp.fc1.", ".mlp.dense1."),
                     (".mlp.fc2.", ".mlp.dense2.")]:
        key = key.replace(old, new)
    return "segformer.encoder." + key


@pytest.mark.parametrize("layout", ["official", "hf"])
def test_mit_loads_official_and_hugging_face_layouts(tmp_path, layout):
    source = _tiny_mit()
    state = {"backbone." + k: v for k, v in source.state_dict().items()}  # mmseg-style prefix
    state["decode_head.linear_pred.weight"] = torch.randn(2, 8, 1, 1)
    if layout == "hf":
        state = {}
        for key, value in source.state_dict().items():
            if ".attn.kv." in key:
                hf = _official_to_hf(key)
                k, v = value.chunk(2)
                state[hf.replace(".attn.kv.", ".attention.self.key.")] = k
                state[hf.replace(".attn.kv.", ".attention.self.value.")] = v
            else:
                state[_official_to_hf(key)] = value
        state["decode_head.linear_pred.weight"] = torch.randn(2, 8, 1, 1)
    torch.save(state, tmp_path / "mit.pth")

    target = _tiny_mit()
    report = target.load_pretrained(tmp_path / "mit.pth")
    assert report.unexpected == ["decode_head.linear_pred.weight"]
    assert report.missing == [] and report.mismatched == [] and report.adapted == []
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, msg=key)


def _decode_head_key(key: str, layout: str) -> str:
    """The Hugging Face or official name of a SegFormer decode-head key, rule by rule."""
    hf = [(r"^head\.linear_fuse\.0\.", "linear_fuse."), (r"^head\.linear_fuse\.1\.", "batch_norm."),
          (r"^head\.linear_pred\.", "classifier."), (r"^head\.", "")]
    official = [(r"^head\.linear_c\.(\d)\.", lambda m: f"linear_c{int(m[1]) + 1}."),
                (r"^head\.linear_fuse\.0\.", "linear_fuse.conv."),
                (r"^head\.linear_fuse\.1\.", "linear_fuse.bn."), (r"^head\.", "")]
    for pattern, replacement in hf if layout == "hf" else official:
        key, n = re.subn(pattern, replacement, key)
        if n:
            break
    return "decode_head." + key


@pytest.mark.parametrize("layout", ["official", "hf"])
def test_segformer_loads_a_whole_checkpoint_with_its_decode_head(tmp_path, layout):
    torch.manual_seed(0)
    source = create_model("segformer-b0", 4, in_channels=3)
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("head."):
            state[_decode_head_key(key, layout)] = value
        elif layout == "official":
            state[key] = value  # backbone.*, as mmseg saves it
        elif ".attn.kv." in key:
            hf = _official_to_hf(key.removeprefix("backbone."))
            k, v = value.chunk(2)
            state[hf.replace(".attn.kv.", ".attention.self.key.")] = k
            state[hf.replace(".attn.kv.", ".attention.self.value.")] = v
        else:
            state[_official_to_hf(key.removeprefix("backbone."))] = value
    torch.save(state, tmp_path / "segformer.pth")
    torch.manual_seed(1)
    target = create_model("segformer-b0", 4, in_channels=3)
    report = target.load_pretrained(tmp_path / "segformer.pth", verbose=False)
    assert report.unexpected == [] and report.missing == [] and report.mismatched == []
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("vit-small", 2, pretrained=str(tmp_path / "nope.pth"))


# attention FLOPs by hand (fvcore convention: 1 multiply-add = 1 FLOP) ------------------------

class _WithGrid(nn.Module):
    def __init__(self, module, h, w):
        super().__init__()
        self.module, self.h, self.w = module, h, w

    def forward(self, x):
        return self.module(x, self.h, self.w)


def test_vit_attention_and_block_flops_match_hand_count():
    n, c = 197, 64
    qkv, scores, mix, proj = n * c * 3 * c, n * n * c, n * n * c, n * c * c
    x = torch.randn(1, n, c)
    result = count_flops(Attention(c, num_heads=4), x)
    assert result["flops"] == qkv + scores + mix + proj
    assert result["flops_uncounted_ops"] == ""
    layer_norm = 5 * n * c  # fvcore's convention for an affine LayerNorm
    mlp = 2 * n * c * 4 * c
    assert count_flops(Block(c, num_heads=4), x)["flops"] == (
        qkv + scores + mix + proj + 2 * layer_norm + mlp)


@pytest.mark.parametrize("ratio", [4, 1])
def test_segformer_efficient_attention_flops_match_hand_count(ratio):
    h, w, c = 32, 16, 32
    n, reduced = h * w, (h // ratio) * (w // ratio)
    expected = (n * c * c  # q
                + (reduced * c * c * ratio**2 + 5 * reduced * c if ratio > 1 else 0)  # sr conv, LN
                + reduced * c * 2 * c  # kv
                + 2 * n * reduced * c  # QK^T and AV over N/R^2 keys
                + n * c * c)  # proj
    module = _WithGrid(EfficientAttention(c, num_heads=2, sr_ratio=ratio), h, w)
    result = count_flops(module, torch.randn(1, n, c))
    assert result["flops"] == expected
    assert result["flops_uncounted_ops"] == ""


# parameter counts of the paper defaults vs the published ones (built on the meta device) -------

def _params_m(build) -> float:
    with torch.device("meta"):
        return count_params(build()) / 1e6


def test_vit_b16_matches_published_86_6m():
    # 86.6M (timm vit_base_patch16_224) includes the 1000-class ImageNet head: 768*1000 + 1000.
    encoder = _params_m(lambda: VisionTransformer(3, img_size=224, **VIT_SIZES["base"]))
    assert abs(encoder + 0.769 - 86.6) < 0.05


@pytest.mark.parametrize("variant,published", [("b0", 3.8), ("b1", 13.7), ("b2", 27.5),
                                               ("b3", 47.3), ("b4", 64.1), ("b5", 84.7)])
def test_segformer_matches_paper_table_1(variant, published):
    # Table 1 counts encoder + decoder for ADE20K (150 classes, RGB).
    total = _params_m(lambda: create_model(f"segformer-{variant}", 150, in_channels=3))
    assert abs(total - published) < 0.05


def test_setr_pup_matches_mmseg_size():
    # mmseg's SETR-PUP (ViT-L/16 at 768x768, 19 classes, 3 auxiliary heads): about 318M.
    total = _params_m(lambda: create_model("vit", 19, in_channels=3, img_size=768))
    assert abs(total - 318) / 318 < 0.01
