"""The synthetic stand-in for the BAM dataset (tests/synthetic_bam.py) has what the tests that use it rely on."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from nanoseg.data.manifest import pair_samples
from nanoseg.io.masks import read_mask
from nanoseg.io.micrograph import read_micrograph
from nanoseg.inference.polarity import detect_polarity
from tests.synthetic_bam import synthetic_micrograph


def test_synthetic_dataset_mirrors_the_bam_files(synthetic_bam, params_for):
    samples = pair_samples(synthetic_bam, params_for(synthetic_bam))
    assert len(samples) == 8 and all(s.mask and s.class_mask for s in samples)
    for s in samples:
        m = read_micrograph(s.image)
        assert (m.shape, m.databar_row, m.source_dtype) == ((768, 1024), 712, "uint8 palette")
        assert m.pixel_size_nm == pytest.approx(7.34375) and m.pixel_size_source == "CZ_SEM tag 34118"
        assert detect_polarity(m.sample)[0] == "bright"
        mask, class_mask = read_mask(s.mask, shape=m.shape), read_mask(s.class_mask)
        assert class_mask.shape == (704, 1024) and not mask[712:].any()
        labels = measure.label(mask, connectivity=1)  # the instances, as for the BAM masks
        areas = np.bincount(labels.ravel())[1:]
        ecd = np.sqrt(4 * areas / np.pi)
        assert 100 < labels.max() < 200 and 0.07 < mask.mean() < 0.13, s.stem
        assert 20 < np.median(ecd) < 30 and areas.min() >= 30, s.stem
        # touching particles, cut apart by 1-px background lines: fewer 8-connected than 4-connected components
        assert measure.label(mask, connectivity=2).max() < 0.85 * labels.max(), s.stem
        # the class mask holds whole instances only, none at the frame, a part of all
        kept = np.unique(labels[:704][class_mask])
        assert kept.min() > 0 and np.array_equal(class_mask, np.isin(labels[:704], kept))
        assert not (class_mask[0].any() or class_mask[:, 0].any() or class_mask[:, -1].any())
        assert 0.25 < kept.size / labels.max() < 0.8, s.stem
        # the sample ends at the data bar: particles are bright against a dark background
        image = m.sample[:704]
        assert np.median(image[mask[:704]]) > 0.4 > 0.25 > np.median(image[~mask[:704]])


def test_synthetic_micrographs_are_deterministic():
    first, again, other = synthetic_micrograph(3), synthetic_micrograph(3), synthetic_micrograph(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])
