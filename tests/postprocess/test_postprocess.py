"""Tests for nanoseg.postprocess.decode on small synthetic masks and images."""

import numpy as np
import pytest
from skimage import draw

from nanoseg.evaluation import selection
from nanoseg.postprocess import decode as postprocess
from nanoseg.errors import NanosegError


def _discs(shape, centers, radius):
    mask = np.zeros(shape, bool)
    for c in centers:
        rr, cc = draw.disk(c, radius, shape=shape)
        mask[rr, cc] = True
    return mask


def test_binarize():
    out = postprocess.binarize(np.array([0.2, 0.5, 0.9]), 0.5)
    assert out.dtype == bool and out.tolist() == [False, True, True]


def test_touching_discs_split():
    mask = _discs((80, 100), [(40, 35), (40, 58)], 12)  # overlapping discs, one component
    assert postprocess.label_instances(mask).max() == 1
    labels = postprocess.label_instances(mask, split=True, min_distance_px=5)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert set(np.unique(labels[mask])) == {1, 2} and not labels[~mask].any()
    assert labels[40, 30] != labels[40, 63]


def test_label_is_4_connected():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = mask[2, 2] = True
    assert postprocess.label_instances(mask).max() == 2


def test_clean_mask_keeps_separating_lines():
    mask = np.zeros((30, 50), bool)
    mask[5:25, 5:45] = True
    mask[:, 25] = False  # 1-px background line between two touching particles
    mask[0, 0] = True  # isolated pixel: removed by the opening
    out = postprocess.clean_mask(mask, opening_radius=1)
    assert not out[0, 0] and not out[:, 25].any()
    assert postprocess.label_instances(out).max() == 2


def test_clean_mask_fills_holes_per_object():
    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25] = True
    ring[10:15, 10:15] = False
    filled = postprocess.clean_mask(ring, opening_radius=0)
    assert filled[5:25, 5:25].all() and filled.sum() == 400
    frame = np.zeros((20, 20), bool)  # four bars touching only diagonally enclose a gap
    frame[0:3, 3:17] = frame[17:20, 3:17] = frame[3:17, 0:3] = frame[3:17, 17:20] = True
    out = postprocess.clean_mask(frame, opening_radius=0)
    assert not out[10, 10] and postprocess.label_instances(out).max() == 4


def test_clean_mask_min_area():
    mask = _discs((40, 40), [(10, 10)], 6)
    mask[30:33, 30:33] = True
    out = postprocess.clean_mask(mask, min_area_px=20)
    assert out[10, 10] and not out[31, 31]
    labels = postprocess.remove_small_instances(postprocess.label_instances(mask), 20)
    assert labels.max() == 1 and labels.dtype == np.int32


def _remove_small_by_hand(labels, min_area_px):
    """The rule by hand: instances of fewer than ``min_area_px`` pixels become 0, the others 1..n in order."""
    out = np.zeros(labels.shape, np.int32)
    kept = [v for v in np.unique(labels) if v and np.count_nonzero(labels == v) >= min_area_px]
    for new, v in enumerate(kept, 1):
        out[labels == v] = new
    return out


