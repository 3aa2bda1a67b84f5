"""`folder:PATH`: 2D images and label masks from a plain folder.

Layout: `PATH/images/` and `PATH/masks/`, files paired by stem (`images/a12.jpg` with
`masks/a12.png`); PNG, JPG, TIFF and BMP; other files are ignored. With sub-folders
`PATH/train/`, `PATH/val/`, `PATH/test/` (each holding images/ and masks/) those splits are
used as given; a missing val or test split is then drawn from train (10% / 20%, seeded).
Without them the pairs are split 70/10/20 by the seed. With K folds (`--folds`), fold k of a
seeded K-fold partition of the pairs is the test split and 10% of the pairs, from the other
folds, validate; with sub-folders the folds are over the train/ and val/ pairs, and test/ is
left out. Each image is a case, named by its stem (`train/a12` with sub-folders); its pixel
size in mm is unknown (image files carry no trustworthy physical spacing), so mm metrics are
not reported.

Masks are either label-index images (grey or palette PNG: pixel value = class index) or
binary 0/255 images, detected from the values over all masks (every mask holding only 0 and
255) and mapped to 0/1; the detected format is stated in the dataset's facts. Optional
`PATH/classes.json` names the classes: a list `["background", "polyp"]` or a mapping
`{"0": "background", "1": "polyp"}`. Without it the classes are 0..max label found, which
must all occur. Images: grey (1 channel) or colour (3; alpha dropped; grey images are
repeated to 3 channels when others are colour), normalised per channel with the mean and
standard deviation of the train split, then centred in a square and resized.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segbench.data.base import DataError, PreparedDataset, prepared_bytes, resize_slice
from segbench.data.folds import fold_assignment
from segbench.data.slicing import SPLIT_NAMES, SliceList, stack_splits
from segbench.data.validate import (
    check_finite,
    check_label_range,
    check_same_shape,
    check_splits_nonempty,
    fail,
    integer_labels,
    pair_by_key,
    read_or_fail,
    stat_or_fail,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CLASSES_FILE = "classes.json"
FRACTIONS = {"val": 0.1, "test": 0.2}  # of all pairs, or of train when drawn from it

Pair = tuple[str, Path, Path]  # case (stem, or sub-folder/stem), image, mask


def _root(arg: str | None) -> Path:
    if not arg:
        raise DataError("dataset 'folder' needs a path: --dataset folder:PATH")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise fail(root, "not a folder (expected images/ and masks/ inside)")
    return root


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise fail(folder, "missing folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stat_or_fail(path)
        if path.stem in files:
            raise fail(path, f"two files with stem {path.stem!r} ({files[path.stem].name})")
        files[path.stem] = path
    return files


def _pairs_in(folder: Path, prefix: str = "") -> list[Pair]:
    images, masks = folder / "images", folder / "masks"
    pairs = pair_by_key(_files_by_stem(images), _files_by_stem(masks), images, masks)
    return [(prefix + stem, image, mask) for stem, image, mask in pairs]


def discover(root: Path) -> dict[str, list[Pair]]:
    """Pairs per split folder present, or under the key 'all' when there are none."""
    present = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    if not present:
        if not (root / "images").is_dir():
            raise fail(root, "expected images/ and masks/ (or train/, val/, test/ holding them)")
        return {"all": _pairs_in(root)}
    if "train" not in present:
        raise fail(root, f"has {'/'.join(present)} sub-folders but no train/")
    return {s: _pairs_in(root / s, f"{s}/") for s in present}


def source_files(arg: str | None) -> list[Path]:
    root = _root(arg)
    files = [path for pairs in discover(root).values() for _, image, mask in pairs
             for path in (image, mask)]
    classes = root / CLASSES_FILE
    return files + ([classes] if classes.is_file() else [])


def read_class_names(path: Path) -> list[str]:
    raw = read_or_fail(lambda p: json.loads(p.read_text()), path, "JSON")
    if isinstance(raw, dict):
        try:
            by_index = {int(k): str(v) for k, v in raw.items()}
        except ValueError:
            raise fail(path, "keys must be class indices (\"0\", \"1\", ...)") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise fail(path, f"class indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
        raw = [by_index[i] for i in range(len(by_index))]
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(n, str) for n in raw):
        raise fail(path, "expected a list of at least 2 class names or {\"0\": name, ...}")
    return raw


def _draw(pairs: list[Pair], fraction: float, rng: np.random.Generator,
          where: Path) -> tuple[list[Pair], list[Pair]]:
    """(rest, drawn): a seeded draw of round(fraction * n), at least 1, leaving at least 1."""
    count = max(1, round(fraction * len(pairs)))
    if len(pairs) - count < 1:
        raise fail(where, f"{len(pairs)} image/mask pairs are too few to draw a split from")
    order = rng.permutation(len(pairs))
    drawn = set(order[:count].tolist())
    return ([p for i, p in enumerate(pairs) if i not in drawn],
            [p for i, p in enumerate(pairs) if i in drawn])


def fold_splits(found: dict[str, list[Pair]], rng: np.random.Generator, root: Path,
                folds: int, fold: int) -> tuple[dict[str, list[Pair]], str]:
    """Pairs per train/val/test for fold `fold` of `folds` >= 2, and the rule (for the facts)."""
    pool = found.get("all", found.get("train", []) + found.get("val", []))
    n_val = max(1, round(FRACTIONS["val"] * len(pool)))
    split_of = fold_assignment(len(pool), folds, fold, n_val, rng, "image/mask pairs", str(root))
    splits = {s: [pair for pair, split in zip(pool, split_of, strict=True) if split == s]
              for s in SPLIT_NAMES}
    rule = (f"fold {fold} of {folds} over {len(pool)} pairs (seeded), {n_val} val pairs from "
            "the other folds")
    if "test" in found:
        rule += f"; the {len(found['test'])} pairs of test/ are not used"
    return splits, rule


def assign_splits(found: dict[str, list[Pair]], rng: np.random.Generator,
                  root: Path) -> tuple[dict[str, list[Pair]], str]:
    """Pairs per train/val/test, and the rule that made the split (for the facts)."""
    if "all" in found:
        if len(found["all"]) < 3:
            raise fail(root, f"{len(found['all'])} image/mask pairs; train/val/test needs 3 "
                             "or more")
        pool, test = _draw(found["all"], FRACTIONS["test"], rng, root)
        train, val = _draw(pool, FRACTIONS["val"] / (1 - FRACTIONS["test"]), rng, root)
        return {"train": train, "val": val, "test": test}, "seeded 70/10/20 split of all pairs"
    splits = dict(found)
    drawn = [s for s in ("test", "val") if s not in splits]
    for split in drawn:
        splits["train"], splits[split] = _draw(splits["train"], FRACTIONS[split], rng,
                                               root / "train")
    rule = "split sub-folders"
    if drawn:
        rule += f"; {' and '.join(drawn)} drawn from train (seeded)"
    check_splits_nonempty({s: len(splits[s]) for s in SPLIT_NAMES}, root, "image/mask pairs")
    return {s: splits[s] for s in SPLIT_NAMES}, rule


def _read_image(path: Path) -> np.ndarray:
    """(C, H, W) float32 with C = 1 (grey) or 3 (colour)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa"):
            img = img.convert("RGB")
        elif img.mode in ("1", "LA", "La"):
            img = img.convert("L")
        array = np.asarray(img).astype(np.float32)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)[:3]


