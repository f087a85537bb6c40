"""The instance variant end to end: settings, CV decoder choice, training, `nanoseg predict`."""

from __future__ import annotations

import json
from argparse import Namespace

import keras
import numpy as np
import pandas as pd
import pytest
import tifffile

from nanoseg.pipeline.crossval import choose_postprocess, config_key
from nanoseg.model.network import build_unet, save_model
from nanoseg.cli.predict import predict_command
from tests.conftest import IMAGES, MASKS, PX_PER_CM
from tests.postprocess.test_postprocess import _chain, _synthetic_outputs

MANIFEST = {"image_sha256": ["abc"]}
SPLIT = {"folds": [{"train": ["a"], "val": ["b"]}]}


def test_config_key_instance_settings_only_count_for_the_instance_variant(params_for, tmp_path):
    params = params_for(tmp_path)
    params["model"]["variant"] = "paper"
    paper = config_key(params, MANIFEST, SPLIT)
    params["instance"]["head"] = "fg_distance"
    assert config_key(params, MANIFEST, SPLIT) == paper  # resumed paper folds stay valid
    params["model"]["variant"] = "instance"
    fg = config_key(params, MANIFEST, SPLIT)
    params["instance"]["head"] = "classes3"
    assert len({paper, fg, config_key(params, MANIFEST, SPLIT)}) == 3


@pytest.mark.parametrize("head", ["classes3", "fg_distance", "classes3_hv"])
def test_choose_postprocess_tunes_the_decoder_on_validation_maps(params_for, tmp_path, head):
    mask, _ = _chain(4)
    params = params_for(tmp_path)
    params["model"]["variant"] = "instance"
    params["instance"].update(head=head, marker_grid=[0.05, 0.5], min_marker_grid=[0, 3])
    post = choose_postprocess([mask], [_synthetic_outputs(mask)[head]], 0.5, params, pixel_size_nm=7.34375)
    assert post["decoder"] == head and post["marker_threshold"] == (0.05 if head == "classes3_hv" else 0.5)
    assert post["val_f1_50"] == pytest.approx(1.0) and post["min_area_nm2"] == params["postprocess"]["min_area_nm2"]


@pytest.mark.parametrize("head", ["classes3", "fg_distance", "classes3_hv"])
def test_decoding_the_targets_of_a_real_mask_recovers_its_particles(bam_dir, head):
    """A perfect network: its outputs are the targets. Misses are the 1-9 px specks of the manual mask."""
    from nanoseg.evaluation.scoring import truth_labels
    from nanoseg.evaluation.metrics import instance_metrics
    from nanoseg.io.micrograph import read_image_array
    from nanoseg.postprocess.decode import decode_instances
    from nanoseg.model.targets import make_targets

    path = sorted((bam_dir / MASKS).glob("*_m.tif"))[0]
    mask = read_image_array(path)[:704] > 0
    labels = decode_instances(make_targets(mask, head), 0.5, marker_threshold=0.5, opening_radius=1, min_area_px=4)
    scores = instance_metrics(truth_labels(mask), labels)
    assert scores["f1_50"] > 0.85 and scores["f1_75"] > 0.8, scores


def test_score_uses_the_foreground_probability_of_instance_outputs():
    from nanoseg.evaluation.scoring import score
    from nanoseg.postprocess.decode import segment

    mask, _ = _chain(3)
    outputs = _synthetic_outputs(mask)
    labels = segment(outputs["fg_distance"], 0.5, {"min_area_nm2": 0.0})[1]
    scored = score([mask], [outputs["fg_distance"]], [labels], threshold=0.5)
    assert scored["dice"] > 0.9 and scored["f1_50"] == pytest.approx(1.0) and scored["n_pred"] == 3
    c3 = score([mask], [outputs["classes3"]], [segment(outputs["classes3"], 0.5, {"min_area_nm2": 0.0})[1]])
    assert c3["dice"] > 0.9 and c3["f1_50"] == pytest.approx(1.0)


def _bam_cut(bam_dir, k, rows=128, cols=192):
    from nanoseg.io.micrograph import read_image_array, read_micrograph

    path = sorted((bam_dir / IMAGES).glob("*.tif"))[k]
    mg = read_micrograph(path)
    mask = read_image_array(bam_dir / MASKS / f"{path.stem}_m.tif") > 0
    return mg.pixels[200 : 200 + rows, 300 : 300 + cols], mask[200 : 200 + rows, 300 : 300 + cols]


