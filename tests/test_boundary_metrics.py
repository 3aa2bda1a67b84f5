import math

import numpy as np
import pytest
import torch

from segbench.measure.boundary import boundary_metrics, surface


def _maps(shape, pred_pixels, target_pixels, label=1):
    pred = torch.zeros(1, *shape, dtype=torch.long)
    target = torch.zeros(1, *shape, dtype=torch.long)
    for r, c in pred_pixels:
        pred[0, r, c] = label
    for r, c in target_pixels:
        target[0, r, c] = label
    return pred, target


def test_surface_of_a_filled_square_is_its_ring():
    region = np.zeros((7, 7), bool)
    region[1:4, 1:4] = True
    assert surface(region).sum() == 8 and not surface(region)[2, 2]


def test_identical_maps_score_perfectly():
    pred, _ = _maps((8, 8), [(r, c) for r in range(2, 6) for c in range(2, 6)], [])
    result = boundary_metrics(pred, pred.clone(), 2, spacing_mm=None)
    assert (result["hd95_px"], result["asd_px"], result["nsd"]) == (0.0, 0.0, 1.0)


def test_two_points_three_pixels_apart():
    pred, target = _maps((6, 8), [(2, 2)], [(2, 5)])
    result = boundary_metrics(pred, target, 2, spacing_mm=0.5)
    assert result["hd95_px"] == pytest.approx(3.0)
    assert result["asd_px"] == pytest.approx(3.0)
    assert result["nsd"] == 0.0
    assert result["hd95_mm"] == pytest.approx(1.5) and result["asd_mm"] == pytest.approx(1.5)
    assert boundary_metrics(pred, target, 2, spacing_mm=None, tolerance_px=3.0)["nsd"] == 1.0


def test_hand_computed_asymmetric_case():
    # target: pixels (0,0) and (0,4); pred: pixel (0,0).
    # pred->target distances [0]; target->pred [0, 4].
    # HD95 = max(p95([0]), p95([0, 4])) = 0.95 * 4; ASSD = (0 + 0 + 4) / 3; NSD(1 px) = 2 / 3.
    pred, target = _maps((5, 5), [(0, 0)], [(0, 0), (0, 4)])
    result = boundary_metrics(pred, target, 2, spacing_mm=None)
    assert result["hd95_px"] == pytest.approx(3.8)
    assert result["asd_px"] == pytest.approx(4 / 3)
    assert result["nsd"] == pytest.approx(2 / 3)
    assert result["hd95_mm"] is None and result["asd_mm"] is None


def test_empty_prediction_scores_the_diagonal_and_is_counted():
    pred, target = _maps((6, 8), [], [(1, 1)])
    result = boundary_metrics(pred, target, 2, spacing_mm=2.0)
    assert result["hd95_px"] == 10.0 and result["asd_px"] == 10.0 and result["nsd"] == 0.0
    assert result["hd95_mm"] == 20.0
    assert result["pred_empty_per_class"] == [1] and result["target_empty_per_class"] == [0]
    pred, target = target, pred
    assert boundary_metrics(pred, target, 2, None)["target_empty_per_class"] == [1]


def test_both_empty_is_skipped_counted_and_never_a_silent_nan():
    # class 1 present in image 0 only (perfect); class 2 never present anywhere.
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, 1, 1] = 1
    result = boundary_metrics(pred, pred.clone(), 3, spacing_mm=None)
    assert result["both_empty_per_class"] == [1, 2]
    assert result["evaluated_per_class"] == [1, 0]
    assert result["hd95_px_per_class"][0] == 0.0 and math.isnan(result["hd95_px_per_class"][1])
    assert result["classes_with_value"] == [1] and result["classes_without_value"] == [2]
    assert result["hd95_px"] == 0.0 and result["nsd"] == 1.0


def test_mean_over_images_then_over_classes():
    pred, target = _maps((6, 8), [(2, 2)], [(2, 5)])  # class 1: HD95 3
    pred = torch.cat([pred, pred])
    target = torch.cat([target, torch.zeros_like(target)])
    target[1, 0, 0] = 2  # image 1: class 1 target empty (10), class 2 pred empty (10)
    result = boundary_metrics(pred, target, 3, spacing_mm=None)
    assert result["hd95_px_per_class"] == [pytest.approx(6.5), 10.0]
    assert result["hd95_px"] == pytest.approx(8.25)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="must both be"):
        boundary_metrics(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5), 2, None)


def test_anisotropic_spacing_measures_each_axis_in_its_own_mm():
    # (1,1) to (4,5): 3 rows of 2 mm and 4 columns of 0.5 mm -> sqrt(6^2 + 2^2) mm
    pred, target = _maps((6, 8), [(1, 1)], [(4, 5)])
    result = boundary_metrics(pred, target, 2, spacing_mm=(2.0, 0.5))
    assert result["hd95_px"] == pytest.approx(5.0)
    assert result["hd95_mm"] == pytest.approx(math.sqrt(40.0))
    assert result["asd_mm"] == pytest.approx(math.sqrt(40.0))
    assert result["spacing_mm_range"] == [0.5, 2.0]


def test_one_spacing_per_image_and_the_diagonal_in_mm():
    pred, target = _maps((6, 8), [(2, 2)], [(2, 5)])  # 3 columns apart
    empty_pred = torch.zeros_like(pred)
    both_pred, both_target = torch.cat([pred, empty_pred]), torch.cat([target, target])
    spacing = torch.tensor([[1.0, 0.25], [3.0, 0.5]], dtype=torch.float64)
    result = boundary_metrics(both_pred, both_target, 2, spacing_mm=spacing)
    # image 0: 3 * 0.25 mm; image 1: prediction empty, the diagonal hypot(6 * 3, 8 * 0.5)
    assert result["hd95_mm_per_class"] == [pytest.approx((0.75 + math.hypot(18, 4)) / 2)]
    assert result["hd95_px"] == pytest.approx((3.0 + 10.0) / 2)


@pytest.mark.parametrize("spacing", [(1.0, 2.0, 3.0), torch.ones(3, 2), (0.0, 1.0), -1.0])
def test_bad_spacing_is_one_clear_error(spacing):
    pred, target = _maps((4, 4), [(1, 1)], [(2, 2)])
    with pytest.raises(ValueError, match="spacing_mm must be"):
        boundary_metrics(pred, target, 2, spacing_mm=spacing)
