"""Swin Transformer + UPerNet: windows, shift mask, relative positions, padding, checkpoint
loading, FLOP count of the window attention, parameter counts against the paper."""

from __future__ import annotations

import re

import pytest
import torch

from segbench.layers import WindowAttentionCore, set_kernels
from segbench.measure.flops import count_flops
from segbench.models import create_model
from segbench.models.backbones.swin import (
    SWIN_CONFIGS,
    PatchMerging,
    SwinBlock,
    SwinTransformer,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_and_shift,
    window_partition,
    window_reverse,
)

MINI = dict(SWIN_CONFIGS["mini"], drop_path_rate=0.0)


def _mini(seed=0, **kw):
    torch.manual_seed(seed)
    return SwinTransformer(**(dict(MINI, in_channels=1) | kw)).eval()


def test_window_partition_round_trip_and_order():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 6, 16, 5)
    torch.testing.assert_close(windows[1], x[0, :4, 4:8].reshape(16, 5))  # row-major windows
    torch.testing.assert_close(windows[6], x[1, :4, :4].reshape(16, 5))  # batch outermost
    torch.testing.assert_close(window_reverse(windows, 4, 8, 12), x, rtol=0, atol=0)


def test_shift_mask_matches_hand_built_regions():
    # 8x8 map, window 4, shift 2: rows/cols [0,4) [4,6) [6,8) are regions 0, 1, 2 of each side.
    labels = torch.tensor([
        [0] * 16,
        [1, 1, 2, 2] * 4,
        [3] * 8 + [6] * 8,
        [4, 4, 5, 5] * 2 + [7, 7, 8, 8] * 2,
    ])  # fmt: skip
    expected = torch.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
    torch.testing.assert_close(shifted_window_mask(8, 8, 4, 2), expected, rtol=0, atol=0)


def test_shift_mask_of_padded_map_has_one_window_per_padded_tile():
    mask = shifted_window_mask(9, 10, 7, 3)  # padded to 14 x 14
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all() and (mask[3] != 0).any()


def test_relative_position_index():
    # window 2, tokens (0,0) (0,1) (1,0) (1,1); table index (dh + 1) * 3 + (dw + 1)
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)
    index = relative_position_index(7)
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 13**2 - 1
    assert index.unique().numel() == 13**2 and (index.diagonal() == 6 * 13 + 6).all()
    # a 3x3 window inside a 7-table reads the entries of its offsets (|d| <= 2) only
    small = relative_position_index(3, table_window=7)
    assert small[0, 8] == (0 - 2 + 6) * 13 + (0 - 2 + 6)


def test_window_and_shift():
    assert window_and_shift(16, 16, 7) == (7, 3)
    assert window_and_shift(8, 30, 7) == (7, 3)
    assert window_and_shift(7, 7, 7) == (7, 0)  # resolution == window: no shift
    assert window_and_shift(4, 5, 7) == (4, 0)  # smaller: the window shrinks


def _naive_attention(attn: WindowAttention, x, window, mask=None):
    """softmax(q k^T * scale + bias + mask) v with the bias read pair by pair from the table."""
    B, N, C = x.shape
    h, d, M = attn.num_heads, C // attn.num_heads, attn.window
    q, k, v = attn.qkv(x).view(B, N, 3, h, d).permute(2, 0, 3, 1, 4)
    bias = torch.empty(h, N, N)
    for i in range(N):
        for j in range(N):
            dh, dw = i // window - j // window, i % window - j % window
            row = (dh + M - 1) * (2 * M - 1) + dw + M - 1
            bias[:, i, j] = attn.relative_position_bias_table[row]
    scores = q @ k.transpose(-1, -2) * d**-0.5 + bias
    if mask is not None:
        scores = scores + mask.repeat(B // mask.shape[0], 1, 1).unsqueeze(1)
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("window", [4, 3])  # the module's own window, and a shrunk one
def test_window_attention_matches_naive_formula(window):
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, window=4)
    torch.nn.init.normal_(attn.relative_position_bias_table)
    mask = shifted_window_mask(2 * window, 2 * window, window, 1)  # 4 windows
    x = torch.randn(2 * 4, window * window, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), _naive_attention(attn, x, window, mask))
        torch.testing.assert_close(attn(x), _naive_attention(attn, x, window))


