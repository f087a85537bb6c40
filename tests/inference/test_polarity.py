"""Contrast polarity (nanoseg.inference.polarity): dark-particle images are recognised and inverted before inference."""

from __future__ import annotations

from argparse import Namespace

import keras
import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.draw import disk

from nanoseg.errors import NanosegError
from nanoseg.io.micrograph import read_micrograph
from nanoseg.model.network import save_model
from nanoseg.inference.polarity import detect_polarity, parse_polarity, resolve_polarity, to_bright
from nanoseg.cli.predict import predict_command
from tests.conftest import IMAGES


def bright_field(seed=0, size=256):
    """Crafted TEM-bright-field-like image: smooth bright film, dark textured particles."""
    rng = np.random.default_rng(seed)
    img = 0.8 + 0.01 * rng.standard_normal((size, size))
    mask = np.zeros((size, size), bool)
    for _ in range(12):
        mask[disk(tuple(rng.integers(20, size - 20, 2)), int(rng.integers(8, 18)), shape=mask.shape)] = True
    texture = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.5) * 0.25
    img[mask] = 0.3 + texture[mask]
    return np.clip(img, 0, 1).astype(np.float32)


def test_bam_images_are_bright_and_their_inversions_dark(bam_dir):
    for path in sorted((bam_dir / IMAGES).glob("*.tif"))[:6]:
        crop = read_micrograph(path).sample[100:356, 200:456]
        assert detect_polarity(crop)[0] == "bright", path.name
        assert detect_polarity(1.0 - crop)[0] == "dark", path.name


def test_crafted_bright_field_is_dark():
    for seed in range(3):
        pol, ratio = detect_polarity(bright_field(seed))
        assert pol == "dark" and ratio > 1.5


def test_flat_or_ambiguous_falls_back_to_bright_with_a_note():
    assert resolve_polarity(np.full((64, 64), 0.5))[0] == "bright"
    assert "ambiguous" in resolve_polarity(np.full((64, 64), 0.5))[1]
    assert resolve_polarity(bright_field(), "bright")[0] == "bright"
    assert np.allclose(to_bright(np.zeros((2, 2)), "dark"), 1.0)
    with pytest.raises(NanosegError, match="--polarity"):
        parse_polarity("inverted")


def test_predict_gives_the_same_particles_on_an_inverted_image(bam_dir, tmp_path):
    x = keras.Input((None, None, 1))
    folder = save_model(keras.Model(x, keras.layers.Identity()(x)), tmp_path / "m", {"threshold": 0.45})
    crop = read_micrograph(sorted((bam_dir / IMAGES).glob("*.tif"))[0]).sample[100:356, 200:456]
    labels = {}
    for name, img, pol in (("orig", crop, "auto"), ("inv", 1.0 - crop, "auto"), ("forced", 1.0 - crop, "bright")):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, (img * 255).round().astype(np.uint8))
        out = tmp_path / f"out_{name}"
        predict_command(Namespace(images=[str(path)], model=str(folder), out=str(out), overwrite=False,
                                  pixel_size="7.34nm", databar_row=img.shape[0], tta=False, polarity=pol))
        labels[name] = tifffile.imread(out / f"{name}_labels.tif") > 0

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(labels["orig"], labels["inv"]) > 0.98
    assert dice(labels["orig"], labels["forced"]) < 0.5  # without the inversion the background is segmented
