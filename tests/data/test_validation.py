"""The Great Expectations gate: each kind of bad dataset is named in the report."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from nanoseg.data.manifest import prepare
from nanoseg.errors import NanosegError
from nanoseg.data.validation import run_gate
from tests.conftest import IMAGES, MASKS, write_small_dataset


def _gate(params, tmp_path):
    manifest = prepare(params, tmp_path / "prepared", progress=False)
    from nanoseg.data.manifest import read_prepared

    m, split = read_prepared(tmp_path / "prepared")
    return run_gate(m, split, params, tmp_path / "report")


def test_good_dataset_passes(small_dataset, params_for, tmp_path):
    summary = _gate(params_for(small_dataset), tmp_path)
    assert summary["success"] and summary["met"] == summary["expectations"]
    assert (tmp_path / "report" / "result.json").is_file()
    assert "passed" in (tmp_path / "report" / "report.md").read_text()


def _first(folder, pattern):
    return sorted(folder.glob(pattern))[0]


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("no_mask", "image without a mask"),
        ("mask_shape", "mask shape differs"),
        ("mask_values", "not a subset of {0, 255}"),
        ("empty_mask", "foreground fraction"),
        ("duplicate", "duplicate images"),
    ],
)
def test_bad_datasets_fail_with_named_files(small_dataset, params_for, tmp_path, problem, expected):
    masks = small_dataset / MASKS
    victim = _first(masks, "*_m.tif")
    stem = victim.stem[:-2]
    if problem == "no_mask":
        victim.unlink()
    elif problem == "mask_shape":
        tifffile.imwrite(victim, tifffile.imread(victim)[:-10])
    elif problem == "mask_values":
        m = tifffile.imread(victim)
        m[m == 255] = 7
        tifffile.imwrite(victim, m)
    elif problem == "empty_mask":
        tifffile.imwrite(victim, np.zeros_like(tifffile.imread(victim)))
    elif problem == "duplicate":
        imgs = sorted((small_dataset / IMAGES).glob("*.tif"))
        imgs[1].write_bytes(imgs[0].read_bytes())
        stem = imgs[0].stem
    with pytest.raises(NanosegError) as err:
        _gate(params_for(small_dataset), tmp_path)
    msg = str(err.value)
    assert expected in msg and stem in msg
    assert expected in (tmp_path / "report" / "report.md").read_text()


def test_missing_pixel_size_fails_the_gate(tmp_path, params_for, bam_dir):
    data = write_small_dataset(bam_dir, tmp_path / "nopx", n=6, pixel_size=False)
    with pytest.warns(Warning):
        with pytest.raises(NanosegError, match="pixel size missing"):
            _gate(params_for(data), tmp_path)
    # ... and an explicit setting fixes it
    assert _gate(params_for(data, data={"pixel_size_nm": 7.34}), tmp_path)["success"]