def _read_mask(path: Path) -> np.ndarray:
    """(H, W) raw values; a palette image gives its indices, a colour one must be grey."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img)
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise fail(path, "colour mask; expected a label-index (single-channel) image")
        array = array[..., 0]
    return array


def _load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = read_or_fail(_read_image, image_path, "image")
    mask = integer_labels(read_or_fail(_read_mask, mask_path, "mask"), mask_path)
    check_same_shape(image_path, image.shape[1:], mask_path, mask.shape)
    check_finite(image, image_path)
    return image, mask


def mask_format(values_by_mask: dict[Path, np.ndarray], class_names: list[str] | None,
                root: Path) -> tuple[bool, list[str]]:
    """(binary 0/255?, class names) from the label values of every mask and classes.json."""
    values = set()
    for mask_values in values_by_mask.values():
        values.update(mask_values.tolist())
    if values <= {0, 255} and 255 in values and (class_names is None or len(class_names) == 2):
        return True, class_names or ["background", "foreground"]
    if class_names is not None:
        for path, mask_values in values_by_mask.items():
            check_label_range(mask_values, len(class_names), path, str(root / CLASSES_FILE))
        return False, class_names
    top = max(values)
    missing = sorted(set(range(top + 1)) - values)
    if missing:
        path = next(p for p, v in values_by_mask.items() if v.max() == top)
        raise fail(path, f"label {top} but labels {missing[:5]} occur in no mask; labels must be "
                         f"0..K-1 (or binary 0/255), or declare them in {root / CLASSES_FILE}")
    if top == 0:
        raise fail(root, "every mask is background only")
    return False, ["background"] + [f"class_{i}" for i in range(1, top + 1)]


PixelSums = tuple[np.ndarray, np.ndarray, int]  # per-channel sum, sum of squares, pixels


def _pixel_sums(image: np.ndarray) -> PixelSums:
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    return flat.sum(1), (flat ** 2).sum(1), flat.shape[1]


def _channel_stats(sums: list[PixelSums], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std; a grey image counts towards every channel."""
    total, squares = np.zeros(channels), np.zeros(channels)
    count = 0
    for image_total, image_squares, pixels in sums:
        total += image_total
        squares += image_squares
        count += pixels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _scan(splits: dict[str, list[Pair]]) -> tuple[dict[Path, np.ndarray], int, list[PixelSums]]:
    """Validate every pair; return each mask's label values, the channel count and the
    pixel sums of the train images."""
    values_by_mask, channels, train_sums = {}, 1, []
    for split in SPLIT_NAMES:
        for _, image_path, mask_path in splits[split]:
            image, mask = _load_pair(image_path, mask_path)
            values_by_mask[mask_path] = np.unique(mask)
            channels = max(channels, image.shape[0])
            if split == "train":
                train_sums.append(_pixel_sums(image))
    return values_by_mask, channels, train_sums


