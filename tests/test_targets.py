"""Instance-variant training targets: separating lines, 3 classes, distances, weights."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import draw, measure

from nanoseg.dataset import random_crops
from nanoseg.errors import NanosegError
from nanoseg.targets import (BACKGROUND, BOUNDARY, INTERIOR, border_weights, boundary_classes, instance_settings,
                             make_targets, normalized_distance, separating_lines, training_targets)


def touching_discs(shape=(60, 80), centers=((30, 28), (30, 50)), radius=12, line_col=39):
    """Two overlapping discs cut apart by a 1-px background column, as in the BAM masks."""
    mask = np.zeros(shape, bool)
    for c in centers:
        rr, cc = draw.disk(c, radius, shape=shape)
        mask[rr, cc] = True
    mask[:, line_col] = False
    return mask


def test_two_touching_discs_give_two_interiors_and_a_line():
    mask = touching_discs()
    assert measure.label(mask, connectivity=1).max() == 2
    classes = boundary_classes(mask)
    line = separating_lines(measure.label(mask, connectivity=1))
    # the line: background pixels of column 39 between the two discs, nowhere else
    assert line.any() and np.all(np.nonzero(line)[1] == 39)
    rows = np.nonzero(line)[0]
    assert np.all(mask[rows[1:-1], 38]) and np.all(mask[rows[1:-1], 40])  # the end pixels touch diagonally
    assert np.all(classes[line] == BOUNDARY)
    # the touching rings: the instance pixels next to the line (cols 38 and 40)
    assert np.all(classes[rows[1:-1], 38] == BOUNDARY) and np.all(classes[rows[1:-1], 40] == BOUNDARY)
    assert (classes == BOUNDARY).sum() == len(rows) + 2 * (len(rows) - 2)
    # two interiors, one per disc, apart from the boundary band
    interiors = measure.label(classes == INTERIOR, connectivity=1)
    assert interiors.max() == 2
    assert interiors[30, 28] != interiors[30, 50] and interiors[30, 28] and interiors[30, 50]
    # outlines away from the contact stay interior / background (only touching sides are boundary)
    assert classes[30, 17] == INTERIOR and classes[30, 5] == BACKGROUND and classes[30, 61] == INTERIOR
    assert np.all(classes[~mask & ~line] == BACKGROUND)
    onehot = make_targets(mask, "classes3")
    assert onehot.shape == (60, 80, 3) and onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot.argmax(-1), classes)
    np.testing.assert_array_equal(onehot.sum(-1), 1.0)


def test_diagonal_contact_and_wide_gaps():
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:4] = True
    mask[4:7, 4:7] = True  # touches the first square only diagonally: still 2 instances
    classes = boundary_classes(mask)
    assert classes[3, 3] == BOUNDARY and classes[4, 4] == BOUNDARY
    assert classes[3, 4] == BOUNDARY and classes[4, 3] == BOUNDARY  # background between both: a line pixel
    assert classes[1, 1] == INTERIOR
    wide = np.zeros((10, 12), bool)
    wide[2:8, 1:5] = wide[2:8, 7:11] = True  # a 2-px gap is not a separating line
    assert not (boundary_classes(wide) == BOUNDARY).any()


def test_fg_distance_targets():
    mask = touching_discs()
    t = make_targets(mask, "fg_distance")
    assert t.shape == (60, 80, 2) and t.dtype == np.float32
    np.testing.assert_array_equal(t[..., 0], mask.astype(np.float32))
    d = normalized_distance(mask)
    np.testing.assert_array_equal(t[..., 1], d)
    labels = measure.label(mask, connectivity=1)
    for i in (1, 2):
        assert d[labels == i].max() == pytest.approx(1.0)
    assert not d[~mask].any() and d[mask].min() > 0
    assert d[30, 28] > 0.9 and d[30, 38] < 0.2  # centre high, at the separating line low
    assert not normalized_distance(np.zeros((4, 4), bool)).any()
    with pytest.raises(NanosegError, match="instance.head"):
        make_targets(mask, "watershed")


def test_border_weights():
    mask = touching_discs()
    w = border_weights(mask, w0=10.0, sigma=5.0)
    rows = np.nonzero(separating_lines(measure.label(mask, connectivity=1)))[0]
    np.testing.assert_allclose(w[rows[1:-1], 39], 10 * np.exp(-2 / 25), rtol=1e-5)  # d1 = d2 = 1
    assert not w[mask].any()
    assert w[0, 0] < 1e-3 and w.dtype == np.float32


def test_training_targets_by_variant(params_for, tmp_path):
    mask = touching_discs()
    params = params_for(tmp_path)
    params["model"]["variant"] = "paper"
    paper = training_targets(mask, params)
    assert paper.shape == mask.shape and paper.dtype == np.float32
    params["model"]["variant"] = "instance"
    params["instance"].update(head="classes3", loss="wcce_dice", class_weights=[1.0, 2.0, 7.0])
    t = training_targets(mask, params)
    assert t.shape == (60, 80, 4)
    np.testing.assert_array_equal(t[..., 3], np.array([1.0, 2.0, 7.0], np.float32)[boundary_classes(mask)])
    params["instance"].update(head="fg_distance", loss="border_wcce_dice")
    t = training_targets(mask, params)
    assert t.shape == (60, 80, 3)
    line = separating_lines(measure.label(mask, connectivity=1))
    assert np.all(t[..., 2][line] > 7.0)  # the boundary class weight plus the border term
    params["instance"]["head"] = "unet3"
    with pytest.raises(NanosegError, match="instance.head"):
        instance_settings(params)
    params["instance"].update(head="classes3", loss="focal")
    with pytest.raises(NanosegError, match="instance.loss"):
        instance_settings(params)
    params["instance"].update(loss="wcce_dice", class_weights=[1, 1])
    with pytest.raises(NanosegError, match="class_weights"):
        instance_settings(params)


def test_lines_survive_crops_flips_and_rotations():
    mask = touching_discs(shape=(64, 96), centers=((32, 30), (32, 53)), radius=14, line_col=41)
    target = make_targets(mask, "classes3")
    h, w = mask.shape
    index = (np.arange(h * w, dtype=np.float32).reshape(h, w) + 0.5) / (h * w)  # image = pixel position
    gen = random_crops([index], [target], 32, {"flips": True, "rot90": True, "brightness": 0, "contrast": 0}, 5)
    seen_line = 0
    for _ in range(40):
        x, y = next(gen)
        assert y.shape == (32, 32, 3)
        flat = np.floor(x[..., 0] * h * w).astype(int)
        r, c = np.divmod(flat, w)
        np.testing.assert_array_equal(y, target[r, c])  # a pure permutation of the target's pixels
        line = (y[..., BOUNDARY] == 1) & ~mask[r, c]  # separating-line pixels in the crop
        if line.sum() >= 8:  # the line stays 1 px wide: one pixel per row, or one per column
            seen_line += 1
            assert line.sum(0).max() == 1 or line.sum(1).max() == 1
    assert seen_line > 3
