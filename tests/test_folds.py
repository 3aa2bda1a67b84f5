"""K-fold splits: no case in two splits, the test folds partition the cases, bad requests are
one line; every loader carries its case ids."""

import json

import numpy as np
import pytest
from PIL import Image
from test_data_folder import make_folder
from test_data_nnunet import make_v2

from segbench.data import DataError, folder, load_dataset, nnunet, phantom, validate_folds
from segbench.data.folds import fold_assignment


@pytest.mark.parametrize("units, folds, n_val", [(10, 2, 1), (10, 5, 1), (10, 10, 1), (23, 4, 3)])
def test_test_folds_partition_the_units_and_val_comes_from_other_folds(units, folds, n_val):
    tested = np.zeros(units, int)
    for fold in range(folds):
        splits = fold_assignment(units, folds, fold, n_val, np.random.default_rng(7), "cases",
                                 "x")
        assert set(splits) == {"train", "val", "test"}
        assert (splits == "val").sum() == n_val
        tested += splits == "test"
    assert (tested == 1).all()
    sizes = [(fold_assignment(units, folds, k, n_val, np.random.default_rng(7), "cases", "x")
              == "test").sum() for k in range(folds)]
    assert max(sizes) - min(sizes) <= 1


def test_fold_assignment_depends_on_the_seed_only():
    a = fold_assignment(12, 3, 1, 1, np.random.default_rng(0), "cases", "x")
    b = fold_assignment(12, 3, 1, 1, np.random.default_rng(0), "cases", "x")
    c = fold_assignment(12, 3, 1, 1, np.random.default_rng(1), "cases", "x")
    assert (a == b).all() and not (a == c).all()


@pytest.mark.parametrize("units, folds, fold, problem", [
    (10, 11, 0, "--folds 11 is more than its 10 cases"),
    (10, 3, 3, "fold 3 is outside 0..2"),
    (2, 2, 0, "too few for 1 validation and at least 1 training"),
])
def test_bad_fold_requests_are_one_line(units, folds, fold, problem):
    with pytest.raises(DataError, match=problem) as error:
        fold_assignment(units, folds, fold, 1, np.random.default_rng(0), "cases", "data")
    assert "\n" not in str(error.value)


def test_folder_folds_are_over_images_named_by_stem(tmp_path):
    root = make_folder(tmp_path, n=10)
    tested = []
    for fold in range(3):
        dataset = folder.build(str(root), 32, seed=0, folds=3, fold=fold)
        groups = {s: dataset.splits[s].groups for s in ("train", "val", "test")}
        assert sum(len(g) for g in groups.values()) == 10
        assert len(set(sum(groups.values(), []))) == 10  # no image in two splits
        assert len(groups["val"]) == 1 and "fold" in dataset.facts["split_rule"]
        assert dataset.splits["test"].spacing_mm is None  # unknown for plain images
        tested += groups["test"]
    assert sorted(tested) == sorted(f"case{i}" for i in range(10))


def test_folder_folds_leave_a_given_test_folder_out(tmp_path):
    root = make_folder(tmp_path, n=6, splits=["train", "test"])
    dataset = folder.build(str(root), 32, seed=0, folds=2, fold=1)
    every = sum((dataset.splits[s].groups for s in ("train", "val", "test")), [])
    assert sorted(every) == sorted(f"train/train{i}" for i in range(6))
    assert "the 6 pairs of test/ are not used" in dataset.facts["split_rule"]


def test_nnunet_folds_are_over_training_cases(tmp_path):
    root = make_v2(tmp_path, cases=8, test_cases=2)
    tested = []
    for fold in range(4):
        dataset = nnunet.build(str(root), 32, seed=1, folds=4, fold=fold)
        cases = dataset.facts["cases"]
        assert len(set(sum(cases.values(), []))) == sum(len(c) for c in cases.values())
        for split in ("train", "val", "test"):
            assert set(dataset.splits[split].groups) == set(cases[split])
        tested += cases["test"]
        assert "imagesTs cases are not used" in dataset.facts["split_rule"]
    assert sorted(tested) == [f"case{i:03d}" for i in range(8)]


def test_nnunet_slices_carry_their_case_and_spacing(tmp_path):
    dataset = nnunet.build(str(make_v2(tmp_path, cases=6)), 32, seed=0)
    test = dataset.splits["test"]
    assert set(test.groups) == set(dataset.facts["cases"]["test"])
    assert test.spacing_mm.shape == (len(test), 2)
    assert np.allclose(test.spacing_mm.numpy(), 12 / 32)  # axis 2: in-plane 12 x 10, 1 mm


def test_phantom_folds_and_default_split(tmp_path):
    default = phantom.build(None, 16, seed=4)
    assert [len(default.splits[s]) for s in ("train", "val", "test")] == [48, 8, 16]
    tested = []
    for fold in range(3):
        dataset = phantom.build(None, 16, seed=4, folds=3, fold=fold)
        assert len(dataset.splits["test"]) == 24 and len(dataset.splits["val"]) == 8
        tested += dataset.splits["test"].groups
    assert sorted(tested) == sorted(f"seed4/{i}" for i in range(72))


def _rare_class_folder(root):
    """10 pairs; only case3 holds class 2."""
    root = make_folder(root, n=10, classes=["background", "lesion", "organ"])
    for i in range(10):
        if i != 3:
            mask = np.asarray(Image.open(root / "masks" / f"case{i}.png")).copy()
            mask[mask == 2] = 0
            Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


def test_a_fold_without_some_class_in_train_or_test_is_an_error(tmp_path):
    root = _rare_class_folder(tmp_path / "data")
    with pytest.raises(DataError, match=r"fold 0 of 2: the (train|test) split has no pixel of "
                                        "organ; use fewer folds") as error:
        validate_folds(f"folder:{root}", 32, 0, 2, cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value)


def test_validate_folds_prepares_every_fold(tmp_path):
    root = make_folder(tmp_path / "data", n=10)
    sizes = validate_folds(f"folder:{root}", 32, 0, 3, cache_dir=tmp_path / "cache")
    assert [s["test"] for s in sizes] == [4, 3, 3]
    assert len(list((tmp_path / "cache").iterdir())) == 3
    with pytest.raises(DataError, match="--folds 11 is more than its 10 image/mask pairs"):
        validate_folds(f"folder:{root}", 32, 0, 11, cache_dir=tmp_path / "cache")


def test_small_splits_warn_in_one_line_and_go_to_the_facts(tmp_path, capsys):
    root = make_folder(tmp_path / "data", n=12)
    dataset = load_dataset(f"folder:{root}", 32, cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segbench: warning: dataset folder:")
    assert "the val split has 1 slice(s), fewer than 5" in err[0]
    assert dataset.facts["split_warnings"][0] == "the val split has 1 slice(s), fewer than 5"
    assert json.dumps(dataset.facts)  # goes into run.json as it is
