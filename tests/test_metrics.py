"""Overlap metrics against values computed by hand."""

import math

import torch

from segbench.data.base import Split
from segbench.measure.accuracy import confusion_matrix, majority_baseline, scores_from_confusion


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
