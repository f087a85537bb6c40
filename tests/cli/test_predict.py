"""Predictor (tiles, TTA), load_predictor and the `nanoseg predict` output contract."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from skimage.filters import threshold_otsu

from nanoseg.cli import main
from nanoseg.errors import NanosegError
from nanoseg.model.network import build_unet, save_model
from nanoseg.cli.predict import predict_command
from nanoseg.inference.loading import load_predictor
from nanoseg.inference.predictor import Predictor
from tests.conftest import IMAGES, MASKS, PX_PER_CM

keras.mixed_precision.set_global_policy("float32")


def passthrough_model():
    """A 'model' whose probability is the image itself (deterministic segmentation)."""
    x = keras.Input((None, None, 1))
    return keras.Model(x, keras.layers.Identity()(x))


def conv_model():
    """Not flip/rotation invariant: TTA predictions differ."""
    x = keras.Input((None, None, 1))
    y = keras.layers.Conv2D(1, 5, padding="same", activation="sigmoid",
                            kernel_initializer=keras.initializers.RandomNormal(seed=1))(x)
    return keras.Model(x, y)


@pytest.fixture(scope="module")
def sem_crop(tmp_path_factory, bam_dir):
    """A 300x200 (W x H) cut of a BAM(-layout) image: 168 sample rows (the window with the most particles) + 32 rows
    of its data bar, pixel size in the TIFF."""
    from nanoseg.io.micrograph import read_image_array, read_micrograph

    path = sorted((bam_dir / IMAGES).glob("*.tif"))[0]
    mg = read_micrograph(path)
    mask = read_image_array(bam_dir / MASKS / f"{path.stem}_m.tif") > 0
    r, c = max(((r, c) for r in range(0, 704 - 168 + 1, 32) for c in range(0, 1024 - 300 + 1, 64)),
               key=lambda rc: mask[rc[0] : rc[0] + 168, rc[1] : rc[1] + 300].mean())
    crop = np.concatenate([mg.pixels[r : r + 168, c : c + 300], mg.pixels[712:744, c : c + 300]])
    folder = tmp_path_factory.mktemp("images")
    out = folder / "crop.tif"
    tifffile.imwrite(out, (crop * 255).round().astype(np.uint8), resolution=(PX_PER_CM, PX_PER_CM),
                     resolutionunit="CENTIMETER")
    tifffile.imwrite(folder / "nopx.tif", (crop * 255).round().astype(np.uint8))
    return out, float(threshold_otsu(crop[:168]))


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    model = build_unet(weights=None, decoder_filters=(16, 16, 8, 8, 8))
    return save_model(model, tmp_path_factory.mktemp("unet") / "model", {"variant": "paper", "threshold": 0.5})


def args(images, model, out, **kw):
    return Namespace(images=[str(i) for i in images], model=str(model), out=str(out),
                     overwrite=kw.get("overwrite", False), pixel_size=kw.get("pixel_size"),
                     databar_row=kw.get("databar_row"), tta=kw.get("tta", False))


def test_predictor_any_size():
    pred = Predictor(passthrough_model(), tile=64, overlap=16, batch=2)
    for shape in [(100, 150), (20, 7), (64, 64)]:
        image = np.random.default_rng(0).random(shape, dtype=np.float32)
        prob = pred.probability(image)
        assert prob.shape == shape and prob.dtype == np.float32
        np.testing.assert_allclose(prob, image, atol=1e-6)


def test_single_pass_or_tiles():
    seen = []
    model = passthrough_model()
    pred = Predictor(model, tile=64, overlap=16, batch=2)
    pred._forward = lambda x, f=pred._forward: (seen.append(tuple(x.shape)), f(x))[1]
    image = np.random.default_rng(4).random((40, 50), dtype=np.float32)
    np.testing.assert_allclose(pred.probability(image), image, atol=1e-6)
    assert seen == [(1, 64, 96, 1)]  # 64 x 96 padded image <= batch * tile**2: one pass
    seen.clear()
    tiled = Predictor(model, tile=64, overlap=16, batch=2, single_pass=False)
    tiled._forward = lambda x, f=tiled._forward: (seen.append(tuple(x.shape)), f(x))[1]
    np.testing.assert_allclose(tiled.probability(image), image, atol=1e-6)
    assert {s[1:3] for s in seen} == {(64, 64)} and sum(s[0] for s in seen) == 2


def test_tta_mean_and_uncertainty():
    image = np.random.default_rng(1).random((70, 90), dtype=np.float32)
    mean, std = Predictor(passthrough_model(), tile=64, overlap=16).probability_with_uncertainty(image)
    np.testing.assert_allclose(mean, image, atol=1e-6)
    assert std.shape == image.shape and std.max() < 1e-6
    conv = Predictor(conv_model(), tile=64, overlap=16, tta=True)
    mean, std = conv.probability_with_uncertainty(image)
    assert std.mean() > 1e-3 and np.all(std >= 0)
    np.testing.assert_allclose(conv.probability(image), mean, atol=1e-6)


def test_predictor_rejects_bad_settings():
    with pytest.raises(NanosegError, match="multiple of 32"):
        Predictor(passthrough_model(), tile=100)
    with pytest.raises(NanosegError, match="overlap"):
        Predictor(passthrough_model(), tile=64, overlap=64)


def test_load_predictor_settings_and_uri(tmp_path, monkeypatch):
    folder = save_model(passthrough_model(), tmp_path / "m",
                        {"threshold": 0.3, "tile": 128, "postprocess": {"split": True, "min_distance_px": 7}})
    pred, meta = load_predictor(folder, overlap=8, min_area_nm2=50.0)
    assert (pred.tile, pred.overlap, meta["threshold"]) == (128, 8, 0.3)
    assert meta["postprocess"]["split"] is True and meta["postprocess"]["min_area_nm2"] == 50.0
    assert load_predictor(folder, threshold=0.7)[1]["threshold"] == 0.7

    import nanoseg.model_store

    monkeypatch.setattr(nanoseg.model_store, "download_model", lambda uri: folder)
    assert load_predictor("models:/nanoseg@champion")[1]["model_ref"] == "models:/nanoseg@champion"
    with pytest.raises(NanosegError, match="no such model folder"):
        load_predictor(tmp_path / "nothing")


def test_predict_command_contract(sem_crop, unet_folder, tmp_path):
    image, _ = sem_crop
    out = tmp_path / "pred"
    assert predict_command(args([image], unet_folder, out)) == 0
    stem = image.stem
    names = {p.name for p in out.iterdir()}
    written = {f"{stem}_mask.png", f"{stem}_labels.tif", f"{stem}_overlay.png", "particles.csv", "summary.json",
               "psd.png"}
    assert names == written | {".nanoseg-output"}
    marker = json.loads((out / ".nanoseg-output").read_text())
    assert marker["written_by"] == "nanoseg predict" and set(marker["files"]) == written
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
    labels = tifffile.imread(out / f"{stem}_labels.tif")
    assert mask.shape == labels.shape == (200, 300) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255} and labels.dtype in (np.uint16, np.uint32)
    np.testing.assert_array_equal(mask > 0, labels > 0)
    summary = json.loads((out / "summary.json").read_text())
    row = summary["images"][0]["databar_row"]
    assert 150 < row <= 170 and not mask[row:].any()
    assert summary["unit"] == "nm" and summary["tta"] is False
    assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (200, 300, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_predict_command_particles_in_nm_and_px(sem_crop, tmp_path):
    image, otsu = sem_crop
    folder = save_model(passthrough_model(), tmp_path / "m",
                        {"threshold": otsu, "postprocess": {"split": True, "min_distance_px": 5}})
    out = tmp_path / "nm"
    predict_command(args([image], folder, out, tta=True))
    uncertainty = tifffile.imread(out / f"{image.stem}_uncertainty.tif")
    assert uncertainty.shape == (200, 300) and uncertainty.dtype == np.float32 and uncertainty.max() < 1e-5
    table = pd.read_csv(out / "particles.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert len(table) > 5 and "ecd_nm" in table.columns and summary["n_particles"] == len(table)
    labels = tifffile.imread(out / f"{image.stem}_labels.tif")
    assert labels.max() == len(table)
    assert summary["ecd_distribution"]["unit"] == "nm" and summary["n_measurable"] > 0

    predict_command(args([image.with_name("nopx.tif")], folder, tmp_path / "px"))
    table = pd.read_csv(tmp_path / "px" / "particles.csv")
    summary = json.loads((tmp_path / "px" / "summary.json").read_text())
    assert "ecd_px" in table.columns and "ecd_nm" not in table.columns
    assert summary["unit"] == "px" and "px" in summary["unit_note"]


def test_no_particles_gives_empty_table(sem_crop, tmp_path):
    image, _ = sem_crop
    folder = save_model(passthrough_model(), tmp_path / "m", {"threshold": 2.0})
    predict_command(args([image], folder, tmp_path / "out"))
    table = pd.read_csv(tmp_path / "out" / "particles.csv")
    assert len(table) == 0 and "ecd_nm" in table.columns
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_particles"] == 0 and summary["ecd_distribution"]["median"] is None
    assert (tmp_path / "out" / "psd.png").is_file()


def _refused(argv, capsys) -> str:
    capsys.readouterr()  # earlier runs' progress bars
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_overwrite_replaces_only_a_folder_nanoseg_wrote(sem_crop, tmp_path, capsys):
    image, _ = sem_crop
    folder = save_model(passthrough_model(), tmp_path / "m", {"threshold": 0.5})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    cmd = ["predict", str(image), "--model", str(folder), "--out", str(out)]
    assert "pass --overwrite" in _refused(cmd, capsys)
    err = _refused([*cmd, "--overwrite"], capsys)  # a folder nanoseg did not write: never replaced
    assert f"{out}: not a folder written by nanoseg predict" in err and "move its files away" in err
    assert (out / "keep.txt").read_text() == "old"
    (out / "keep.txt").unlink()
    assert main([*cmd, "--overwrite"]) == 0  # an empty folder may be replaced
    assert main([*cmd, "--overwrite"]) == 0  # and nanoseg's own output
    assert (out / "summary.json").is_file() and (out / ".nanoseg-output").is_file()
    (out / "notes.txt").write_text("mine")  # a foreign file in nanoseg's output: refused
    err = _refused([*cmd, "--overwrite"], capsys)
    assert "holds files nanoseg predict did not write (notes.txt)" in err and (out / "notes.txt").is_file()
    (out / "notes.txt").unlink()
    (out / "sub").mkdir()  # so is a folder
    assert "did not write (sub)" in _refused([*cmd, "--overwrite"], capsys)
    (out / "sub").rmdir()
    inside = out / "crop_overlay.png"  # one of its own outputs given as input: never replaced
    assert f"holds the input image(s) {inside}" in _refused(
        ["predict", str(inside), "--model", str(folder), "--out", str(out), "--overwrite"], capsys)
    assert inside.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out"]


def test_overwrite_never_replaces_the_inputs_folder_or_the_working_folder(sem_crop, tmp_path, capsys, monkeypatch):
    image, _ = sem_crop
    folder = save_model(passthrough_model(), tmp_path / "m", {"threshold": 0.5})
    err = _refused(["predict", str(image), "--model", str(folder), "--out", str(image.parent), "--overwrite"], capsys)
    assert f"{image.parent}: holds the input image(s)" in err and image.is_file()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    err = _refused(["predict", str(image), "--model", str(folder), "--out", ".", "--overwrite"], capsys)
    assert "is (or holds) the working folder" in err and work.is_dir()


def test_nonexistent_model_or_image(sem_crop, tmp_path):
    image, _ = sem_crop
    with pytest.raises(NanosegError, match="no such model folder"):
        predict_command(args([image], tmp_path / "nomodel", tmp_path / "out"))
    with pytest.raises(NanosegError, match="missing.tif: no such file"):  # before the model is looked for
        predict_command(args([tmp_path / "missing.tif"], tmp_path / "nomodel", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_settings_come_from_the_model_not_a_params_yaml_in_the_working_folder(tmp_path, monkeypatch):
    folder = save_model(passthrough_model(), tmp_path / "m", {"threshold": 0.3, "tile": 128})
    other = tmp_path / "another-project"
    other.mkdir()
    (other / "params.yaml").write_text("predict: {tile: 64, overlap: 0}\nnot_nanoseg: true\n")  # not ours
    monkeypatch.chdir(other)
    pred, meta = load_predictor(folder)
    assert (pred.tile, pred.overlap, meta["threshold"]) == (128, 64, 0.3)


def test_ensemble_mean_spread_and_predict_files(sem_crop, tmp_path):
    """The ensemble candidate: one model averaging fold models; its members' spread is a second uncertainty map."""
    from nanoseg.model.candidates import build_ensemble

    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(0)  # same (random) encoder: shared in the ensemble
        m = build_unet(weights=None, decoder_filters=(8, 8, 8, 8, 8))
        keras.utils.set_random_seed(seed)
        head = m.get_layer("head")
        head.kernel.assign(np.random.normal(size=head.kernel.shape).astype(np.float32))
        members.append(m)
    ensemble, shared = build_ensemble(members)
    assert shared
    folder = save_model(ensemble, tmp_path / "ens", {"variant": "paper", "threshold": 0.5, "candidate": "ensemble"})
    pred, _ = load_predictor(folder, precision="keep")
    assert pred.members == 2
    image = np.random.default_rng(0).random((96, 160)).astype(np.float32)
    singles = [Predictor(m).probability(image) for m in members]
    mean, spread = pred.probability_with_spread(image)
    np.testing.assert_allclose(pred.probability(image), np.mean(singles, axis=0), atol=1e-5)
    np.testing.assert_allclose(mean, np.mean(singles, axis=0), atol=1e-5)
    np.testing.assert_allclose(spread, np.std(singles, axis=0), atol=1e-5)
    a = args([sem_crop[0]], folder, tmp_path / "out")
    a.spread = True
    assert predict_command(a) == 0
    assert tifffile.imread(tmp_path / "out" / "crop_spread.tif").shape == (200, 300)
    single = save_model(members[0], tmp_path / "one", {"variant": "paper", "threshold": 0.5})
    b = args([sem_crop[0]], single, tmp_path / "out2")
    b.spread = True
    with pytest.raises(NanosegError, match="--spread needs an ensemble"):
        predict_command(b)


