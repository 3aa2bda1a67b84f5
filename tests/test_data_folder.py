import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.data import DataError, folder, load_dataset


def _pair(rng, shape=(20, 24), rgb=False, labels=3):
    mask = np.zeros(shape, np.uint8)
    top, left = rng.integers(2, 8, 2)
    mask[top:top + 8, left:left + 8] = 1
    if labels > 2:
        mask[-4:, :6] = 2
    image = (mask * 80 + rng.integers(0, 40, shape)).astype(np.uint8)
    if rgb:
        image = np.stack([image, image // 2, 255 - image], -1)
    return image, mask


def make_folder(root, n=6, binary=False, rgb=False, classes=None, splits=None):
    """n pairs under root/images, root/masks (or under root/<split>/ for each split given)."""
    rng = np.random.default_rng(0)
    for split in splits or [None]:
        base = root / split if split else root
        (base / "images").mkdir(parents=True)
        (base / "masks").mkdir()
        for i in range(n):
            image, mask = _pair(rng, rgb=rgb, labels=2 if binary else 3)
            stem = f"{split or 'case'}{i}"
            Image.fromarray(image).save(base / "images" / f"{stem}.jpg")
            Image.fromarray(mask * 255 if binary else mask).save(base / "masks" / f"{stem}.png")
    if classes:
        (root / "classes.json").write_text(json.dumps(classes))
    return root


def test_label_masks_with_class_names_round_trip(tmp_path):
    root = make_folder(tmp_path, n=10, classes={"0": "background", "1": "lesion", "2": "organ"})
    dataset = folder.build(str(root), 32, seed=0)
    assert dataset.class_names == ["background", "lesion", "organ"]
    sizes = {s: len(dataset.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 7, "val": 1, "test": 2}
    assert dataset.facts["mask_format"] == "label-index images"
    assert dataset.splits["train"].images.shape[1:] == (1, 32, 32)
    labels = torch.cat([dataset.splits[s].masks.unique() for s in dataset.splits])
    assert set(labels.tolist()) == {0, 1, 2}


def test_binary_masks_are_detected_and_mapped(tmp_path):
    dataset = folder.build(str(make_folder(tmp_path, binary=True, rgb=True)), 32, seed=0)
    assert dataset.class_names == ["background", "foreground"]
    assert dataset.facts["mask_format"].startswith("binary 0/255")
    assert dataset.in_channels == 3
    assert set(dataset.splits["train"].masks.unique().tolist()) == {0, 1}


def test_classes_inferred_without_classes_json(tmp_path):
    dataset = folder.build(str(make_folder(tmp_path)), 32, seed=0)
    assert dataset.class_names == ["background", "class_1", "class_2"]


def test_split_folders_are_used_and_missing_val_is_drawn_from_train(tmp_path):
    dataset = folder.build(str(make_folder(tmp_path, n=10, splits=["train", "test"])), 32, seed=0)
    sizes = {s: len(dataset.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 9, "val": 1, "test": 10}
    assert "val drawn from train" in dataset.facts["split_rule"]


def test_seeded_split_is_reproducible(tmp_path):
    root = make_folder(tmp_path, n=10)
    first, again = folder.build(str(root), 32, seed=3), folder.build(str(root), 32, seed=3)
    assert torch.equal(first.splits["test"].images, again.splits["test"].images)


def test_source_files_list_every_file_and_the_cache_follows_them(tmp_path):
    root = make_folder(tmp_path / "data", classes=["background", "a", "b"])
    listed = set(folder.source_files(str(root)))
    assert listed == {p for p in root.rglob("*") if p.is_file()}
    cache = tmp_path / "cache"
    before = load_dataset(f"folder:{root}", 32, cache_dir=cache)
    mask_path = sorted((root / "masks").iterdir())[0]
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(mask_path)
    after = load_dataset(f"folder:{root}", 32, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    masks = lambda d: torch.cat([d.splits[s].masks for s in ("train", "val", "test")])  # noqa: E731
    assert not torch.equal(masks(before), masks(after))


def _remove_first_mask(root):
    sorted((root / "masks").iterdir())[0].unlink()


def _remove_first_image(root):
    sorted((root / "images").iterdir())[0].unlink()


def _shrink_first_mask(root):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case0.png")


def _label_outside_classes(root):
    (root / "classes.json").write_text(json.dumps(["background", "lesion"]))


def _float_mask(root):
    (root / "masks" / "case0.png").unlink()
    Image.fromarray(np.full((20, 24), 0.5, np.float32)).save(root / "masks" / "case0.tif")


def _nan_image(root):
    (root / "images" / "case0.jpg").unlink()
    image = np.zeros((20, 24), np.float32)
    image[3, 3] = np.nan
    Image.fromarray(image).save(root / "images" / "case0.tif")


def _unreadable_image(root):
    (root / "images" / "case0.jpg").write_bytes(b"not a jpeg")


def _colour_mask(root):
    bluish = (np.zeros((20, 24, 3)) + [0, 0, 9]).astype(np.uint8)
    Image.fromarray(bluish).save(root / "masks" / "case0.png")


def _jpeg_like_mask_values(root):
    Image.fromarray(np.full((20, 24), 7, np.uint8)).save(root / "masks" / "case0.png")


@pytest.mark.parametrize("break_it, file_name, problem", [
    (_remove_first_mask, "case0.jpg", "no mask for this image"),
    (_remove_first_image, "case0.png", "no image for this mask"),
    (_shrink_first_mask, "case0.png", "size"),
    (_label_outside_classes, "case", "outside the 2 classes"),
    (_float_mask, "case0.tif", "non-integer"),
    (_nan_image, "case0.tif", "NaN or Inf"),
    (_unreadable_image, "case0.jpg", "unreadable image"),
    (_colour_mask, "case0.png", "colour mask"),
    (_jpeg_like_mask_values, "case0.png", "occur in no mask"),
])
def test_broken_folder_gives_one_line_naming_the_file(tmp_path, break_it, file_name, problem):
    root = make_folder(tmp_path)
    break_it(root)
    with pytest.raises(DataError, match=problem) as error:
        folder.build(str(root), 32, seed=0)
    assert file_name in str(error.value) and "\n" not in str(error.value)


def test_empty_split_folder_is_an_error(tmp_path):
    root = make_folder(tmp_path, n=3, splits=["train", "val", "test"])
    for path in (root / "val" / "images").iterdir():
        path.unlink()
    for path in (root / "val" / "masks").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="the val split has no image/mask pairs"):
        folder.build(str(root), 32, seed=0)


def test_too_few_pairs_and_missing_folder_are_errors(tmp_path):
    with pytest.raises(DataError, match="2 image/mask pairs"):
        folder.build(str(make_folder(tmp_path / "few", n=2)), 32, seed=0)
    with pytest.raises(DataError, match="expected images/ and masks/"):
        folder.build(str(tmp_path), 32, seed=0)


def test_check_summarizes_splits_classes_and_frequencies(tmp_path, monkeypatch):
    from segbench.data.check import summarize

    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "data", n=10, classes=["background", "lesion", "organ"])
    text = summarize(f"folder:{root}", 32, 0)
    assert "checks passed" in text and "train 7, val 1, test 2" in text
    assert "lesion" in text and "%" in text and "pixel spacing unknown" in text


@pytest.mark.parametrize("make_link, problem", [
    (lambda link: os.symlink(link.name, link), "symbolic link loop"),
    (lambda link: os.symlink("missing.png", link), "dangling symbolic link"),
])
def test_bad_symlink_in_images_is_one_line(tmp_path, make_link, problem):
    root = make_folder(tmp_path)
    make_link(root / "images" / "link.png")
    for call in (lambda: folder.build(str(root), 32, seed=0),
                 lambda: load_dataset(f"folder:{root}", 32, cache_dir=tmp_path / "cache")):
        with pytest.raises(DataError, match=problem) as error:
            call()
        assert "link.png" in str(error.value) and "\n" not in str(error.value)


def test_estimate_bytes_scales_with_the_image_size(tmp_path):
    from segbench.data import estimate_prepared_bytes

    root = make_folder(tmp_path, n=6)
    small, large = (estimate_prepared_bytes(f"folder:{root}", size) for size in (32, 4096))
    assert large == pytest.approx(small * (4096 / 32) ** 2, rel=0.01)
    assert large > 6 * 4096 * 4096 * 4  # at least the float32 images