def _prepared_pair(image_path: Path, mask_path: Path, channels: int,
                   binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """The image with `channels` channels (unnormalised) and the mask as 0..K-1 labels."""
    image, mask = _load_pair(image_path, mask_path)
    if binary:
        mask = (mask == 255).astype(np.int64)
    return np.repeat(image, channels // image.shape[0], 0), mask


def estimate_bytes(arg: str | None, image_size: int) -> int:
    """Peak bytes of `build`, from the file listing alone: twice the prepared slices (gathered,
    then stacked) with 3 channels (an upper bound), one slice per pair."""
    root = _root(arg)
    pairs = sum(len(p) for p in discover(root).values())
    return 2 * prepared_bytes(pairs, 3, image_size)


def build(arg: str | None, image_size: int, seed: int, folds: int = 1,
          fold: int = 0) -> PreparedDataset:
    root = _root(arg)
    rng = np.random.default_rng(seed)
    found = discover(root)
    splits, rule = (assign_splits(found, rng, root) if folds == 1
                    else fold_splits(found, rng, root, folds, fold))
    classes_path = root / CLASSES_FILE
    declared = read_class_names(classes_path) if classes_path.is_file() else None
    values_by_mask, channels, train_sums = _scan(splits)
    binary, class_names = mask_format(values_by_mask, declared, root)
    mean, std = _channel_stats(train_sums, channels)
    one_hot = np.eye(len(class_names), dtype=bool)
    slices = {s: SliceList() for s in SPLIT_NAMES}
    for s in SPLIT_NAMES:
        for case, image_path, mask_path in splits[s]:
            image, mask = _prepared_pair(image_path, mask_path, channels, binary)
            normalised = (image - mean[:, None, None]) / std[:, None, None]
            resized, label = resize_slice(normalised, one_hot[mask].transpose(2, 0, 1), image_size)
            slices[s].append(resized, label, case, None)
    mask_kind = "binary 0/255, mapped to 0/1" if binary else "label-index images"
    return PreparedDataset(
        name=f"folder:{root}",
        class_names=class_names,
        splits=stack_splits(slices),
        description=(
            f"2D images and masks from {root} paired by file stem; masks: {mask_kind}; "
            f"{rule}; {channels}-channel images normalised per channel with train-split "
            "mean/std, centred in a square and resized (masks via bilinear one-hot, argmax)"
        ),
        facts={
            "images_per_split": {s: len(splits[s]) for s in SPLIT_NAMES},
            "split_rule": rule,
            "mask_format": mask_kind,
            "channels": channels,
            "channel_mean": mean.tolist(),
            "channel_std": std.tolist(),
        },
    )
