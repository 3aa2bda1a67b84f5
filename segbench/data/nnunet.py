"""`nnunet:PATH[@axis=0|1|2][,keep=foreground|all]`: 3D volumes, nnU-Net v2 raw or Decathlon.

nnU-Net v2 raw: `dataset.json` with `channel_names` ({"0": "CT"}), `labels` ({"background": 0,
"liver": 1}), `file_ending` (".nii.gz" or ".nii"), optional `numTraining`;
`imagesTr/<case>_<XXXX><ending>` (one file per channel XXXX), `labelsTr/<case><ending>`.
Decathlon: `dataset.json` with `modality` ({"0": "MRI"}), `labels` ({"0": "background"}),
`training` ([{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]), a
multi-modal image being one 4D file (X, Y, Z, channels). When `imagesTs/` and `labelsTs/` are
both present (same naming as imagesTr/labelsTr) their cases form the test split; images
without labels are ignored.

Options after the last `@`, comma-separated:
- `axis=N`: slice along axis N of the stored arrays. Default: the axis with the coarsest median
  voxel spacing (the through-plane axis of anisotropic scans); on ties the last, so axis 2 for
  isotropic data.
- `keep=foreground` (default): only slices holding at least one labelled voxel;
  `keep=all`: every slice.
Splits are by case (no case has slices in two splits): 70/10/20 seeded, or 90/10 of the
training cases plus the labelled test cases. With K folds (`--folds`), fold k of a seeded
K-fold partition of the training cases (imagesTr, as nnU-Net's cross-validation) is the test
split and 10% of the cases, from the other folds, validate; labelled imagesTs cases are then
not used. Each slice carries its case id and its pixel size (dy, dx) in mm, from its case's
header spacing and in-plane sides.

Intensities are normalised per channel as nnU-Net does, by the channel's name: "CT" -> clip
to the 0.5 and 99.5 percentiles of the foreground (labelled) voxels of the train cases, then
subtract their mean and divide by their standard deviation (statistics of the unclipped
foreground voxels, sampled); "noNorm" -> unchanged; "rescale_to_0_1" -> per-case min-max;
"rgb_to_0_1" -> divided by 255; anything else (MRI, T2, ...) -> per-case z-score over the
whole volume (nnU-Net's restriction to the non-zero region of cropped scans is not applied).
Slices are centred in a square and resized; masks via bilinear one-hot and argmax.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.data.base import (
    DataError,
    PreparedDataset,
    prepared_bytes,
    resize_slice,
    resized_spacing,
)
from segbench.data.folds import fold_assignment
from segbench.data.slicing import SPLIT_NAMES, SliceList, stack_splits, take_slice
from segbench.data.validate import (
    check_finite,
    check_label_range,
    check_same_shape,
    check_splits_nonempty,
    fail,
    integer_labels,
    pair_by_key,
    read_or_fail,
)

USAGE = "--dataset nnunet:PATH[@axis=0|1|2][,keep=foreground|all]"
SUPPORTED_ENDINGS = (".nii.gz", ".nii")
KEEP_CHOICES = ("foreground", "all")
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
CT_SAMPLES_PER_CASE = 100_000


@dataclass(frozen=True)
class Options:
    root: Path
    axis: int | None
    keep: str


@dataclass(frozen=True)
class Case:
    case_id: str
    images: tuple[Path, ...]  # one file per channel (v2), or one 4D file (Decathlon)
    label: Path


@dataclass(frozen=True)
class Layout:
    json_path: Path
    flavour: str  # "nnU-Net v2" or "Decathlon"
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]
    training: tuple[Case, ...]
    test: tuple[Case, ...]  # imagesTs with labelsTs; empty when there are none


def parse_arg(arg: str | None) -> Options:
    if not arg:
        raise DataError(f"dataset 'nnunet' needs a path: {USAGE}")
    path, at, tail = arg.rpartition("@")
    if not at or "=" not in tail:  # an '@' that belongs to the path
        path, tail = arg, ""
    options = {"axis": None, "keep": "foreground"}
    for item in filter(None, tail.split(",")):
        key, _, value = item.partition("=")
        if key == "axis" and value in ("0", "1", "2"):
            options["axis"] = int(value)
        elif key == "keep" and value in KEEP_CHOICES:
            options["keep"] = value
        else:
            raise DataError(f"dataset 'nnunet': bad option {item!r}; usage: {USAGE}")
    root = Path(path).expanduser()
    if not (root / "dataset.json").is_file():
        raise fail(root, "no dataset.json (expected an nnU-Net v2 raw or Decathlon folder)")
    return Options(root, options["axis"], options["keep"])


def _indexed_names(mapping: object, json_path: Path, key: str) -> tuple[str, ...]:
    """{"0": "CT", "1": "T2"} -> ("CT", "T2"), indices 0..n-1 required."""
    try:
        by_index = {int(k): str(v) for k, v in mapping.items()}
    except (AttributeError, ValueError):
        raise fail(json_path, f"{key} must map indices (\"0\", \"1\", ...) to names") from None
    if not by_index or sorted(by_index) != list(range(len(by_index))):
        raise fail(json_path, f"{key} indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _v2_class_names(labels: object, json_path: Path) -> tuple[str, ...]:
    if not isinstance(labels, dict):
        raise fail(json_path, "labels must map names to indices ({\"background\": 0, ...})")
    by_index = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise fail(json_path, f"label {name!r} is region-based {value}; not supported")
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(json_path, f"label {name!r} has index {value!r}; expected an integer")
        by_index[value] = name
    if sorted(by_index) != list(range(len(by_index))) or len(by_index) < 2:
        raise fail(json_path, f"label indices {sorted(by_index)} are not 0..K-1 with K >= 2")
    return tuple(by_index[i] for i in range(len(by_index)))


def _files_ending(folder: Path, ending: str, json_path: Path) -> list[Path]:
    if not folder.is_dir():
        raise fail(folder, "missing folder")
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    for path in files:
        if not path.name.endswith(ending):
            raise fail(path, f"does not end with file_ending {ending!r} of {json_path}")
    return files


def _v2_cases(images_dir: Path, labels_dir: Path, ending: str, channels: int,
              json_path: Path) -> tuple[Case, ...]:
    by_case: dict[str, dict[int, Path]] = {}
    for path in _files_ending(images_dir, ending, json_path):
        case_id, underscore, channel = path.name[:-len(ending)].rpartition("_")
        if not underscore or len(channel) != 4 or not channel.isdigit():
            raise fail(path, f"name is not CASE_XXXX{ending} (XXXX: 4-digit channel index)")
        if int(channel) >= channels:
            raise fail(path, f"channel {int(channel)} but {json_path} declares {channels} "
                             "in channel_names")
        by_case.setdefault(case_id, {})[int(channel)] = path
    for case_id, files in by_case.items():
        for channel in range(channels):
            if channel not in files:
                raise fail(images_dir / f"{case_id}_{channel:04d}{ending}",
                           f"missing; {json_path} declares {channels} channels")
    labels = {p.name[:-len(ending)]: p for p in _files_ending(labels_dir, ending, json_path)}
    first_channel = {case_id: files[0] for case_id, files in by_case.items()}
    pairs = pair_by_key(first_channel, labels, images_dir, labels_dir)
    return tuple(Case(case_id, tuple(by_case[case_id][c] for c in range(channels)), label)
                 for case_id, _, label in pairs)


def _v2_layout(root: Path, json_path: Path, meta: dict) -> Layout:
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise fail(json_path, f"no {key!r}; nnU-Net v2 needs channel_names, labels, "
                                  "file_ending")
    ending = meta["file_ending"]
    if ending not in SUPPORTED_ENDINGS:
        raise fail(json_path, f"file_ending {ending!r} is not supported; segbench reads "
                              f"{' and '.join(SUPPORTED_ENDINGS)}")
    channels = _indexed_names(meta["channel_names"], json_path, "channel_names")
    training = _v2_cases(root / "imagesTr", root / "labelsTr", ending, len(channels), json_path)
    has_test = (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir()
    test = (_v2_cases(root / "imagesTs", root / "labelsTs", ending, len(channels), json_path)
            if has_test else ())
    return Layout(json_path, "nnU-Net v2", channels, _v2_class_names(meta["labels"], json_path),
                  training, test)


def _listed_file(root: Path, entry: object, key: str, json_path: Path) -> Path:
    if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
        raise fail(json_path, f"training entry {entry!r} lacks an {key!r} path")
    path = root / entry[key]
    if not path.name.endswith(SUPPORTED_ENDINGS):
        raise fail(path, f"listed in {json_path} but not NIfTI ({' or '.join(SUPPORTED_ENDINGS)})")
    if not path.is_file():
        raise fail(path, f"listed in {json_path} training but missing")
    return path


def _decathlon_layout(root: Path, json_path: Path, meta: dict) -> Layout:
    if "labels" not in meta:
        raise fail(json_path, "no 'labels'; a Decathlon dataset.json needs modality, labels, "
                              "training")
    if not isinstance(meta["training"], list):
        raise fail(json_path, "training must be a list of {\"image\": ..., \"label\": ...}")
    class_names = _indexed_names(meta["labels"], json_path, "labels")
    if len(class_names) < 2:
        raise fail(json_path, "labels must name background and at least one class")
    cases = []
    for entry in meta["training"]:
        image = _listed_file(root, entry, "image", json_path)
        label = _listed_file(root, entry, "label", json_path)
        case_id = image.name.removesuffix(".gz").removesuffix(".nii")
        cases.append(Case(case_id, (image,), label))
    listed = {p.resolve() for case in cases for p in (*case.images, case.label)}
    for folder in (root / "imagesTr", root / "labelsTr"):
        for path in _files_ending(folder, "", json_path):
            if path.resolve() not in listed:
                raise fail(path, f"not listed in the training list of {json_path}")
    return Layout(json_path, "Decathlon", _indexed_names(meta["modality"], json_path, "modality"),
                  class_names, tuple(cases), ())


def read_layout(root: Path) -> Layout:
    json_path = root / "dataset.json"
    meta = read_or_fail(lambda p: json.loads(p.read_text()), json_path, "JSON")
    if not isinstance(meta, dict):
        raise fail(json_path, "expected a JSON object")
    if "channel_names" in meta:
        layout = _v2_layout(root, json_path, meta)
    elif "modality" in meta and "training" in meta:
        layout = _decathlon_layout(root, json_path, meta)
    else:
        raise fail(json_path, "neither nnU-Net v2 (channel_names, labels, file_ending) nor "
                              "Decathlon (modality, labels, training)")
    if "numTraining" in meta and meta["numTraining"] != len(layout.training):
        raise fail(json_path, f"numTraining is {meta['numTraining']} but the training folders "
                              f"hold {len(layout.training)} cases")
    return layout


def source_files(arg: str | None) -> list[Path]:
    layout = read_layout(parse_arg(arg).root)
    cases = layout.training + layout.test
    return [layout.json_path] + [p for case in cases for p in (*case.images, case.label)]


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj)


def _header(path: Path):
    import nibabel as nib

    header = read_or_fail(lambda p: nib.load(str(p)).header, path, "NIfTI image")
    if len(header.get_data_shape()) < 3:
        raise fail(path, f"shape {header.get_data_shape()} is a 2D image; nnunet: takes 3D "
                         "volumes (use folder:PATH for 2D images)")
    return header


def _voxel_spacing(path: Path) -> tuple[float, float, float]:
    return tuple(float(z) for z in _header(path).get_zooms()[:3])


def _read_channels(case: Case, channels: int, json_path: Path) -> np.ndarray:
    """(C, X, Y, Z) float32 from one file per channel or from one 4D file."""
    arrays = [read_or_fail(_read_nifti, p, "NIfTI image") for p in case.images]
    if len(arrays) == 1 and arrays[0].ndim == 4:
        if arrays[0].shape[3] != channels:
            raise fail(case.images[0], f"4D image with {arrays[0].shape[3]} channels but "
                                       f"{json_path} declares {channels}")
        arrays = list(np.moveaxis(arrays[0], 3, 0))
    if len(arrays) != channels:
        raise fail(case.images[0], f"{len(arrays)} channel(s) but {json_path} declares {channels}")
    paths = case.images if len(case.images) == channels else case.images * channels
    for path, array in zip(paths, arrays, strict=True):
        if array.ndim != 3:
            raise fail(path, f"shape {array.shape}; expected a 3D volume")
        check_same_shape(paths[0], arrays[0].shape, path, array.shape)
    image = np.stack(arrays).astype(np.float32)
    for path, channel in zip(paths, image, strict=True):
        check_finite(channel, path)
    return image


def read_case(case: Case, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """The validated (C, X, Y, Z) float32 image and (X, Y, Z) int64 labels of a case."""
    image = _read_channels(case, len(layout.channel_names), layout.json_path)
    labels = integer_labels(read_or_fail(_read_nifti, case.label, "NIfTI label map"), case.label)
    check_same_shape(case.images[0], image.shape[1:], case.label, labels.shape)
    check_label_range(labels, len(layout.class_names), case.label, str(layout.json_path))
    return image, labels


def split_cases(layout: Layout, rng: np.random.Generator) -> dict[str, list[Case]]:
    training = list(layout.training)
    n_test = 0 if layout.test else max(1, round(TEST_FRACTION * len(training)))
    n_val = max(1, round(VAL_FRACTION * len(training)))
    if len(training) - n_test - n_val < 1:
        raise fail(layout.json_path, f"{len(training)} training cases; a case-level split needs "
                                     f"at least {n_test + n_val + 1}")
    shuffled = [training[i] for i in rng.permutation(len(training))]
    test = list(layout.test) or shuffled[:n_test]
    return {"train": shuffled[n_test + n_val:], "val": shuffled[n_test:n_test + n_val],
            "test": test}


def fold_cases(layout: Layout, rng: np.random.Generator, folds: int,
               fold: int) -> dict[str, list[Case]]:
    """Cases per split for fold `fold` of `folds` >= 2 over the training cases."""
    training = list(layout.training)
    n_val = max(1, round(VAL_FRACTION * len(training)))
    split_of = fold_assignment(len(training), folds, fold, n_val, rng, "training cases",
                               str(layout.json_path))
    return {s: [case for case, split in zip(training, split_of, strict=True) if split == s]
            for s in SPLIT_NAMES}


def normalisation_scheme(channel_name: str) -> str:
    return {"ct": "ct", "nonorm": "none", "rescale_to_0_1": "rescale", "rgb_to_0_1": "rgb"}.get(
        channel_name.lower(), "zscore")


def ct_statistics(train_cases: list[Case], layout: Layout, channel: int,
                  rng: np.random.Generator) -> dict[str, float]:
    """Foreground intensity statistics of one CT channel over the train cases (sampled)."""
    samples = []
    for case in train_cases:
        image, labels = read_case(case, layout)
        foreground = image[channel][labels > 0]
        if foreground.size > CT_SAMPLES_PER_CASE:
            foreground = rng.choice(foreground, CT_SAMPLES_PER_CASE, replace=False)
        samples.append(foreground)
    values = np.concatenate(samples)
    if values.size == 0:
        raise fail(layout.json_path, f"CT channel {channel}: the train cases have no foreground "
                                     "voxels to take intensity statistics from")
    lower, upper = np.percentile(values, [0.5, 99.5])
    return {"lower": float(lower), "upper": float(upper),
            "mean": float(values.mean()), "std": float(values.std())}


def normalise(channel: np.ndarray, scheme: str, ct: dict[str, float] | None) -> np.ndarray:
    if scheme == "ct":
        clipped = np.clip(channel, ct["lower"], ct["upper"])
        return (clipped - ct["mean"]) / max(ct["std"], 1e-8)
    if scheme == "rescale":
        return (channel - channel.min()) / max(float(channel.max() - channel.min()), 1e-8)
    if scheme == "rgb":
        return channel / 255.0
    if scheme == "zscore":
        return (channel - channel.mean()) / max(float(channel.std()), 1e-8)
    return channel


def default_axis(cases: tuple[Case, ...]) -> int:
    spacing = np.median([_voxel_spacing(case.images[0]) for case in cases], axis=0)
    coarsest = np.nonzero(spacing >= spacing.max() * 0.99)[0]
    return int(coarsest[-1])


def case_spacing(case: Case, shape: tuple[int, ...], axis: int,
                 image_size: int) -> tuple[float, float]:
    """Pixel size (dy, dx) in mm of this case's slices after squaring and resizing."""
    spacing = _voxel_spacing(case.images[0])
    in_plane = [a for a in range(3) if a != axis]
    return resized_spacing(tuple(shape[a] for a in in_plane),
                           tuple(spacing[a] for a in in_plane), image_size)


