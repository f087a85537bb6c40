"""Instance-variant training targets: separating lines, 3 classes, distances, weights."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import draw, measure

from nanoseg.model.input_pipeline import random_crops
from nanoseg.errors import NanosegError
from nanoseg.model.targets import (BACKGROUND, BOUNDARY, INTERIOR, border_weights, boundary_classes, instance_settings,
                             make_targets, normalized_distance, separate_touching, separating_lines,
                             training_targets, zoom_mask, zoom_targets)


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


def many_touching_discs(shape=(160, 160), seed=0):
    """A BAM-like mask: touching discs, each pair cut apart by 1-px background lines (watershed of the union)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    union = np.zeros(shape, bool)
    markers = np.zeros(shape, np.int32)
    for i in range(25):
        c = rng.integers(10, shape[0] - 10, 2)
        rr, cc = draw.disk(tuple(c), int(rng.integers(6, 14)), shape=shape)
        union[rr, cc] = True
        markers[c[0], c[1]] = i + 1
    labels = watershed(-ndi.distance_transform_edt(union), markers, mask=union, watershed_line=True)
    return separate_touching(labels) > 0


@pytest.mark.parametrize("zoom", [0.5, 0.8, 1.25, 2.0])
def test_zoomed_masks_keep_their_instances_apart(zoom):
    """Scale augmentation / bench/scale.py: nearest-neighbour zoom, then 1-px lines again between instances."""
    mask = many_touching_discs()
    labels = measure.label(mask, connectivity=1)
    shape = tuple(int(round(n * zoom)) for n in mask.shape)
    zoomed = zoom_mask(mask, shape)
    assert zoomed.shape == shape and zoomed.dtype == bool
    again = measure.label(zoomed, connectivity=1)
    big = [r for r in measure.regionprops(labels) if r.area * zoom**2 >= 30]
    assert again.max() >= len(big)  # no two instances merged (small ones may vanish when shrinking)
    assert again.max() <= labels.max()
    assert abs(zoomed.sum() / zoom**2 - mask.sum()) / mask.sum() < 0.12  # area scales with zoom squared
    t = zoom_targets(mask, shape, {"model": {"variant": "instance"},
                                   "instance": {"head": "classes3", "loss": "wcce_dice"}})
    assert t.shape == shape + (4,) and (t[..., BOUNDARY] == 1).any()


def test_separate_touching():
    labels = np.zeros((5, 6), np.int32)
    labels[1:4, 0:3], labels[1:4, 3:6] = 1, 2  # two instances touching along a column
    out = separate_touching(labels)
    assert (out[1:4, 3] == 0).all() and (out[1:4, :3] == 1).all() and (out[1:4, 4:] == 2).all()
    assert measure.label(out > 0, connectivity=1).max() == 2
    np.testing.assert_array_equal(separate_touching(out), out)  # already apart: unchanged


def test_scale_and_inversion_augmentation():
    mask = many_touching_discs()
    image = np.where(mask, 0.8, 0.2).astype(np.float32)
    params = {"model": {"variant": "instance"}, "instance": {"head": "classes3", "loss": "wcce_dice"}}
    target = training_targets(mask, params)
    augment = {"flips": False, "rot90": False, "scale": [0.5, 2.0], "scale_p": 1.0}
    gen = random_crops([image], [target], 64, augment, 0, masks=[mask],
                       zoom_target=lambda m, shape: zoom_targets(m, shape, params))
    for _ in range(10):
        x, y = next(gen)
        assert x.shape == (64, 64, 1) and y.shape == (64, 64, 4)
        fg = y[..., INTERIOR] + y[..., BOUNDARY]
        assert ((x[..., 0] > 0.5) == (fg > 0)).mean() > 0.9  # image and target zoomed alike
    with pytest.raises(NanosegError, match="scale"):
        next(random_crops([image], [target], 64, augment, 0))
    gen = random_crops([image], [target], 64, {"flips": False, "rot90": False, "invert": 1.0}, 0)
    x, y = next(gen)
    assert (x[..., 0][y[..., INTERIOR] > 0] < 0.5).all()  # particles dark, the target unchanged


