import json

import nibabel as nib
import numpy as np
import pytest

from segbench.data import DataError, nnunet

SHAPE = (12, 10, 6)
SPACING = (1.0, 1.0, 3.0)  # axis 2 is the coarsest, so the default slicing axis


def _save(array, path, spacing=SPACING):
    image = nib.Nifti1Image(array, np.diag([*spacing, 1.0]))
    nib.save(image, str(path))


def _case_arrays(rng, index):
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:8, 2:7, 1:4] = 1
    labels[5:7, 4:6, 2:3] = 2
    labels = np.roll(labels, index % 3, axis=0)
    ct = (labels * 100 - 50 + rng.normal(0, 10, SHAPE)).astype(np.float32)
    mri = (labels * 3 + 10 + rng.normal(0, 1, SHAPE)).astype(np.float32)
    return ct, mri, labels


def make_v2(root, cases=6, test_cases=0, ending=".nii.gz"):
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
        (root / folder).mkdir(parents=True)
    for i in range(cases + test_cases):
        ct, mri, labels = _case_arrays(rng, i)
        images, labels_dir = ("imagesTr", "labelsTr") if i < cases else ("imagesTs", "labelsTs")
        _save(ct, root / images / f"case{i:03d}_0000{ending}")
        _save(mri, root / images / f"case{i:03d}_0001{ending}")
        _save(labels, root / labels_dir / f"case{i:03d}{ending}")
    meta = {"channel_names": {"0": "CT", "1": "T2"},
            "labels": {"background": 0, "organ": 1, "lesion": 2},
            "numTraining": cases, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_decathlon(root, cases=5):
    rng = np.random.default_rng(1)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(cases):
        ct, mri, labels = _case_arrays(rng, i)
        _save(np.stack([mri, mri * 2], -1), root / "imagesTr" / f"brain_{i}.nii.gz")
        _save(labels, root / "labelsTr" / f"brain_{i}.nii.gz")
        training.append({"image": f"./imagesTr/brain_{i}.nii.gz",
                         "label": f"./labelsTr/brain_{i}.nii.gz"})
    meta = {"modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "edema", "2": "tumour"},
            "numTraining": cases, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _foreground_slices(root, case_ids, axis):
    total = 0
    for case_id in case_ids:
        labels = np.asarray(nib.load(str(root / "labelsTr" / f"{case_id}.nii.gz")).dataobj)
        total += int((np.moveaxis(labels, axis, 0) > 0).any(axis=(1, 2)).sum())
    return total


def test_v2_round_trip_with_case_level_split(tmp_path):
    root = make_v2(tmp_path, cases=10)
    dataset = nnunet.build(str(root), 32, seed=0)
    cases = dataset.facts["cases"]
    assert [len(cases[s]) for s in ("train", "val", "test")] == [7, 1, 2]
    assert len(set(sum(cases.values(), []))) == 10  # no case in two splits
    assert dataset.facts["axis"] == 2 and dataset.in_channels == 2
    assert dataset.class_names == ["background", "organ", "lesion"]
    for split in ("train", "val", "test"):
        assert len(dataset.splits[split]) == _foreground_slices(root, cases[split], 2)
    assert dataset.facts["normalisation"] == {"CT": "ct", "T2": "zscore"}
    assert dataset.spacing_mm == pytest.approx(12 / 32)


def test_ct_statistics_are_the_train_foreground_percentiles(tmp_path):
    root = make_v2(tmp_path)
    layout = nnunet.read_layout(root)
    train = list(layout.training[:3])
    stats = nnunet.ct_statistics(train, layout, 0, np.random.default_rng(0))
    foreground = []
    for case in train:
        image, labels = nnunet.read_case(case, layout)
        foreground.append(image[0][labels > 0])
    foreground = np.concatenate(foreground)
    assert stats["lower"] == pytest.approx(np.percentile(foreground, 0.5))
    assert stats["upper"] == pytest.approx(np.percentile(foreground, 99.5))
    assert stats["mean"] == pytest.approx(foreground.mean(), rel=1e-5)
    normalised = nnunet.normalise(np.array([-1e4, stats["mean"], 1e4]), "ct", stats)
    assert normalised[1] == pytest.approx(0.0)
    assert normalised[0] == pytest.approx((stats["lower"] - stats["mean"]) / stats["std"])
    zscored = nnunet.normalise(np.arange(10.0), "zscore", None)
    assert zscored.mean() == pytest.approx(0.0) and zscored.std() == pytest.approx(1.0)


def test_axis_and_keep_options(tmp_path):
    dataset = nnunet.build(f"{make_v2(tmp_path)}@axis=0,keep=all", 32, seed=0)
    counts = {s: len(dataset.splits[s]) for s in ("train", "val", "test")}
    assert counts == {s: SHAPE[0] * len(dataset.facts["cases"][s]) for s in counts}
    with pytest.raises(DataError, match="bad option 'axis=3'"):
        nnunet.build(f"{tmp_path}@axis=3", 32, seed=0)


def test_labelled_imagests_become_the_test_split(tmp_path):
    dataset = nnunet.build(str(make_v2(tmp_path, cases=4, test_cases=2)), 32, seed=0)
    assert dataset.facts["cases"]["test"] == ["case004", "case005"]
    assert len(dataset.facts["cases"]["train"]) == 3


def test_decathlon_layout_with_4d_images(tmp_path):
    dataset = nnunet.build(str(make_decathlon(tmp_path)), 32, seed=0)
    assert dataset.facts["layout"] == "Decathlon" and dataset.in_channels == 2
    assert dataset.class_names == ["background", "edema", "tumour"]


def test_source_files_list_every_file(tmp_path):
    root = make_v2(tmp_path, cases=3, test_cases=1)
    assert set(nnunet.source_files(str(root))) == {p for p in root.rglob("*") if p.is_file()}


def _json(root):
    return root / "dataset.json", json.loads((root / "dataset.json").read_text())


def _edit_json(root, **changes):
    path, meta = _json(root)
    path.write_text(json.dumps({**meta, **changes}))


def _missing_label(root):
    (root / "labelsTr" / "case000.nii.gz").unlink()
    _edit_json(root, numTraining=6)


def _label_without_image(root):
    _save(np.zeros(SHAPE, np.uint8), root / "labelsTr" / "extra.nii.gz")


def _size_mismatch(root):
    _save(np.zeros((5, 5, 5), np.uint8), root / "labelsTr" / "case001.nii.gz")


def _label_outside(root):
    labels = np.zeros(SHAPE, np.uint8)
    labels[0, 0, 0] = 7
    _save(labels, root / "labelsTr" / "case001.nii.gz")


def _non_integer_label(root):
    _save(np.full(SHAPE, 0.5, np.float32), root / "labelsTr" / "case001.nii.gz")


def _nan_image(root):
    image = np.zeros(SHAPE, np.float32)
    image[1, 1, 1] = np.inf
    _save(image, root / "imagesTr" / "case001_0001.nii.gz")


def _unreadable(root):
    (root / "imagesTr" / "case001_0000.nii.gz").write_bytes(b"garbage")


def _too_few_cases(root):
    for i in range(2, 6):
        for path in root.rglob(f"case{i:03d}*"):
            path.unlink()
    _edit_json(root, numTraining=2)


def _wrong_num_training(root):
    _edit_json(root, numTraining=9)


def _missing_channel(root):
    (root / "imagesTr" / "case002_0001.nii.gz").unlink()


def _extra_channel(root):
    _save(np.zeros(SHAPE, np.float32), root / "imagesTr" / "case002_0002.nii.gz")


def _wrong_file_ending(root):
    _edit_json(root, file_ending=".nii")


def _unsupported_file_ending(root):
    _edit_json(root, file_ending=".mha")


def _region_labels(root):
    _edit_json(root, labels={"background": 0, "whole": [1, 2]})


@pytest.mark.parametrize("break_it, names, problem", [
    (_missing_label, "case000_0000.nii.gz", "no mask for this image"),
    (_label_without_image, "extra.nii.gz", "no image for this mask"),
    (_size_mismatch, "case001.nii.gz", r"size \(5, 5, 5\) differs"),
    (_label_outside, "case001.nii.gz", "label values 7 outside the 3 classes"),
    (_non_integer_label, "case001.nii.gz", "non-integer"),
    (_nan_image, "case001_0001.nii.gz", "NaN or Inf"),
    (_unreadable, "case001_0000.nii.gz", "unreadable"),
    (_too_few_cases, "dataset.json", "2 training cases; a case-level split needs at least 3"),
    (_wrong_num_training, "dataset.json", "numTraining is 9 but the training folders hold 6"),
    (_missing_channel, "case002_0001.nii.gz", "missing; .* declares 2 channels"),
    (_extra_channel, "case002_0002.nii.gz", "channel 2 but"),
    (_wrong_file_ending, "case000_0000.nii.gz", "does not end with file_ending '.nii'"),
    (_unsupported_file_ending, "dataset.json", "'.mha' is not supported"),
    (_region_labels, "dataset.json", "region-based"),
])
def test_broken_v2_dataset_gives_one_line_naming_the_file(tmp_path, break_it, names, problem):
    root = make_v2(tmp_path)
    break_it(root)
    with pytest.raises(DataError, match=problem) as error:
        nnunet.build(str(root), 32, seed=0)
    assert names in str(error.value) and "\n" not in str(error.value)


def test_broken_decathlon_dataset(tmp_path):
    root = make_decathlon(tmp_path)
    _edit_json(root, modality={"0": "FLAIR"})
    with pytest.raises(DataError, match="4D image with 2 channels but .* declares 1"):
        nnunet.build(str(root), 32, seed=0)
    (root / "labelsTr" / "brain_0.nii.gz").unlink()
    with pytest.raises(DataError, match="brain_0.nii.gz: listed in .* training but missing"):
        nnunet.build(str(root), 32, seed=0)


def test_a_split_without_foreground_slices_is_an_error_unless_keep_all(tmp_path):
    root = make_v2(tmp_path, cases=4)
    [val_case] = nnunet.build(str(root), 32, seed=0).facts["cases"]["val"]
    _save(np.zeros(SHAPE, np.uint8), root / "labelsTr" / f"{val_case}.nii.gz")
    with pytest.raises(DataError, match="the val split has no slices"):
        nnunet.build(f"{root}@keep=foreground", 32, seed=0)
    assert len(nnunet.build(f"{root}@keep=all", 32, seed=0).splits["val"]) == SHAPE[2]


def test_a_2d_nifti_is_one_line(tmp_path):
    root = make_v2(tmp_path)
    for channel in ("0000", "0001"):
        _save(np.zeros((12, 10), np.float32), root / "imagesTr" / f"case002_{channel}.nii.gz")
    with pytest.raises(DataError, match="is a 2D image; nnunet: takes 3D volumes") as error:
        nnunet.build(str(root), 32, seed=0)
    assert "case002_0000.nii.gz" in str(error.value) and "\n" not in str(error.value)


def test_estimate_bytes_bounds_the_prepared_tensors(tmp_path):
    from segbench.data import estimate_prepared_bytes

    root = make_v2(tmp_path, cases=6)
    dataset = nnunet.build(str(root), 64, seed=0)
    prepared = sum(s.images.nbytes + s.masks.nbytes for s in dataset.splits.values())
    estimate = estimate_prepared_bytes(f"nnunet:{root}", 64)
    assert prepared < estimate < 10 * prepared
    assert estimate_prepared_bytes(f"nnunet:{root}", 4096) > 2**30