def test_unshifted_block_attends_within_windows_only():
    torch.manual_seed(0)
    block = SwinBlock(16, 2, window=7).eval()
    x = torch.randn(1, 7, 14, 16)
    with torch.no_grad():
        whole = block(x, 7, 0, None)
        halves = torch.cat([block(x[:, :, :7], 7, 0, None), block(x[:, :, 7:], 7, 0, None)], 2)
    torch.testing.assert_close(whole, halves)


def test_shifted_block_mixes_tokens_of_one_region_only():
    # 14x14, window 7, shift 3: token (0, 0) shares its shifted window with rows/cols 10..13 and
    # 0..2, but the mask lets it reach only its own region, rows and cols 0..2.
    torch.manual_seed(0)
    block = SwinBlock(16, 2, window=7).eval()
    mask = shifted_window_mask(14, 14, 7, 3)
    x = torch.randn(1, 14, 14, 16)
    poked = x.clone()
    poked[0, 0, 0, 0] += 1.0
    with torch.no_grad():
        changed = (block(poked, 7, 3, mask) - block(x, 7, 3, mask)).abs().amax(-1)[0] > 1e-6
    expected = torch.zeros(14, 14, dtype=torch.bool)
    expected[:3, :3] = True
    assert torch.equal(changed, expected)


def test_patch_merging_concatenates_in_official_order():
    merging = PatchMerging(1)
    seen = []
    merging.norm.register_forward_hook(lambda _, args, __: seen.append(args[0]))
    merging(torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 2, 2, 1))  # x[h, w] = 2h + w
    assert seen[0].flatten().tolist() == [0.0, 2.0, 1.0, 3.0]  # (0,0) (1,0) (0,1) (1,1)


def _attention_calls(model, x):
    """(tokens per window, number of windows, mask shape or None) of every window attention."""
    calls = []

    def record(_, args):
        calls.append((args[0].shape[1], args[0].shape[0], None if args[1] is None
                      else tuple(args[1].shape)))

    handles = [m.register_forward_pre_hook(record) for m in model.modules()
               if isinstance(m, WindowAttention)]
    with torch.no_grad():
        features = model(x)
    for handle in handles:
        handle.remove()
    return calls, features


def test_padding_shift_and_shrinking_per_stage():
    # 64x64 -> stages 16, 8, 4, 2: 16 and 8 are padded to 21 and 14 (9 and 4 windows of 49,
    # odd blocks shifted with a mask); 4 and 2 use one window of 16 and 4 tokens, no shift.
    calls, features = _attention_calls(_mini(), torch.randn(1, 1, 64, 64))
    assert calls == [(49, 9, None), (49, 9, (9, 49, 49)), (49, 4, None), (49, 4, (4, 49, 49)),
                     (16, 1, None), (16, 1, None), (4, 1, None), (4, 1, None)]
    assert [f.shape[1:] for f in features] == [(32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2)]


