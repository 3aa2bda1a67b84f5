import dataclasses

import pytest
import torch

from segbench.data.augment import AugmentConfig, Augmenter

NO_INTENSITY = dict(gamma_prob=0.0, bias_prob=0.0, noise_prob=0.0)


def _batch(n=6, size=32, classes=4):
    generator = torch.Generator().manual_seed(123)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for k in range(1, classes):
            top, left = torch.randint(0, size - 8, (2,), generator=generator).tolist()
            masks[i, top:top + 8, left:left + 8] = k
    images = torch.randn(n, 2, size, size, generator=generator) + masks[:, None].float()
    return images, masks


def _run(config, images, masks, seed):
    return Augmenter(config)(images, masks, torch.Generator().manual_seed(seed))


def test_off_is_identity():
    images, masks = _batch()
    out_images, out_masks = _run(AugmentConfig.off(), images, masks, 0)
    assert out_images is images and out_masks is masks


def test_seeded_determinism_and_seed_dependence():
    images, masks = _batch()
    config = dataclasses.replace(AugmentConfig.default(), random_contrast_prob=0.5)
    first, again, other = (_run(config, images, masks, s) for s in (7, 7, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_masks_stay_integer_labels_within_range():
    images, masks = _batch()
    strong = AugmentConfig(enabled=True, flip_prob=0.5, affine_prob=1.0, rotate_deg=40, scale=0.3,
                           elastic_prob=1.0, elastic_px=6.0)
    _, out = _run(strong, images, masks, 1)
    assert out.dtype == torch.int64 and out.shape == masks.shape
    assert set(out.unique().tolist()) <= set(masks.unique().tolist())
    assert not torch.equal(out, masks)


def test_flips_move_images_and_masks_identically():
    images, masks = _batch()
    flips_only = AugmentConfig(enabled=True, flip_prob=0.5, affine_prob=0.0, elastic_prob=0.0,
                               **NO_INTENSITY)
    out_images, out_masks = _run(flips_only, masks[:, None].float(), masks, 3)
    assert torch.equal(out_images[:, 0].long(), out_masks)
    assert not torch.equal(out_masks, masks)


def test_warps_move_images_and_masks_identically():
    images, masks = _batch()
    one_hot = torch.nn.functional.one_hot(masks, 4).permute(0, 3, 1, 2).float()
    warps_only = AugmentConfig(enabled=True, flip_prob=0.0, affine_prob=1.0, rotate_deg=30,
                               scale=0.2, elastic_prob=1.0, elastic_px=4.0, **NO_INTENSITY)
    out_images, out_masks = _run(warps_only, one_hot, masks, 5)
    agreement = (out_images.argmax(1) == out_masks).float().mean()
    assert agreement > 0.97
    assert (out_masks != masks).float().mean() > 0.05


def test_intensity_transforms_leave_masks_alone_and_change_images():
    images, masks = _batch()
    intensity_only = AugmentConfig(enabled=True, flip_prob=0.0, affine_prob=0.0, elastic_prob=0.0,
                                   gamma_prob=1.0, bias_prob=1.0, noise_prob=1.0)
    out_images, out_masks = _run(intensity_only, images, masks, 2)
    assert torch.equal(out_masks, masks) and not torch.allclose(out_images, images)
    assert torch.isfinite(out_images).all()


def test_random_contrast_gives_each_region_one_intensity():
    images, masks = _batch()
    contrast = AugmentConfig(enabled=True, flip_prob=0.0, affine_prob=0.0, elastic_prob=0.0,
                             random_contrast_prob=1.0, **NO_INTENSITY)
    out_images, _ = _run(contrast, images, masks, 4)
    for k in masks.unique().tolist():
        region = out_images[0, 1][masks[0] == k]
        assert torch.all(region == region[0])


def test_bad_config_and_bad_batch_are_rejected():
    with pytest.raises(ValueError, match="flip_prob must be within 0..1"):
        AugmentConfig(enabled=True, flip_prob=1.5)
    images, masks = _batch()
    with pytest.raises(ValueError, match="masks must be"):
        _run(AugmentConfig.default(), images, masks.int(), 0)


@pytest.mark.gpu
def test_runs_on_gpu_with_a_cuda_generator():
    images, masks = _batch()
    generator = torch.Generator(device="cuda").manual_seed(0)
    augment = Augmenter(AugmentConfig.default())
    out_images, out_masks = augment(images.cuda(), masks.cuda(), generator)
    assert out_images.is_cuda and out_masks.dtype == torch.int64
