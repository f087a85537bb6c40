"""Inference at the model's pixel size (nanoseg.inference.rescale) and sizes right at 0.5x-2x."""

from __future__ import annotations

import json
from argparse import Namespace

import keras
import numpy as np
import pandas as pd
import pytest
import tifffile

from nanoseg.errors import NanosegError
from nanoseg.model.network import save_model
from nanoseg.cli.predict import predict_command
from nanoseg.inference.rescale import parse_scale, resample_image, resize_labels, scale_factor

MODEL_PX = 7.34  # nm per pixel the (pass-through) model was "trained" at
DIAMETER_NM = 200.0


def passthrough_model():
    x = keras.Input((None, None, 1))
    return keras.Model(x, keras.layers.Identity()(x))


def discs_image(pixel_size_nm: float, field_nm=(2400.0, 3600.0), seed=0) -> np.ndarray:
    """Bright discs of DIAMETER_NM on a dark background, rendered at this pixel size with 8x supersampling."""
    rng = np.random.default_rng(seed)
    h, w = (int(round(f / pixel_size_nm)) for f in field_nm)
    ss = 8
    yy, xx = np.mgrid[0:h * ss, 0:w * ss]
    yy = (yy + 0.5) / ss * pixel_size_nm
    xx = (xx + 0.5) / ss * pixel_size_nm
    img = np.zeros((h * ss, w * ss), np.float32)
    for cy in np.arange(300.0, field_nm[0] - 250, 400.0):
        for cx in np.arange(300.0, field_nm[1] - 250, 400.0):
            dy, dx = rng.uniform(-40, 40, 2)
            img[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= (DIAMETER_NM / 2) ** 2] = 1.0
    img = img.reshape(h, ss, w, ss).mean(axis=(1, 3))
    return 0.1 + 0.8 * img


def write_tif(path, image, pixel_size_nm):
    ppcm = 1e7 / pixel_size_nm
    tifffile.imwrite(path, (image * 255).round().astype(np.uint8), resolution=(ppcm, ppcm),
                     resolutionunit="CENTIMETER")
    return path


def run(tmp_path, image_path, scale="auto", name="out"):
    folder = tmp_path / "model"
    if not folder.exists():
        save_model(passthrough_model(), folder, {"threshold": 0.5, "postprocess": {"opening_radius": 0},
                                                 "training_scale": {"pixel_size_nm": MODEL_PX}})
    h = tifffile.imread(image_path).shape[0]
    out = tmp_path / name
    predict_command(Namespace(images=[str(image_path)], model=str(folder), out=str(out), overwrite=True,
                              pixel_size=None, databar_row=h, tta=False, scale=scale))
    return pd.read_csv(out / "particles.csv"), json.loads((out / "summary.json").read_text())


def test_scale_factor_rules():
    assert scale_factor(3.67, 7.34)[0] == pytest.approx(0.5)
    assert scale_factor(7.0, 7.34)[0] == 1.0  # within 10 %
    assert scale_factor(14.68, 7.34, "off")[0] == 1.0
    assert scale_factor(None, 7.34)[0] == 1.0 and "no pixel size" in scale_factor(None, 7.34)[1]
    assert scale_factor(3.67, None)[0] == 1.0
    assert scale_factor(None, None, 2.0)[0] == 2.0
    assert parse_scale("0.5x") == 0.5 and parse_scale(None) == "auto"
    for bad in ("big", "0", "-1", "50"):
        with pytest.raises(NanosegError, match="--scale"):
            parse_scale(bad)
    with pytest.raises(NanosegError, match="pass --scale off"):
        scale_factor(0.01, 7.34)


def test_resample_and_labels_back():
    img = np.random.default_rng(0).random((60, 90)).astype(np.float32)
    assert resample_image(img, 0.5).shape == (30, 45) and resample_image(img, 1.0) is img
    lab = np.zeros((30, 45), np.int32)
    lab[5:15, 5:15] = 3
    back = resize_labels(lab, (60, 90))
    assert back.shape == (60, 90) and set(np.unique(back)) == {0, 3} and (back == 3).sum() == 400


@pytest.mark.parametrize("pixel_size_nm", [3.67, 4.89, 7.34, 9.79, 14.68])  # 2x, 1.5x, 1x, 0.75x, 0.5x
def test_ecd_within_2_percent_at_every_scale(tmp_path, pixel_size_nm):
    path = write_tif(tmp_path / "discs.tif", discs_image(pixel_size_nm), pixel_size_nm)
    table, summary = run(tmp_path, path)
    inner = table[table["measurable"].astype(bool)]
    assert len(inner) >= 20
    assert np.median(inner["ecd_nm"]) == pytest.approx(DIAMETER_NM, rel=0.02)
    zoom = summary["images"][0]["scale_factor"]
    expected = 1.0 if abs(pixel_size_nm / MODEL_PX - 1) <= 0.1 else pixel_size_nm / MODEL_PX
    assert zoom == pytest.approx(expected) and np.allclose(table["inference_zoom"], expected)
    assert summary["model_pixel_size_nm"] == MODEL_PX


def test_scale_off_and_without_pixel_size(tmp_path, capsys):
    path = write_tif(tmp_path / "discs.tif", discs_image(14.68), 14.68)
    _, summary = run(tmp_path, path, scale="off")
    assert summary["images"][0]["scale_factor"] == 1.0
    plain = tmp_path / "nopx.tif"
    tifffile.imwrite(plain, (discs_image(14.68) * 255).round().astype(np.uint8))
    _, summary = run(tmp_path, plain, name="nopx")
    info = summary["images"][0]
    assert info["scale_factor"] == 1.0 and any("no pixel size" in n for n in info["notes"])
    _, summary = run(tmp_path, plain, scale="2", name="forced")
    assert summary["images"][0]["scale_factor"] == 2.0