def test_instance_variant_trains_and_predicts_end_to_end(bam_dir, params_for, tmp_path):
    from nanoseg.model.training import fit

    params = params_for(tmp_path)
    params["model"]["variant"] = "instance"
    params["instance"].update(head="classes3", loss="border_wcce_dice")
    params["train"].update(mixed_bf16=False, steps_per_epoch=2, crop=64, batch=2)
    cuts = [_bam_cut(bam_dir, k) for k in (0, 1)]
    model, history, info = fit([c[0] for c in cuts], [c[1] for c in cuts], None, None, params, epochs=1)
    assert model.output_shape == (None, None, None, 3) and info["epochs_run"] == 1
    assert {"loss", "dice_coefficient", "boundary_dice"} <= set(history)
    assert np.isfinite(history["loss"]).all()
    post = {"decoder": "classes3", "opening_radius": 1, "min_area_nm2": 200.0, "marker_threshold": 0.5,
            "min_marker_px": 0}
    folder = save_model(model, tmp_path / "model", {"variant": "instance", "threshold": 0.5, "postprocess": post})

    image = np.concatenate([cuts[0][0], np.zeros((32, cuts[0][0].shape[1]), np.float32)])  # + a data-bar strip
    tif = tmp_path / "cut.tif"
    tifffile.imwrite(tif, (image * 255).round().astype(np.uint8), resolution=(PX_PER_CM, PX_PER_CM),
                     resolutionunit="CENTIMETER")
    out = tmp_path / "pred"
    args = Namespace(images=[str(tif)], model=str(folder), out=str(out), overwrite=False, pixel_size=None,
                     databar_row=128, tta=False)
    assert predict_command(args) == 0
    for name in ("cut_mask.png", "cut_labels.tif", "cut_overlay.png", "particles.csv", "summary.json", "psd.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variant"] == "instance" and summary["postprocess"]["decoder"] == "classes3"
    labels = tifffile.imread(out / "cut_labels.tif")
    assert labels.shape == image.shape and not labels[128:].any()
    assert len(pd.read_csv(out / "particles.csv")) == summary["n_particles"] == len(np.unique(labels)) - 1


def test_fg_distance_model_predicts_with_tta(sem_crop_tif, tmp_path):
    keras.mixed_precision.set_global_policy("float32")
    model = build_unet("instance", weights=None, decoder_filters=(16, 16, 8, 8, 8), head="fg_distance")
    y = model(np.zeros((1, 32, 32, 1), np.float32)).numpy()
    assert y.shape == (1, 32, 32, 2) and (y >= 0).all() and (y <= 1).all()
    folder = save_model(model, tmp_path / "fd", {"variant": "instance", "threshold": 0.5,
                                                 "postprocess": {"decoder": "fg_distance", "marker_threshold": 0.5}})
    out = tmp_path / "pred"
    args = Namespace(images=[str(sem_crop_tif)], model=str(folder), out=str(out), overwrite=False, pixel_size=None,
                     databar_row=None, tta=True)
    assert predict_command(args) == 0
    assert (out / "sem_uncertainty.tif").is_file() and (out / "sem_labels.tif").is_file()
    std = tifffile.imread(out / "sem_uncertainty.tif")
    assert std.ndim == 2


@pytest.fixture
def sem_crop_tif(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((96, 64)) * 255).astype(np.uint8)
    path = tmp_path / "sem.tif"
    tifffile.imwrite(path, image, resolution=(PX_PER_CM, PX_PER_CM), resolutionunit="CENTIMETER")
    return path


def test_classes3_hv_trains_ensembles_and_predicts_with_tta(bam_dir, params_for, tmp_path):
    """The HoVer head end to end: a real fit, save/load, an ensemble of two, TTA that turns the maps back."""
    from nanoseg.inference.predictor import Predictor
    from nanoseg.model.candidates import build_ensemble
    from nanoseg.model.network import load_model
    from nanoseg.model.training import fit

    params = params_for(tmp_path)
    params["model"]["variant"] = "instance"
    params["instance"].update(head="classes3_hv", hv_weight=2.0)
    params["train"].update(mixed_bf16=False, steps_per_epoch=2, crop=64, batch=2)
    cuts = [_bam_cut(bam_dir, k) for k in (0, 1)]
    model, history, _ = fit([c[0] for c in cuts], [c[1] for c in cuts], None, None, params, epochs=1)
    assert model.output_shape == (None, None, None, 5)
    assert {"loss", "dice_coefficient", "boundary_dice", "hv_mae"} <= set(history)
    assert np.isfinite(history["loss"]).all()
    post = {"decoder": "classes3_hv", "opening_radius": 1, "min_area_nm2": 200.0, "marker_threshold": 0.5,
            "min_marker_px": 0}
    folder = save_model(model, tmp_path / "model", {"variant": "instance", "threshold": 0.5, "postprocess": post})
    loaded, _ = load_model(folder)
    image = cuts[0][0][:64, :96]
    y = loaded(image[None, ..., None]).numpy()[0]
    np.testing.assert_allclose(y, model(image[None, ..., None]).numpy()[0], atol=1e-5)
    np.testing.assert_allclose(y[..., :3].sum(-1), 1.0, atol=1e-5)  # softmax classes, sigmoid maps
    assert (y[..., 3:] > 0).all() and (y[..., 3:] < 1).all()
    ensemble, _ = build_ensemble([loaded, load_model(folder)[0]])
    np.testing.assert_allclose(ensemble(image[None, ..., None]).numpy()[0], y, atol=1e-5)
    # TTA: a network whose output is the turned-back maps' mean; check against the views done by hand
    pred = Predictor(loaded, tile=64, overlap=0, batch=1, tta=True)
    mean = pred.probability(image)
    from nanoseg.model.targets import VECTORS, dihedral

    one = Predictor(loaded, tile=64, overlap=0, batch=1)
    by_hand = np.mean([dihedral(one.probability(np.ascontiguousarray(dihedral(image, k, f))), k, f,
                                VECTORS["classes3_hv"], invert=True) for k in range(4) for f in (False, True)], 0)
    np.testing.assert_allclose(mean, by_hand, atol=1e-4)
