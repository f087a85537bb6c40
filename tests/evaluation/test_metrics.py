"""Tests for nanoseg.evaluation.metrics (synthetic arrays and one cropped BAM(-layout) mask)."""

import math

import numpy as np
import pytest
import tifffile
from skimage import measure

from nanoseg.evaluation import metrics
from nanoseg.errors import NanosegError
from tests.conftest import MASKS


def _squares(shape, boxes):
    labels = np.zeros(shape, np.int32)
    for i, (r, c, h, w) in enumerate(boxes, start=1):
        labels[r:r + h, c:c + w] = i
    return labels


def test_pixel_metrics_perfect():
    y = np.zeros((20, 20), bool)
    y[5:10, 5:12] = True
    out = metrics.pixel_metrics(y, y.astype(float))
    assert tuple(out) == metrics.PIXEL_METRICS
    assert all(v == 1.0 for v in out.values())


def test_pixel_metrics_hand_computed():
    y = np.array([[1, 1, 0, 0]])
    p = np.array([[0.9, 0.4, 0.6, 0.1]])
    out = metrics.pixel_metrics(y, p)  # tp=1 fn=1 fp=1 tn=1
    assert out["accuracy"] == out["precision"] == out["recall"] == 0.5
    assert out["f1"] == out["dice"] == 0.5
    assert out["iou"] == pytest.approx(1 / 3)
    assert out["auc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ranked right


def test_pixel_metrics_pools_lists_and_subsamples_auc():
    rng = np.random.default_rng(1)
    ys = [rng.random((30, 40)) < 0.3 for _ in range(3)]
    ps = [np.clip(y * 0.4 + rng.random(y.shape) * 0.6, 0, 1) for y in ys]
    pooled = metrics.pixel_metrics(ys, ps)
    single = metrics.pixel_metrics(np.concatenate(ys), np.concatenate(ps))
    assert pooled == pytest.approx(single)
    sub = metrics.pixel_metrics(ys, ps, max_auc_pixels=1000, seed=3)
    assert sub["auc"] == metrics.pixel_metrics(ys, ps, max_auc_pixels=1000, seed=3)["auc"]
    assert sub["auc"] == pytest.approx(pooled["auc"], abs=0.05)


def test_pixel_metrics_degenerate_cases_give_nan():
    y = np.zeros((5, 5), bool)
    out = metrics.pixel_metrics(y, np.zeros((5, 5)))
    assert out["accuracy"] == 1.0
    assert math.isnan(out["auc"]) and math.isnan(out["precision"]) and math.isnan(out["dice"])
    with pytest.raises(NanosegError, match="shape"):
        metrics.pixel_metrics(y, np.zeros((5, 6)))


def test_choose_threshold():
    y = np.zeros((10, 10), bool)
    y[:5] = True
    p = np.where(y, 0.72, 0.31)
    assert metrics.choose_threshold([y], [p]) == pytest.approx(0.35)  # first with Dice 1
    p2 = np.where(y, 0.72, 0.62)
    assert metrics.choose_threshold([y], [p2]) == pytest.approx(0.65)


def test_match_instances_and_pq():
    gt = _squares((40, 60), [(2, 2, 10, 10), (2, 20, 10, 10), (20, 2, 10, 10)])
    pred = _squares((40, 60), [(2, 2, 10, 10), (2, 22, 10, 10), (25, 40, 8, 8)])
    m = metrics.match_instances(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert sorted(m["matches"]) == [(1, 1, 1.0), (2, 2, pytest.approx(80 / 120))]
    assert metrics.match_instances(gt, pred, 0.75)["tp"] == 1
    out = metrics.instance_metrics(gt, pred)
    assert out["f1_50"] == pytest.approx(2 / 3) and out["f1_75"] == pytest.approx(1 / 3)
    assert out["precision_50"] == out["recall_50"] == pytest.approx(2 / 3)
    assert out["sq"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["pq"] == pytest.approx(out["sq"] * out["rq"])
    assert (out["n_gt"], out["n_pred"]) == (3, 3)


def test_match_below_half_is_optimal_one_to_one():
    gt = np.zeros((1, 20), np.int32)
    gt[0, :10], gt[0, 10:] = 1, 2
    pred = np.zeros((1, 20), np.int32)
    pred[0, 4:14], pred[0, :4] = 1, 2  # IoU: (1,1)=6/14, (2,1)=4/16, (1,2)=4/10
    m = metrics.match_instances(gt, pred, 0.2)
    assert sorted((g, p) for g, p, _ in m["matches"]) == [(1, 2), (2, 1)]
    assert m["tp"] == 2


def test_instance_metrics_sizes_lists_and_measurable():
    gt = _squares((50, 50), [(0, 0, 10, 10), (20, 20, 10, 10)])
    pred = _squares((50, 50), [(0, 0, 10, 10), (20, 20, 12, 12)])
    out = metrics.instance_metrics(gt, pred, pixel_size_nm=2.0)
    assert out["median_ecd_gt"] == pytest.approx(2 * math.sqrt(400 / math.pi))
    assert out["ecd_ks"] == pytest.approx(0.5) and out["ecd_wasserstein"] > 0
    assert "n_gt_measurable" not in out
    pooled = metrics.instance_metrics([gt, gt], [pred, gt])
    assert (pooled["n_gt"], pooled["tp"]) == (4, 4)
    border = metrics.instance_metrics(gt, pred, gt_measurable="border", pred_measurable="border")
    assert border["n_gt_measurable"] == 1 and border["median_ecd_rel_error_measurable"] == pytest.approx(0.2)
    cm = np.zeros((40, 50), bool)  # shorter mask, like the BAM *_cm.tif
    cm[:12, :12] = True
    sel = metrics.instance_metrics(gt, pred, gt_measurable=cm)
    assert sel["n_gt_measurable"] == 1 and sel["n_pred_measurable"] == 2
    flags = metrics.instance_metrics(gt, pred, pred_measurable=np.array([False, True]))
    assert flags["median_ecd_pred_measurable"] == pytest.approx(math.sqrt(4 * 144 / math.pi))


def test_instance_metrics_empty():
    z = np.zeros((8, 8), np.int32)
    out = metrics.instance_metrics(z, z)
    assert out["n_gt"] == 0 and math.isnan(out["f1_50"]) and math.isnan(out["median_ecd_gt"])
    one = z.copy()
    one[2:4, 2:4] = 1
    assert metrics.instance_metrics(one, z)["pq"] == 0.0


def test_summarize_folds():
    out = metrics.summarize_folds([{"f1": 1.0, "name": "a", "n": 3}, {"f1": 3.0, "n": 5},
                                   {"f1": float("nan")}])
    assert out["f1"] == {"mean": 2.0, "std": pytest.approx(math.sqrt(2))}
    assert out["f1_mean"] == 2.0 and out["n_std"] == pytest.approx(math.sqrt(2))
    assert "name" not in out and math.isnan(metrics.summarize_folds([{"a": 1}])["a_std"])


def test_bam_mask_against_itself(bam_dir):
    path = sorted((bam_dir / MASKS).glob("*_m.tif"))[0]  # 1908248_m.tif, or the synthetic stand-in's
    crop = tifffile.imread(path)[200:456, 300:556] > 0
    gt = measure.label(crop, connectivity=1)
    assert gt.max() > 5
    out = metrics.instance_metrics(gt, gt, pixel_size_nm=7.34375, gt_measurable="border")
    assert out["f1_50"] == out["f1_75"] == out["pq"] == 1.0
    # ground truth as a prediction scores 1.0 in every subset (all and clean)
    assert out["f1_50_clean"] == out["f1_75_clean"] == out["pq_clean"] == out["precision_50_clean"] == 1.0
    assert 0 < out["n_gt_clean"] < out["n_gt"] and out["median_ecd_rel_error_clean"] == 0.0
    assert out["median_ecd_rel_error"] == 0.0
    assert metrics.pixel_metrics(crop, crop.astype(np.float32))["dice"] == 1.0


def test_clean_subset_drops_specks_and_border_particles_on_both_sides():
    gt = np.zeros((40, 40), np.int32)
    gt[10:16, 10:16] = 1          # clean, 36 px
    gt[0:6, 20:26] = 2            # touches the border
    gt[30:33, 30:33] = 3          # 9 px speck
    gt[20:26, 20:26] = 4          # clean, missed by the prediction
    pred = np.zeros_like(gt)
    pred[10:16, 10:16] = 1        # matches 1
    pred[0:6, 30:36] = 2          # border FP: not counted in clean
    pred[30:32, 20:22] = 3        # 4 px speck FP: not counted in clean
    pred[5:11, 30:36] = 4         # clean FP
    assert metrics.clean_ids(gt).tolist() == [1, 4]
    out = metrics.instance_metrics(gt, pred)
    assert (out["tp_clean"], out["fp_clean"], out["fn_clean"]) == (1, 1, 1)
    assert out["f1_50_clean"] == pytest.approx(0.5)
    assert (out["tp"], out["fp"], out["fn"]) == (1, 3, 3)
    # a clean prediction matched to a non-clean particle (here the border one) is not a false positive
    pred2 = gt.copy()
    pred2[gt == 2] = 0
    pred2[1:6, 20:26] = 2         # does not touch the border, matches particle 2 (IoU 5/6)
    out2 = metrics.instance_metrics(gt, pred2)
    assert out2["fp_clean"] == 0 and out2["f1_50_clean"] == 1.0


def test_per_image_pixel_sizes():
    gt = np.zeros((30, 30), np.int32)
    gt[10:20, 10:20] = 1
    out = metrics.instance_metrics([gt, gt], [gt, gt], pixel_size_nm=[1.0, 2.0])
    assert out["median_ecd_gt"] == pytest.approx(np.sqrt(400 / np.pi) * 1.5)
    with pytest.raises(NanosegError, match="pixel sizes"):
        metrics.instance_metrics([gt, gt], [gt, gt], pixel_size_nm=[1.0])
