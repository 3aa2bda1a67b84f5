"""Repeats through the runner: K-fold rows whose test splits never share a case, the summary
and curves they publish, resume, bad fold requests refused before anything is written, and
boundary distances in mm from each test case's own pixel size."""

import csv
import math

import nibabel as nib
import numpy as np
import pytest
from test_cli import SMOKE, error_line
from test_folds import _rare_class_folder

from segbench import cli, runner, train
from segbench.recipes import recipe_for

FOLDS_RUN = [*SMOKE, "--arch", "fcn", "--seeds", "0", "--folds", "2"]


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("folds")
    assert cli.main([*FOLDS_RUN, "--out", str(out)]) == 0
    return out


def test_each_fold_is_a_row_and_no_case_is_tested_twice(folds_run):
    rows = read(folds_run / "results.csv")
    assert [(r["fold"], r["folds"], r["status"]) for r in rows] == [("0", "2", "ok"),
                                                                    ("1", "2", "ok")]
    tested = {fold: {c["case"] for c in read(folds_run / "cases.csv") if c["fold"] == fold}
              for fold in ("0", "1")}
    assert tested["0"] and tested["1"] and not tested["0"] & tested["1"]
    assert len(tested["0"] | tested["1"]) == 72  # every phantom case, once
    assert all(r["converged"] in ("True", "False") for r in rows)
    assert all(r["recipe"] == "family" and r["optimizer"] and float(r["lr"]) > 0 for r in rows)
    assert all(0 <= float(r["pixel_prior_baseline_mdice"]) <= 1 for r in rows)


def test_folds_publish_one_summary_row_and_every_curve(folds_run):
    (row,) = read(folds_run / "summary.csv")
    assert list(row)[:5] == ["arch", "variant", "kernels", "mode", "n"]
    assert (row["variant"], row["n"], row["n_cases"], row["rank"]) == ("fcn-small", "2", "72",
                                                                       "1")
    assert float(row["mdice_ci_low"]) <= float(row["mdice_mean"]) <= float(row["mdice_ci_high"])
    history = read(folds_run / "history.csv")
    assert sorted({h["fold"] for h in history}) == ["0", "1"]
    assert all(float(h["lr"]) > 0 and float(h["seconds"]) >= 0 for h in history)
    text = (folds_run / "summary.md").read_text()
    assert "## phantom, 32 px, cpu, profile smoke" in text and "folds 2" in text
    assert "predicting the training split's most frequent class at each pixel" in text


def test_a_rerun_skips_every_fold(folds_run, monkeypatch, capsys):
    monkeypatch.setattr(runner, "train_unit", lambda *a: pytest.fail("retrained"))
    assert cli.main([*FOLDS_RUN, "--out", str(folds_run)]) == 0
    assert capsys.readouterr().out.startswith(f"segbench: resuming {folds_run}: 2/2 rows done")


def test_a_fold_without_some_class_is_one_line_before_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "train_unit", lambda *a: pytest.fail("trained"))
    root = _rare_class_folder(tmp_path / "data")
    out = tmp_path / "o"
    argv = [a for a in SMOKE if a not in ("--dataset", "phantom")]
    assert cli.main([*argv, "--dataset", f"folder:{root}", "--arch", "fcn", "--folds", "2",
                     "--out", str(out)]) == 2
    assert "has no pixel of organ; use fewer folds" in error_line(capsys)
    assert not out.exists()


# nnU-Net volumes of two physical sizes: 12 x 12 voxels in plane, sliced along axis 2 (the
# coarsest), resized to the smoke profile's 32 px; a pixel is then 12 * side / 32 mm
SIDES_MM = {"case000": 1.0, "case001": 2.0, "case002": 1.0, "case003": 2.0, "case004": 1.0,
            "case005": 2.0}


def make_two_size_volumes(root):
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (case, side) in enumerate(SIDES_MM.items()):
        labels = np.zeros((12, 12, 6), np.uint8)
        labels[2 + i % 3:9, 3:10, 1:5] = 1
        labels[5:8, 5:8, 2:4] = 2
        image = (labels * 3 + rng.normal(0, 1, labels.shape)).astype(np.float32)
        affine = np.diag([side, side, 4.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(root / "labelsTr" / f"{case}.nii.gz"))
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1, "lesion": 2},'
        ' "numTraining": 6, "file_ending": ".nii.gz"}')
    return root


def test_boundary_mm_use_each_test_case_s_own_pixel_size(tmp_path):
    root = make_two_size_volumes(tmp_path / "data")
    argv = [a for a in SMOKE if a not in ("--dataset", "phantom")]
    out = tmp_path / "o"
    assert cli.main([*argv, "--dataset", f"nnunet:{root}", "--arch", "fcn", "--folds", "2",
                     "--seeds", "0", "--out", str(out)]) == 0
    rows = read(out / "results.csv")
    assert all(math.isfinite(float(r["hd95_mm"])) and math.isfinite(float(r["asd_mm"]))
               for r in rows)
    cases = read(out / "cases.csv")
    assert {c["case"] for c in cases} == set(SIDES_MM)  # two folds test every case once
    for case in cases:
        pixel_mm = 12 * SIDES_MM[case["case"]] / 32
        for metric in ("hd95", "asd"):
            px, mm = float(case[f"{metric}_px"]), float(case[f"{metric}_mm"])
            assert mm == pytest.approx(px * pixel_mm), (case["case"], metric)
    assert len({12 * side / 32 for side in SIDES_MM.values()}) == 2  # the sizes really differ



def test_lr_sweep_trains_three_lrs_and_rows_keep_the_pick(tmp_path, monkeypatch):
    family_lr = recipe_for("fcn", "family", cli.PROFILES["smoke"]).lr
    seen = []

    def fake_fit(model, data, profile, device, seed, desc="train", recipe=None):
        """No training: val mDice peaks at the recipe's own lr."""
        seen.append(recipe.lr)
        score = 0.5 if recipe.lr == family_lr else 0.3
        return train.TrainResult(0.1, 1, 1, score, 1.0, [{"epoch": 1, "train_loss": 1.0,
                                                           "val_mdice": score, "lr": recipe.lr,
                                                           "seconds": 0.1}], recipe.to_json())

    monkeypatch.setattr(train, "fit", fake_fit)
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "fcn", "--lr-sweep", "--out", str(out)]) == 0
    assert seen == pytest.approx([0.1 * family_lr, family_lr, 10 * family_lr])
    (row,) = read(out / "results.csv")
    assert row["lr_sweep"] == "0.1,1,10" and float(row["lr"]) == pytest.approx(family_lr)
    assert row["lr_tried"] == " ".join(f"{lr:g}:{v:.4f}" for lr, v in zip(
        seen, (0.3, 0.5, 0.3), strict=True))
    assert "--lr-sweep" in (out / "results.md").read_text()