def case_slices(image: np.ndarray, labels: np.ndarray, axis: int, keep: str, image_size: int,
                num_classes: int, case_id: str, spacing: tuple[float, float]) -> SliceList:
    one_hot = np.eye(num_classes, dtype=bool)
    slices = SliceList()
    for index in range(labels.shape[axis]):
        label_slice = take_slice(labels, index, axis)
        if keep == "foreground" and not label_slice.any():
            continue
        resized, mask = resize_slice(take_slice(image, index, axis + 1),
                                     np.moveaxis(one_hot[label_slice], 2, 0), image_size)
        slices.append(resized, mask, case_id, spacing)
    return slices


def slicing_axis(options: Options, layout: Layout) -> int:
    return options.axis if options.axis is not None else default_axis(layout.training)


def estimate_bytes(arg: str | None, image_size: int) -> int:
    """Peak bytes of `build`, from dataset.json and the NIfTI headers alone: the largest case
    as read (float32 channels, int64 labels, one-hot bool per class) and twice the prepared
    slices (gathered, then stacked) when every slice is kept (an upper bound)."""
    options = parse_arg(arg)
    layout = read_layout(options.root)
    axis = slicing_axis(options, layout)
    channels, classes = len(layout.channel_names), len(layout.class_names)
    shapes = [_header(case.label).get_data_shape()[:3] for case in layout.training + layout.test]
    largest = max((int(np.prod(shape)) for shape in shapes), default=0)
    slices = sum(shape[axis] for shape in shapes)
    return (4 * channels + 8 + classes) * largest + 2 * prepared_bytes(slices, channels,
                                                                       image_size)


