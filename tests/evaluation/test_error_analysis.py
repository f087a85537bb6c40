import numpy as np
from skimage.draw import disk

from nanoseg.evaluation.error_analysis import classify_errors, error_summary, merged_mask


def scene():
    """Manual particles 1..7 and a prediction with one error of each kind."""
    g = np.zeros((200, 300), np.int32)
    p = np.zeros_like(g)
    # 1, 2 touching pair, predicted as one region (merge)
    g[disk((40, 40), 15)] = 1
    g[disk((40, 70), 15)] = 2
    g[40, 55] = 0
    p[disk((40, 40), 15)] = 1
    p[disk((40, 70), 15)] = 1
    # 3: split in two halves
    rr, cc = disk((40, 150), 18)
    g[rr, cc] = 3
    p[rr[cc < 150], cc[cc < 150]] = 2
    p[rr[cc > 150], cc[cc > 150]] = 3
    # 4: missed
    g[disk((40, 240), 15)] = 4
    # 5: outline far too large
    g[disk((130, 40), 10)] = 5
    p[disk((130, 40), 17)] = 4
    # 6, 7: matched, 7 slightly too large
    g[disk((130, 130), 15)] = 6
    p[disk((130, 130), 15)] = 5
    g[disk((130, 200), 15)] = 7
    p[disk((130, 200), 16)] = 6
    # spurious prediction on background
    p[disk((170, 260), 10)] = 7
    return g, p


def test_each_error_kind_is_classified():
    g, p = scene()
    res = classify_errors(g, p)
    assert res["truth"] == {1: "merged", 2: "merged", 3: "split", 4: "missed", 5: "outline"}
    assert res["pred"] == {1: "merge", 2: "fragment", 3: "fragment", 4: "outline", 7: "spurious"}
    assert sorted(a for a, _, _ in res["matched"]) == [6, 7]


def test_summary_counts_share_and_bias():
    g, p = scene()
    s = error_summary([g, g], [p, p])
    assert s["err_merged"] == 4 and s["err_split"] == 2 and s["err_missed"] == 2 and s["err_outline"] == 2
    assert s["err_pred_merge"] == 2 and s["err_pred_outline"] == 2 and s["err_pred_spurious"] == 2
    assert np.isclose(s["err_merged_share"], 4 / 10)
    assert s["n_matched_clean"] == 4
    assert 0.0 < s["matched_ecd_bias"] < 0.07  # median of ratios 1.0 and ~16/15


def test_truth_as_prediction_has_no_errors():
    g, _ = scene()
    s = error_summary(g, g)
    assert all(s[k] == 0 for k in s if k.startswith("err_") and k != "err_merged_share")
    assert s["matched_ecd_bias"] == 0.0
    assert not merged_mask(g, g).any()


def test_merged_mask_marks_the_merged_pair():
    g, p = scene()
    m = merged_mask(g, p)
    assert m[40, 40] and m[40, 70] and not m[130, 130]


def test_error_bars_and_merged_overlay_are_written(tmp_path):
    from nanoseg.report.plots import error_bars, error_overlay

    g, p = scene()
    png = error_bars(error_summary(g, p), tmp_path / "errors.png", title="scene")
    assert png.stat().st_size > 1000
    image = np.full(g.shape, 0.5, np.float32)
    over = error_overlay(image, g > 0, p > 0, tmp_path / "overlay.png", merged=merged_mask(g, p))
    assert over.stat().st_size > 1000