def test_odd_input_sizes_are_padded_and_cropped():
    _, features = _attention_calls(_mini(), torch.randn(1, 1, 57, 71))
    assert [tuple(f.shape[-2:]) for f in features] == [(15, 18), (8, 9), (4, 5), (2, 3)]
    model = create_model("swin-small", num_classes=3).eval()
    with torch.no_grad():
        for size in [(13, 9), (3, 5)]:  # 57x71 runs in test_models
            assert model(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_forward_with_aux():
    model = create_model("swin-small", num_classes=3).train()
    x = torch.randn(2, 1, 41, 50)  # 2 images: the pooling branch's BatchNorm trains on 1x1 maps
    with torch.no_grad():
        logits, extras = model.forward_with_aux(x)
        assert logits.shape == (2, 3, 41, 50)
        assert [(w, a.shape) for w, a in extras] == [(0.4, (2, 3, 41, 50))]
        assert model.eval().forward_with_aux(x)[1] == []  # auxiliary heads train only


def test_kernels_reach_every_attention():
    model = set_kernels(create_model("swin-small", num_classes=3), "triton")
    attentions = [m for m in model.modules() if isinstance(m, WindowAttention)]
    assert len(attentions) == sum(MINI["depths"])
    assert {m.core.kernels for m in attentions} == {"triton"}
    assert sum(isinstance(m, WindowAttentionCore) for m in model.modules()) == len(attentions)


def _derived(key):
    return key.endswith(("relative_position_index", "attn_mask"))


def test_load_pretrained_from_fresh_state_dict(tmp_path):
    source = _mini(seed=0, in_channels=3)
    state = source.state_dict()
    path = tmp_path / "swin.pth"
    torch.save({"model": state | {"norm.weight": torch.ones(256),
                                  "layers.0.blocks.1.attn_mask": torch.zeros(64, 49, 49)}}, path)
    target = _mini(seed=1, in_channels=3)
    report = target.load_pretrained(path, verbose=False)
    assert sorted(report.matched) == sorted(k for k in state if not _derived(k))
    assert report.missing == [] and report.mismatched == [] and report.adapted == []
    assert report.unexpected == ["norm.weight"]
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_load_pretrained_adapts_channels_and_window(tmp_path):
    source = _mini(seed=0, in_channels=3)
    path = tmp_path / "swin.pth"
    torch.save(source.state_dict(), path)
    target = _mini(seed=1, in_channels=1, window_size=4)
    report = target.load_pretrained(path, verbose=False)
    assert report.missing == [] and report.mismatched == [] and report.unexpected == []
    assert len(report.adapted) == 1 + sum(MINI["depths"])  # patch embedding + every table
    grey = source.patch_embed.proj.weight.sum(1, keepdim=True)
    torch.testing.assert_close(target.patch_embed.proj.weight, grey)
    table = target.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (7**2, 1)


def test_load_pretrained_timm_layout(tmp_path):
    # timm >= 0.9 puts the merging at the start of the next stage: layers.{i+1}.downsample
    state = _mini(seed=0).state_dict()

    def timm_key(key):
        found = re.match(r"layers\.(\d)\.downsample\.", key)
        return key if found is None else f"layers.{int(found[1]) + 1}" + key[len("layers.0"):]

    torch.save({timm_key(k): v for k, v in state.items()}, tmp_path / "timm.pth")
    model = create_model("swin-small", num_classes=3)
    report = model.load_pretrained(tmp_path / "timm.pth")
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    merged = model.backbone.layers[0].downsample.reduction.weight
    torch.testing.assert_close(merged, state["layers.0.downsample.reduction.weight"])


def test_window_attention_flops_match_hand_count():
    # per window: qkv N*C*3C, q k^T N*N*C, attention * v N*N*C, proj N*C*C multiply-adds
    N, C, heads, windows = 49, 96, 3, 2 * 9
    attn = WindowAttention(C, heads, window=7)
    result = count_flops(attn, torch.randn(windows, N, C))
    assert result["flops"] == windows * (N * C * 3 * C + 2 * N * N * C + N * C * C)
    assert result["flops_uncounted_ops"] == ""


@pytest.mark.parametrize("name, paper_m", [("swin", 60), ("swin-s", 81), ("swin-b", 121)])
def test_upernet_parameters_match_paper(name, paper_m):
    # ADE20K table of the Swin paper: 150 classes, RGB, auxiliary head included
    with torch.device("meta"):
        model = create_model(name, num_classes=150, in_channels=3)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - paper_m) < 0.5


def test_swin_t_backbone_parameters():
    # 28.3M published for Swin-T includes the 0.77M ImageNet classifier that is not here
    with torch.device("meta"):
        backbone = SwinTransformer(**SWIN_CONFIGS["tiny"])
    n = sum(p.numel() for p in backbone.parameters())
    assert abs((n + 768 * 1000 + 1000) / 1e6 - 28.29) < 0.01


def test_triton_kernels_match_torch_end_to_end():
    pytest.importorskip("triton")  # on CPU the kernel runs in the Triton interpreter
    reference = create_model("swin-small", num_classes=3).eval()
    fused = set_kernels(create_model("swin-small", num_classes=3), "triton").eval()
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(1, 1, 32, 40)  # stage 1 is 8x10: padded, shifted and masked windows
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x))
