"""Training one model: the recipe runs, and bad settings stop with a clear message."""

from __future__ import annotations

import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.training import fit
from tests.conftest import REPO


@pytest.fixture
def smoke_params():
    from nanoseg.config import load_params

    p = load_params(REPO / "params.yaml", profile="smoke")
    p["train"].update(epochs=2, steps_per_epoch=2, crop=64, batch=2, patience=None, max_minutes_per_fold=None)
    return p


def _data(n=3, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [rng.random((64, 96)).astype(np.float32) for _ in range(n)]
    masks = [im > 0.8 for im in imgs]
    return imgs, masks


def test_fit_runs_and_reports_epochs(smoke_params):
    imgs, masks = _data()
    logged = []
    model, history, info = fit(imgs, masks, imgs[:1], masks[:1], smoke_params, log=lambda m, e: logged.append(e))
    assert info["epochs_run"] == 2 and len(history["loss"]) == 2 and logged == [0, 1]
    assert "val_loss" in history and 1 <= info["best_epoch"] <= 2
    assert model.get_layer("encoder").trainable is False  # freeze_encoder from the settings


def test_nan_loss_stops_with_clear_error(smoke_params):
    imgs, masks = _data()
    imgs = [np.full_like(im, np.nan) for im in imgs]
    with pytest.raises(NanosegError, match="NaN"):
        fit(imgs, masks, None, None, smoke_params, label="fold 3")


def test_missing_weights_file(smoke_params, tmp_path):
    imgs, masks = _data()
    smoke_params["model"]["weights"] = str(tmp_path / "missing.weights.h5")
    with pytest.raises(NanosegError, match="missing.weights.h5"):
        fit(imgs, masks, None, None, smoke_params)


def test_bad_crop_and_batch(smoke_params):
    imgs, masks = _data()
    smoke_params["train"]["crop"] = 48
    with pytest.raises(NanosegError, match="multiple of 32"):
        fit(imgs, masks, None, None, smoke_params)
    smoke_params["train"].update(crop=64, batch=8)
    with pytest.raises(NanosegError, match="larger than the 3 training images"):
        fit(imgs, masks, None, None, smoke_params)