def test_a_bad_image_among_many_is_reported_and_skipped(sem_crop, tmp_path, capsys):
    image, _ = sem_crop
    folder = save_model(passthrough_model(), tmp_path / "m", {"threshold": 0.5})
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(image.read_bytes()[:300])  # header fine, pixels missing: fails while it is read
    out = tmp_path / "out"
    assert main(["predict", str(text), str(image), str(cut), "--model", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"nanoseg: error: {text}: not a TIFF or PNG image" in err
    assert f"nanoseg: error: {cut}: cannot read this TIFF" in err
    assert "2 of 3 images failed and were skipped: notes.tif, cut.tif" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [i["image"] for i in summary["images"]] == ["crop.tif"] and summary["n_failed"] == 2
    assert [f["image"] for f in summary["failed"]] == ["notes.tif", "cut.tif"]
    assert all("\n" not in f["error"] for f in summary["failed"])
    assert set(pd.read_csv(out / "particles.csv")["image"]) <= {"crop.tif"}
    assert (out / "crop_mask.png").is_file() and not (out / "notes_mask.png").exists()
    with pytest.raises(SystemExit) as exit_info:  # all bad: nothing written, exit 2
        main(["predict", str(text), str(cut), "--model", str(folder), "--out", str(tmp_path / "none")])
    assert exit_info.value.code == 2 and "none of the 2 images could be analysed" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_arguments_and_headers_are_checked_before_the_model_loads(sem_crop, tmp_path, monkeypatch):
    import nanoseg.cli.predict

    image, _ = sem_crop

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(nanoseg.cli.predict, "load_predictor", no_model)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(big)
    cases = [({"pixel_size": "7 furlongs"}, "pixel size"), ({"databar_row": "x"}, "--databar-row 'x'"),
             ({"scale": "junk"}, "--scale 'junk'"), ({"polarity": "sideways"}, "polarity"),
             ({"max_pixels": "lots"}, "--max-pixels 'lots'"),
             ({"max_pixels": "100000", "images": [big]}, "more than the 0.1 Mpx limit")]
    for extra, message in cases:
        a = args(extra.pop("images", [image]), tmp_path / "m", tmp_path / "out")
        vars(a).update(extra)
        with pytest.raises(NanosegError, match=message):
            predict_command(a)
    assert not (tmp_path / "out").exists()


def test_without_pixel_size_the_minimum_area_is_in_px(sem_crop, tmp_path):
    from nanoseg.inference.analyze import DEFAULT_MIN_AREA_PX, infer, post_without_pixel_size

    post = {"min_area_nm2": 200.0, "opening_radius": 0}
    assert post_without_pixel_size(post, 7.34375)[0]["min_area_px"] == 4  # 200 nm2 at 7.34 nm/px
    assert post_without_pixel_size(post, 2.0)[0]["min_area_px"] == 50
    area, note = post_without_pixel_size(post, None)
    assert area["min_area_px"] == DEFAULT_MIN_AREA_PX and "default" in note
    assert post_without_pixel_size({**post, "min_area_px": 9}, 2.0)[0]["min_area_px"] == 9

    specks = np.zeros((64, 64), np.float32)
    specks[10:12, 10:12] = 1.0  # 4 px
    specks[30:40, 30:40] = 1.0  # 100 px
    pred = Predictor(passthrough_model(), tile=64, overlap=16)
    settings = {"threshold": 0.5, "tta": False, "postprocess": post, "training_scale": {"pixel_size_nm": 2.0}}
    res = infer(pred, settings, specks, None)
    assert res["labels"].max() == 1 and res["min_area_px"] == 50  # the 4-px speck is gone, not kept with area 0
    assert any("smaller than 50 px removed" in n for n in res["notes"])
    res = infer(pred, settings, specks, 2.0)  # with a pixel size: min_area_nm2 / px**2 as before
    assert res["min_area_px"] == 50 and not any("px removed" in n for n in res["notes"])
    out = tmp_path / "px"
    folder = save_model(passthrough_model(), tmp_path / "m", {"threshold": 0.5, "postprocess": post,
                                                               "training_scale": {"pixel_size_nm": 7.34375}})
    predict_command(args([sem_crop[0].with_name("nopx.tif")], folder, out))
    assert json.loads((out / "summary.json").read_text())["images"][0]["min_area_px"] == 4


def test_tta_running_statistics_match_the_stacked_ones():
    image = np.random.default_rng(5).random((70, 90), dtype=np.float32)
    conv = Predictor(conv_model(), tile=64, overlap=16)
    views = []
    for k in range(4):
        for flip in (False, True):
            view = np.rot90(image, k)
            view = view[:, ::-1] if flip else view
            pred = conv._single(np.ascontiguousarray(view))
            views.append(np.rot90(pred[:, ::-1] if flip else pred, -k))
    mean, std = conv.probability_with_uncertainty(image)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, np.mean(views, axis=0), atol=1e-6)
    np.testing.assert_allclose(std, np.std(views, axis=0), atol=1e-5)
