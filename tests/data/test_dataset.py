"""Pairing, split, manifest, data import, and the training input pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from nanoseg.data.dvc_import import check_source
from nanoseg.data.manifest import pair_samples, prepare, read_prepared
from nanoseg.data.split import split_samples
from nanoseg.model.input_pipeline import make_train_dataset, random_crops
from nanoseg.errors import NanosegError
from tests.conftest import IMAGES, MASKS


def test_split_is_seeded_disjoint_and_folds_cover_train():
    stems = [f"{i:03d}" for i in range(32)]
    a = split_samples(stems, 0.15, 5, seed=42)
    b = split_samples(list(reversed(stems)), 0.15, 5, seed=42)
    assert a == b
    assert len(a["test"]) == 5 and len(a["train"]) == 27
    assert not set(a["train"]) & set(a["test"])
    vals = [s for f in a["folds"] for s in f["val"]]
    assert sorted(vals) == sorted(a["train"])
    for f in a["folds"]:
        assert not set(f["train"]) & set(f["val"])
    assert split_samples(stems, 0.15, 5, seed=1) != a


def test_split_too_few_images():
    with pytest.raises(NanosegError, match="too few"):
        split_samples(["a", "b", "c"], 0.15, 5, seed=0)


def test_prepare_writes_manifest_and_split(small_dataset, params_for, tmp_path):
    params = params_for(small_dataset)
    manifest = prepare(params, tmp_path / "prepared", progress=False)
    m, split = read_prepared(tmp_path / "prepared")
    assert len(m) == 8 and set(m["split"]) == {"train", "test"}
    row = m.iloc[0]
    assert row["pixel_size_nm"] == pytest.approx(7.34375, rel=1e-4)
    assert row["databar_row"] == 224 and row["crop_rows"] == 224
    assert row["mask_values"] == "0,255" and row["mask_present"] and row["mask_shape_ok"]
    assert row["n_instances"] > 0 and 0 < row["foreground_fraction"] < 1
    assert (m["fold"] >= 0).sum() == len(split["train"])
    assert not list((tmp_path / "prepared").glob("*.tmp"))
    assert manifest["stem"].tolist() == m["stem"].tolist()


def test_pairing_finds_masks_and_class_masks(small_dataset, params_for):
    params = params_for(small_dataset)
    samples = pair_samples(small_dataset, params)
    assert all(s.mask is not None and s.class_mask is not None for s in samples)
    (small_dataset / MASKS / f"{samples[0].stem}_m.tif").unlink()
    assert pair_samples(small_dataset, params)[0].mask is None


@pytest.mark.parametrize("problem", ["not_tiff", "truncated"])
def test_prepare_refuses_unreadable_image(small_dataset, params_for, tmp_path, problem):
    params = params_for(small_dataset)
    victim = sorted((small_dataset / IMAGES).glob("*.tif"))[1]
    if problem == "not_tiff":
        victim.write_text("this is not an image\n")
    else:
        victim.write_bytes(victim.read_bytes()[:500])
    with pytest.raises(NanosegError, match=victim.name):
        prepare(params, tmp_path / "prepared", progress=False)
    assert not (tmp_path / "prepared" / "manifest.csv").exists()


def test_rgb_and_16bit_images_are_accepted(small_dataset, params_for, tmp_path):
    params = params_for(small_dataset)
    files = sorted((small_dataset / IMAGES).glob("*.tif"))
    gray = tifffile.imread(files[0])
    tifffile.imwrite(files[0], np.stack([gray] * 3, axis=-1), photometric="rgb",
                     resolution=(1e7 / 7.34375,) * 2, resolutionunit="CENTIMETER")
    tifffile.imwrite(files[1], gray.astype(np.uint16) * 257, resolution=(1e7 / 7.34375,) * 2,
                     resolutionunit="CENTIMETER")
    m = prepare(params, tmp_path / "prepared", progress=False)
    assert m.iloc[0]["source_dtype"].startswith("RGB") or "rgb" in m.iloc[0]["source_dtype"].lower()
    assert "16" in m.iloc[1]["source_dtype"]


def test_empty_dataset_folder(tmp_path, params_for):
    (tmp_path / "empty" / IMAGES).mkdir(parents=True)
    params = params_for(tmp_path / "empty")
    with pytest.raises(NanosegError, match="no images"):
        prepare(params, tmp_path / "prepared", progress=False)
    with pytest.raises(NanosegError, match="no images found"):
        check_source(tmp_path / "empty", params)


def test_missing_source_folder(tmp_path, params_for):
    params = params_for(tmp_path / "data")
    with pytest.raises(NanosegError, match="does not exist"):
        check_source(tmp_path / "nowhere", params)


def test_import_dataset_through_dvc(small_dataset, tmp_path, params_for):
    from nanoseg import processes
    from nanoseg.data.dvc_import import import_dataset

    repo = tmp_path / "repo"
    repo.mkdir()
    processes.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc = processes.tool("dvc")
    processes.run([dvc, "init", "-q"], cwd=repo, check=True)
    params = params_for(repo / "data")
    params["_root"] = str(repo)
    params["data"]["dir"] = "data"
    data = import_dataset(params, str(small_dataset))
    src = sorted((small_dataset / IMAGES).glob("*.tif"))[0]
    copy = data / IMAGES / src.name
    assert copy.read_bytes() == src.read_bytes()
    assert (repo / "data.dvc").is_file()
    status = processes.run([dvc, "status", "--json"], cwd=repo, capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}
    # one changed byte shows up
    copy.chmod(0o644)
    raw = bytearray(copy.read_bytes())
    raw[-1] ^= 0xFF
    copy.unlink()
    copy.write_bytes(bytes(raw))
    status = processes.run([dvc, "status", "--json"], cwd=repo, capture_output=True, text=True)
    assert "data.dvc" in json.loads(status.stdout)
    # a second import of the same source restores it (dvc update)
    import_dataset(params, str(small_dataset))
    assert copy.read_bytes() == src.read_bytes()
    with pytest.raises(NanosegError, match="does not exist"):
        import_dataset(params, str(tmp_path / "missing"))


def test_random_crops_keep_thin_lines():
    img = np.random.default_rng(0).random((64, 96)).astype(np.float32)
    tgt = np.zeros((64, 96), np.float32)
    tgt[:, 40] = 1.0  # a 1-px line
    gen = random_crops([img], [tgt], 32, {"flips": True, "rot90": True, "brightness": 0.1, "contrast": 0.1}, 3)
    for _ in range(20):
        x, y = next(gen)
        assert x.shape == (32, 32, 1) and y.shape == (32, 32, 1)
        assert set(np.unique(y)) <= {0.0, 1.0}
        if y.any():  # the line stays a straight 1-px line: one full row or column
            assert y.sum() == 32 and (y[..., 0].sum(0).max() == 32 or y[..., 0].sum(1).max() == 32)


def test_train_dataset_batches_and_bad_settings():
    imgs = [np.zeros((64, 64), np.float32)] * 3
    masks = [np.zeros((64, 64), np.float32)] * 3
    ds = make_train_dataset(imgs, masks, crop=32, batch=2, augment={}, seed=0)
    x, y = next(iter(ds))
    assert tuple(x.shape) == (2, 32, 32, 1) and tuple(y.shape) == (2, 32, 32, 1)
    with pytest.raises(NanosegError, match="multiple of 32"):
        make_train_dataset(imgs, masks, crop=48, batch=2, augment={}, seed=0)
    with pytest.raises(NanosegError, match="larger than the 3 training images"):
        make_train_dataset(imgs, masks, crop=32, batch=4, augment={}, seed=0)
    with pytest.raises(NanosegError, match="larger than an image"):
        make_train_dataset(imgs, masks, crop=96, batch=2, augment={}, seed=0)