def test_lowres_augmentation_blurs_the_image_like_scale_auto():
    """``lowres``: a crop degraded as an image of a lower magnification looks once --scale auto enlarged it
    (the same resampling both ways); the target is the crop's own, untouched."""
    from nanoseg.inference.rescale import resample_image
    from nanoseg.model.input_pipeline import degraded

    mask = many_touching_discs()
    image = np.where(mask, 0.8, 0.2).astype(np.float32)
    params = {"model": {"variant": "instance"}, "instance": {"head": "classes3", "loss": "wcce_dice"}}
    target = training_targets(mask, params)
    crop = image[:64, :64]
    np.testing.assert_allclose(degraded(crop, 2.0), resample_image(resample_image(crop, 0.5), 2.0), atol=1e-5)
    assert np.array_equal(degraded(crop, 1.0), crop)
    plain = {"flips": False, "rot90": False, "brightness": 0, "contrast": 0}
    sharp, blurred = (random_crops([image], [target], 64, {**plain, **extra}, 3)
                      for extra in ({}, {"lowres": 2.0, "lowres_p": 1.0}))
    for _ in range(5):
        (x0, y0), (x1, y1) = next(sharp), next(blurred)
        np.testing.assert_array_equal(y0, y1)  # same crops, same targets
        edges = lambda x: np.abs(np.diff(x[..., 0], axis=1)).max()  # noqa: E731
        assert edges(x1) < edges(x0) and ((x1[..., 0] > 0.5) == (x0[..., 0] > 0.5)).mean() > 0.9


def test_hv_maps_point_away_from_each_centre():
    from nanoseg.model.targets import hv_maps

    mask = touching_discs()
    hv = hv_maps(mask)
    assert hv.shape == (60, 80, 2) and hv.dtype == np.float32
    assert np.all(hv[~mask] == 0) and hv.min() == -1.0 and hv.max() == 1.0
    row = hv[30, :, 0]  # across both discs: -1 .. +1, then a jump to -1 after the line
    assert row[17] == -1.0 and row[38] == 1.0 and row[40] == -1.0 and row[61] == 1.0
    assert abs(row[28]) < 0.1 and np.all(np.diff(row[17:39]) > 0)
    assert np.all(hv[:, 28, 1][mask[:, 28]][:-1] < hv[:, 28, 1][mask[:, 28]][1:])  # v grows downwards
    targets = make_targets(mask, "classes3_hv")
    assert targets.shape == (60, 80, 5)
    np.testing.assert_array_equal(targets[..., :3], make_targets(mask, "classes3"))
    np.testing.assert_allclose(targets[..., 3:], (hv + 1) / 2)


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_dihedral_turns_the_hover_maps_like_the_mask(k, flip):
    """The maps of a turned mask are the turned maps: what augmentation and TTA rely on."""
    from nanoseg.model.targets import VECTORS, dihedral

    mask = many_touching_discs(shape=(48, 64))
    y = make_targets(mask, "classes3_hv")
    turned = dihedral(y, k, flip, VECTORS["classes3_hv"])
    np.testing.assert_allclose(turned, make_targets(dihedral(mask, k, flip), "classes3_hv"), atol=1e-6)
    np.testing.assert_allclose(dihedral(turned, k, flip, VECTORS["classes3_hv"], invert=True), y, atol=1e-6)
    # a plain map moves its pixels only
    np.testing.assert_array_equal(dihedral(mask, k, flip), np.rot90(mask, k)[:, ::-1] if flip else np.rot90(mask, k))


def test_augmented_crops_turn_the_hover_maps():
    from nanoseg.model.targets import VECTORS

    mask = many_touching_discs(shape=(96, 96))
    target = training_targets(mask, {"model": {"variant": "instance"}, "instance": {"head": "classes3_hv"}})
    assert target.shape == (96, 96, 6)
    masks = [mask]
    gen = random_crops([mask.astype(np.float32)], [target], 64, {"flips": True, "rot90": True, "brightness": 0,
                                                                  "contrast": 0}, 3, vectors=VECTORS["classes3_hv"])
    for _ in range(12):
        x, y = next(gen)
        # the crop's maps are those of its own (turned) mask, where no particle is cut by the crop edge
        again = make_targets(x[..., 0] > 0.5, "classes3_hv")
        labels = measure.label(x[..., 0] > 0.5, connectivity=1)
        inner = np.isin(labels, np.unique(labels[1:-1, 1:-1])) & ~np.isin(
            labels, np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        np.testing.assert_allclose(y[..., 3:5][inner], again[..., 3:][inner], atol=1e-5)
    assert masks