def test_remove_small_instances_on_crafted_labels():
    """Sizes 1, 4, 5, 19, 20, 21 px under non-sequential ids (one split in two pieces), thresholds on and
    between the sizes; a bool mask is labelled 4-connected (diagonal neighbours are two instances)."""
    import warnings

    labels = np.zeros((30, 40), np.int32)
    labels[0, 0] = 3                                  # 1 px
    labels[2:4, 2:4] = 8                              # 4 px
    labels[6, 0:5] = 40                               # 5 px
    labels[10:11, 0:19] = 7                           # 19 px
    labels[14:16, 0:10] = 2                           # 20 px
    labels[20:23, 0:5] = labels[20:22, 20:23] = 11    # 15 + 6 = 21 px in two pieces, one instance
    for threshold in (0, 1, 2, 4, 5, 5.5, 19, 20, 20.5, 21, 22):
        got = postprocess.remove_small_instances(labels, threshold)
        assert got.dtype == np.int32 and np.array_equal(got, _remove_small_by_hand(labels, threshold)), threshold
    assert postprocess.remove_small_instances(labels, 20).max() == 2

    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal: two 1-px instances in 4-connectivity
    mask[3:6, 3:6] = True
    assert postprocess.remove_small_instances(mask).max() == 3
    assert np.array_equal(postprocess.remove_small_instances(mask, 2), mask & (np.arange(6) >= 3)[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one instance: kept or removed, without scikit-image's one-label warning
        one = (np.arange(36).reshape(6, 6) < 9).astype(np.int32) * 5
        assert np.array_equal(postprocess.remove_small_instances(one, 9), one // 5)
        assert not postprocess.remove_small_instances(one, 10).any()
        assert not postprocess.remove_small_instances(np.zeros((4, 4), np.int32), 3).any()


def test_otsu_and_baseline_on_synthetic_image():
    rng = np.random.default_rng(0)
    mask = _discs((120, 160), [(30, 30), (30, 90), (80, 60), (80, 120)], 12)
    image = 0.2 + 0.5 * mask + rng.normal(0, 0.03, mask.shape)
    image[110:] = 1.0  # bright data bar at the bottom
    got = postprocess.otsu_mask(image, sample_rows=110)
    assert (got[:110] == mask[:110]).mean() > 0.98
    labels = postprocess.baseline_instances(image[:110], watershed=True, min_distance_px=9)
    assert labels.max() == 4
    with pytest.raises(NanosegError):
        postprocess.otsu_mask(np.zeros((2, 3, 4, 5)))


def test_tune_split_params_prefers_splitting_touching_pairs():
    mask = _discs((80, 200), [(40, 35), (40, 58), (40, 130), (40, 153)], 12)
    gt = np.zeros(mask.shape, np.int32)
    for i, c in enumerate([(40, 35), (40, 58), (40, 130), (40, 153)], start=1):
        rr, cc = draw.disk(c, 12, shape=mask.shape)
        gt[rr, cc] = i
    gt[:, [46, 47, 141, 142]] = 0
    best = selection.tune_split_params([mask], [gt], grid={"split": [False, True],
                                                             "min_distance_px": [5, 9]})
    assert best["split"] is True and best["f1_50"] == pytest.approx(1.0)
    assert len(best["scores"]) == 3  # split=False is evaluated once


# ----------------------------------------------------------------------------- instance variant decoding


def _chain(n=4, radius=11, shape=(48, 200)):
    """n discs in a row, each overlapping the next, cut apart by 1-px background lines (BAM style)."""
    from nanoseg.model.targets import instance_labels

    step = 2 * radius - 4
    centers = [(shape[0] // 2, 14 + i * step) for i in range(n)]
    mask = _discs(shape, centers, radius)
    for i in range(n - 1):
        mask[:, centers[i][1] + step // 2] = False
    assert instance_labels(mask).max() == n
    return mask, centers


def _synthetic_outputs(mask):
    """What a well-trained model of each head would output, with the lines *filled* in the foreground."""
    from scipy import ndimage as ndi

    from nanoseg.model.targets import hv_maps, make_targets, normalized_distance

    c3 = ndi.gaussian_filter(make_targets(mask, "classes3"), (1, 1, 0))
    c3 /= c3.sum(-1, keepdims=True)
    filled = ndi.binary_closing(mask, np.ones((1, 3), bool))  # the separating lines filled in
    fd = np.stack([ndi.gaussian_filter(filled.astype(np.float32), 0.7),
                   ndi.gaussian_filter(normalized_distance(mask), 1.0)], -1)
    hv = (ndi.gaussian_filter(hv_maps(mask), (0.7, 0.7, 0)) + 1.0) / 2.0
    return {"classes3": c3.astype(np.float32), "fg_distance": np.clip(fd, 0, 1).astype(np.float32),
            "classes3_hv": np.concatenate([c3, hv], -1).astype(np.float32)}


@pytest.mark.parametrize("n", [2, 4])
def test_decode_instances_separates_touching_discs(n):
    from nanoseg.evaluation.metrics import instance_metrics

    mask, centers = _chain(n)
    for decoder, prob in _synthetic_outputs(mask).items():
        labels = postprocess.decode_instances(prob, 0.5, marker_threshold=0.5, min_marker_px=3)
        assert labels.dtype == np.int32 and labels.max() == n, decoder
        assert len({labels[c] for c in centers}) == n and 0 not in {labels[c] for c in centers}
        # the result follows the BAM convention: instances are the 4-connected components of the mask
        assert postprocess.label_instances(labels > 0).max() == n
        assert instance_metrics(mask, labels)["f1_50"] == pytest.approx(1.0)
    with pytest.raises(NanosegError, match="decoder"):
        postprocess.decode_instances(_synthetic_outputs(mask)["classes3"], decoder="fg_distance")
    with pytest.raises(NanosegError, match="instance-variant"):
        postprocess.decode_instances(mask.astype(np.float32))


def test_separate_touching_cuts_one_px_lines():
    labels = np.zeros((5, 8), np.int32)
    labels[:, :4], labels[:, 4:7] = 1, 2
    out = postprocess.separate_touching(labels)
    assert not out[:, 3].any() and (out[:, :3] == 1).all() and (out[:, 4:7] == 2).all()
    assert postprocess.label_instances(out > 0).max() == 2


def test_foreground_probability():
    p = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(postprocess.foreground_probability(p), 1 - p[..., 0])
    np.testing.assert_array_equal(postprocess.foreground_probability(p[..., :2]), p[..., 0])
    np.testing.assert_array_equal(postprocess.foreground_probability(p[..., 1]), p[..., 1])
    q = np.random.default_rng(1).random((4, 5, 5)).astype(np.float32)  # classes3_hv: classes3 + 2 HoVer maps
    np.testing.assert_allclose(postprocess.foreground_probability(q), 1 - q[..., 0])
    with pytest.raises(NanosegError, match="shape"):
        postprocess.foreground_probability(np.zeros((2, 2, 4)))


def test_hover_maps_cut_a_merge_the_class_map_misses():
    """Two touching discs whose boundary class the network missed (one interior blob): classes3 decodes one
    particle; the HoVer maps still jump across the contact, so classes3_hv decodes two."""
    from scipy import ndimage as ndi

    from nanoseg.evaluation.metrics import instance_metrics
    from nanoseg.model.targets import hv_maps

    mask, centers = _chain(2)
    filled = ndi.binary_closing(mask, np.ones((1, 3), bool))
    merged = np.stack([~filled, filled, np.zeros_like(filled)], -1).astype(np.float32)  # no boundary at all
    merged = ndi.gaussian_filter(merged, (0.7, 0.7, 0))
    assert postprocess.decode_instances(merged, 0.5, marker_threshold=0.5).max() == 1
    hv = (ndi.gaussian_filter(hv_maps(mask), (0.7, 0.7, 0)) + 1.0) / 2.0
    marker = postprocess.marker_map(np.concatenate([merged, hv], -1))
    assert marker[centers[0]] > 0.7 and marker[centers[1]] > 0.7  # the centres stay seeds
    labels = postprocess.decode_instances(np.concatenate([merged, hv], -1), 0.5, marker_threshold=0.5)
    assert labels.max() == 2 and instance_metrics(mask, labels)["f1_50"] == pytest.approx(1.0)
    np.testing.assert_array_equal(postprocess.marker_map(merged), merged[..., 1])  # other heads: channel 1


def test_tune_instance_params_and_segment_use_the_decoder():
    from nanoseg.evaluation.scoring import truth_labels
    from nanoseg.postprocess.decode import segment

    mask, _ = _chain(4)
    for decoder, prob in _synthetic_outputs(mask).items():
        best = selection.tune_instance_params([prob], [truth_labels(mask)], decoder=decoder,
                                                grid={"marker_threshold": [0.05, 0.5], "min_marker_px": [0, 3]})
        # a low marker threshold joins the discs; the HoVer maps' cut keeps even that one apart (first on ties)
        assert best["f1_50"] == pytest.approx(1.0) and best["marker_threshold"] == (
            0.05 if decoder == "classes3_hv" else 0.5)
        assert len(best["scores"]) == 4
        post = {"decoder": decoder, "marker_threshold": 0.5, "min_marker_px": 3, "min_area_nm2": 0.0}
        seg_mask, labels = segment(prob, 0.5, post)
        assert labels.max() == 4 and np.array_equal(seg_mask, labels > 0)
    with pytest.raises(NanosegError, match="unknown grid keys"):
        selection.tune_instance_params([prob], [mask], grid={"split": [True]})
