"""Overlap metrics against values computed by hand."""

import math

import pytest
import torch

from segbench.data.base import Split
from segbench.measure.accuracy import (
    case_scores,
    confusion_matrix,
    majority_baseline,
    pixel_prior,
    pixel_prior_baseline,
    scores_from_confusion,
)


def test_confusion_matrix_rows_are_reference():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]


def test_scores_by_hand():
    # class 1: tp 2, fp 1, fn 0 -> IoU 2/3, Dice 4/5; class 2: tp 2, fp 0, fn 1 -> 2/3, 4/5
    cm = torch.tensor([[2, 1, 0], [0, 2, 0], [1, 0, 2]])
    s = scores_from_confusion(cm)
    assert math.isclose(s["iou_per_class"][1], 0.6667, abs_tol=1e-4)
    assert math.isclose(s["dice_per_class"][2], 0.8, abs_tol=1e-4)
    # background: tp 2, fp 1, fn 1 -> IoU 1/2, Dice 2/3 (reported, not averaged)
    assert math.isclose(s["iou_per_class"][0], 0.5, abs_tol=1e-4)
    assert math.isclose(s["miou"], 2 / 3, abs_tol=1e-9)
    assert math.isclose(s["mdice"], 0.8, abs_tol=1e-9)
    assert math.isclose(s["pixel_accuracy"], 6 / 8)
    assert s["classes_undefined"] == 0


def test_class_absent_everywhere_is_left_out_and_counted():
    cm = torch.tensor([[5, 0, 0], [0, 3, 0], [0, 0, 0]])
    s = scores_from_confusion(cm)
    assert s["classes_undefined"] == 1
    assert s["mdice"] == 1.0  # only class 1 is averaged
    assert math.isnan(s["dice_per_class"][2])


def test_perfect_and_empty_prediction():
    target = torch.randint(0, 4, (3, 8, 8))
    perfect = scores_from_confusion(confusion_matrix(target, target, 4))
    assert perfect["miou"] == 1.0 and perfect["mdice"] == 1.0
    background = scores_from_confusion(confusion_matrix(torch.zeros_like(target), target, 4))
    assert background["mdice"] == 0.0


def test_majority_baseline_predicts_most_frequent_training_class():
    train = Split(torch.zeros(2, 1, 4, 4), torch.tensor([[[2] * 4] * 4, [[2, 2, 1, 0]] * 4]))
    test = Split(torch.zeros(1, 1, 2, 2), torch.tensor([[[2, 2], [1, 0]]]))
    s = majority_baseline(train, test, 3)
    # predicts 2 everywhere: class 2 Dice 2*2/(2*2+2) = 2/3, class 1 Dice 0
    assert math.isclose(s["dice_per_class"][2], 0.6667, abs_tol=1e-4)
    assert math.isclose(s["mdice"], (0 + 2 / 3) / 2, abs_tol=1e-4)


def test_pixel_prior_predicts_each_pixels_most_frequent_training_class():
    masks = torch.tensor([[[1, 0], [2, 2]], [[1, 2], [0, 2]], [[0, 2], [0, 1]]])
    train = Split(torch.zeros(3, 1, 2, 2), masks)
    # pixel (0,0): 1,1,0 -> 1; (0,1): 0,2,2 -> 2; (1,0): 2,0,0 -> 0; (1,1): 2,2,1 -> 2
    assert pixel_prior(train, 3).tolist() == [[1, 2], [0, 2]]
    test = Split(torch.zeros(2, 1, 2, 2), torch.tensor([[[1, 2], [0, 2]], [[1, 1], [0, 0]]]))
    scores = pixel_prior_baseline(train, test, 3)
    # class 1: tp 2, fp 0, fn 1 -> Dice 4/5; class 2: tp 2, fp 2, fn 0 -> Dice 2/3
    assert scores["dice_per_class"][1:] == [0.8, pytest.approx(0.6667, abs=1e-4)]
    assert scores["mdice"] == pytest.approx((4 / 5 + 2 / 3) / 2)


def test_pixel_prior_ties_go_to_the_lower_class():
    train = Split(torch.zeros(2, 1, 1, 1), torch.tensor([[[2]], [[1]]]))
    assert pixel_prior(train, 3).tolist() == [[1]]


def test_case_scores_use_each_cases_own_slices():
    from segbench.measure.boundary import boundary_metrics

    target = torch.zeros(3, 6, 8, dtype=torch.long)
    target[:, 2, 2] = 1
    pred = target.clone()
    pred[2, 2, 2], pred[2, 2, 5] = 0, 1  # slice 2 (case b): the point moved 3 columns
    spacing = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 0.5]], dtype=torch.float64)
    split = Split(torch.zeros(3, 1, 6, 8), target, ["a", "a", "b"], spacing)
    rows = case_scores(pred, split, 2)
    assert [(r["case"], r["slices"]) for r in rows] == [("a", 2), ("b", 1)]
    assert rows[0]["mdice"] == 1.0 and rows[0]["hd95_px"] == 0.0
    assert rows[1]["mdice"] == 0.0 and rows[1]["miou"] == 0.0
    assert rows[1]["hd95_px"] == pytest.approx(3.0) and rows[1]["hd95_mm"] == pytest.approx(1.5)
    alone = boundary_metrics(pred[2:], target[2:], 2, spacing[2:])
    assert rows[1]["nsd"] == alone["nsd"] and rows[1]["asd_mm"] == alone["asd_mm"]


def test_case_without_foreground_has_no_score_and_unknown_spacing_no_mm():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 1, 1] = 1
    rows = case_scores(target.clone(), Split(torch.zeros(2, 1, 4, 4), target, ["a", "b"]), 2)
    assert rows[0]["mdice"] == 1.0 and rows[0]["hd95_mm"] is None
    assert math.isnan(rows[1]["mdice"]) and math.isnan(rows[1]["hd95_px"])
