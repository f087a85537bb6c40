"""nanoseg.io.rois: pixel-edge outlines and the Fiji ROI set of `nanoseg predict --roi`."""

from __future__ import annotations

from argparse import Namespace

import keras
import numpy as np
import pandas as pd
import roifile
import tifffile
from matplotlib.path import Path as MplPath
from scipy import ndimage
from skimage.draw import disk
from skimage.measure import label

from nanoseg.model.network import save_model
from nanoseg.cli.predict import predict_command
from nanoseg.io.rois import outline, particle_outlines, polygon_area, write_rois
from nanoseg.serving.payload import example_image


def pixels_inside(poly: np.ndarray, shape) -> np.ndarray:
    """The pixels whose centres lie inside ``poly`` (how ImageJ fills a polygon ROI)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    return MplPath(poly).contains_points(centres).reshape(shape)


def test_outline_of_a_rectangle_is_its_four_corners():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    assert outline(mask).tolist() == [[3, 2], [7, 2], [7, 5], [3, 5]]
    assert outline(np.zeros((4, 4), bool)).shape == (0, 2)


def test_outlines_enclose_exactly_the_particle_pixels():
    rng = np.random.default_rng(0)
    for _ in range(60):
        mask = np.zeros((48, 48), bool)
        for _ in range(4):
            rr, cc = disk(tuple(rng.uniform(4, 44, 2)), rng.uniform(1.5, 9), shape=mask.shape)
            mask[rr, cc] = True
        labels = label(mask, connectivity=2)  # 8-connected: pieces touching at a corner are one particle
        for pid, poly in particle_outlines(labels).items():
            filled = ndimage.binary_fill_holes(labels == pid)
            assert polygon_area(poly) == filled.sum()
            np.testing.assert_array_equal(pixels_inside(poly, labels.shape), filled)


def test_diagonal_pixels_stay_in_one_outline():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    poly = outline(mask)
    assert polygon_area(poly) == 3
    np.testing.assert_array_equal(pixels_inside(poly, mask.shape), mask)


def test_write_rois_empty_table(tmp_path):
    table = pd.DataFrame({"id": pd.Series([], dtype=int), "measurable": pd.Series([], dtype=bool)})
    path = write_rois(tmp_path / "none_rois.zip", np.zeros((8, 8), np.uint16), table)
    assert path.is_file() and roifile.roiread(path) == []


def discs_png(path, size=200):
    """Bright discs on a dark background, two of them cut by the image border."""
    from PIL import Image

    img = np.full((size, size), 60, np.uint8)
    for centre, radius in (((50, 50), 12), ((120, 60), 9), ((80, 140), 15), ((150, 150), 7), ((0, 100), 10),
                           ((100, size - 3), 8)):
        rr, cc = disk(centre, radius, shape=img.shape)
        img[rr, cc] = 190
    Image.fromarray(img).save(path)
    return path


def passthrough_folder(tmp_path):
    x = keras.Input((None, None, 1))
    return save_model(keras.Model(x, keras.layers.Identity()(x)), tmp_path / "model", {"threshold": 0.5})


def test_predict_roi_writes_one_polygon_per_particle(tmp_path):
    image = discs_png(tmp_path / "discs.png")
    out = tmp_path / "pred"
    args = Namespace(images=[str(image)], model=str(passthrough_folder(tmp_path)), out=str(out), overwrite=False,
                     pixel_size="5nm", databar_row=None, tta=False, roi=True)
    assert predict_command(args) == 0
    table = pd.read_csv(out / "particles.csv")
    labels = tifffile.imread(out / "discs_labels.tif")
    rois = roifile.roiread(out / "discs_rois.zip")
    assert len(table) == 6 and len(rois) == len(table)
    assert table["measurable"].sum() == 4  # two discs cut by the border
    assert [r.name for r in rois] == [str(i) for i in table["id"]]
    for roi, row in zip(rois, table.itertuples()):
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        poly = roi.coordinates()
        assert polygon_area(poly) == row.area_px  # the discs have no holes
        np.testing.assert_array_equal(pixels_inside(poly, labels.shape), labels == row.id)
        colour = roi.stroke_color[1:]
        assert colour == (bytes((255, 220, 0)) if row.measurable else bytes((0, 200, 255)))


def test_predict_without_roi_writes_no_roi_set(tmp_path):
    image = tmp_path / "discs.png"
    image.write_bytes(example_image(size=128, seed=1))
    args = Namespace(images=[str(image)], model=str(passthrough_folder(tmp_path)), out=str(tmp_path / "p"),
                     overwrite=False, pixel_size=None, databar_row=None, tta=False)
    predict_command(args)
    assert not list((tmp_path / "p").glob("*_rois.zip"))