def build(arg: str | None, image_size: int, seed: int, folds: int = 1,
          fold: int = 0) -> PreparedDataset:
    options = parse_arg(arg)
    layout = read_layout(options.root)
    rng = np.random.default_rng(seed)
    splits = split_cases(layout, rng) if folds == 1 else fold_cases(layout, rng, folds, fold)
    axis = slicing_axis(options, layout)
    schemes = [normalisation_scheme(name) for name in layout.channel_names]
    ct_stats = {c: ct_statistics(splits["train"], layout, c, rng)
                for c, scheme in enumerate(schemes) if scheme == "ct"}
    slices = {s: SliceList() for s in SPLIT_NAMES}
    pixel_mm = set()
    for split in SPLIT_NAMES:
        for case in splits[split]:
            image, labels = read_case(case, layout)
            image = np.stack([normalise(image[c], scheme, ct_stats.get(c))
                              for c, scheme in enumerate(schemes)])
            spacing = case_spacing(case, labels.shape, axis, image_size)
            slices[split].extend(case_slices(image, labels, axis, options.keep, image_size,
                                             len(layout.class_names), case.case_id, spacing))
            pixel_mm.update(spacing)
    check_splits_nonempty({s: len(slices[s]) for s in SPLIT_NAMES}, options.root,
                          f"slices (keep={options.keep}, axis={axis})")
    if folds == 1:
        rule = ("train/val from imagesTr, test from imagesTs/labelsTs" if layout.test
                else "70/10/20 seeded")
    else:
        rule = f"fold {fold} of {folds} over the {len(layout.training)} imagesTr cases (seeded)"
        if layout.test:
            rule += f"; the {len(layout.test)} imagesTs cases are not used"
    return PreparedDataset(
        name=f"nnunet:{options.root}",
        class_names=list(layout.class_names),
        splits=stack_splits(slices),
        description=(
            f"{layout.flavour} dataset {options.root}: {len(layout.channel_names)} channel(s) "
            f"({', '.join(layout.channel_names)}) normalised as nnU-Net does "
            f"({', '.join(schemes)}); 3D volumes sliced along axis {axis} ({options.keep} "
            f"slices), centred in a square and resized; case-level split {rule}"
        ),
        facts={
            "layout": layout.flavour,
            "axis": axis,
            "keep": options.keep,
            "cases": {s: [case.case_id for case in splits[s]] for s in SPLIT_NAMES},
            "slices_per_split": {s: len(slices[s]) for s in SPLIT_NAMES},
            "split_rule": rule,
            "normalisation": dict(zip(layout.channel_names, schemes, strict=True)),
            "ct_statistics": {layout.channel_names[c]: v for c, v in ct_stats.items()},
            "pixel_mm_range": [round(min(pixel_mm), 4), round(max(pixel_mm), 4)],
        },
    )
