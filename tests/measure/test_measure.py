"""Tests for nanoseg.measure.particles on synthetic label images."""

import math

import numpy as np
import pytest
from skimage import draw

from nanoseg.measure import particles as measure


def _disc_labels(shape, discs):
    labels = np.zeros(shape, np.int32)
    for i, (center, radius) in enumerate(discs, start=1):
        rr, cc = draw.disk(center, radius, shape=shape)
        labels[rr, cc] = i
    return labels


def test_disc_sizes_in_nm_and_flags():
    labels = _disc_labels((120, 160), [((40, 40), 10), ((60, 110), 20), ((115, 80), 8)])
    prob = np.where(labels > 0, 0.8, 0.1)
    t = measure.particle_table(labels, pixel_size_nm=2.0, probability=prob, image_name="a.tif")
    assert list(t.columns) == measure.table_columns("nm") and t.attrs["unit"] == "nm"
    assert t["image"].eq("a.tif").all() and t["id"].tolist() == [1, 2, 3]
    for (_, row), r in zip(t.iterrows(), (10, 20)):
        assert abs(row["ecd_nm"] / 2.0 - 2 * r) <= 1.0  # ECD exact within 1 px
        assert row["area_nm2"] == pytest.approx(row["area_px"] * 4.0)
        assert abs(row["feret_max_nm"] / 2.0 - 2 * r) <= 1.5
        assert abs(row["feret_min_nm"] / 2.0 - 2 * r) <= 1.5
        assert row["aspect_ratio"] < 1.1 and 0.9 < row["circularity"] < 1.1
        assert row["solidity"] > 0.95 and row["measurable"] and not row["touches_border"]
    assert t.loc[2, "touches_border"] and not t.loc[2, "measurable"]
    assert t["mean_probability"].tolist() == pytest.approx([0.8] * 3)


def test_rotated_rectangle_feret():
    labels = np.zeros((100, 100), np.int32)
    angle = math.radians(30)
    u, v = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
    corners = np.array([50, 50]) + np.array([s * 25 * u + t * 6 * v for s, t in
                                             [(-1, -1), (1, -1), (1, 1), (-1, 1)]])
    rr, cc = draw.polygon(corners[:, 0], corners[:, 1], labels.shape)
    labels[rr, cc] = 1
    row = measure.particle_table(labels).iloc[0]
    assert row["feret_min_px"] == pytest.approx(12, abs=2)  # outline on pixel edges: +1..1.4 px
    assert row["feret_max_px"] == pytest.approx(math.hypot(50, 12), abs=2)
    assert row["aspect_ratio"] == pytest.approx(row["feret_max_px"] / row["feret_min_px"])


def test_pixel_units_and_databar():
    labels = _disc_labels((100, 100), [((30, 30), 8), ((85, 60), 8)])
    t = measure.particle_table(labels, databar_row=93)  # disc 2 ends in row 92
    assert t.attrs["unit"] == "px" and "ecd_px" in t and "area_px2" in t and "ecd_nm" not in t
    assert measure.size_column("ecd", "px") == "ecd_px"
    assert t["touches_databar"].tolist() == [False, True]
    assert t["measurable"].tolist() == [True, False]
    below = measure.particle_table(labels, databar_row=112)  # bar below a cropped image
    assert not below["touches_databar"].any()


def test_measurable_mask_overrides_rule():
    labels = _disc_labels((100, 100), [((30, 30), 8), ((60, 60), 8), ((5, 70), 8)])
    cm = np.zeros((90, 100), np.uint8)  # fewer rows than the labels, like BAM *_cm.tif
    cm[:20, 60:] = 255
    cm[20:45, 20:45] = 255
    t = measure.particle_table(labels, measurable_mask=cm)
    assert t["measurable"].tolist() == [True, False, True]


def test_empty_labels():
    t = measure.particle_table(np.zeros((20, 20), np.int32), pixel_size_nm=7.3)
    assert t.empty and list(t.columns) == measure.table_columns("nm")
    assert t["ecd_nm"].dtype == float and t["measurable"].dtype == bool
