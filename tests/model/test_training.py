"""Training one model: the recipe runs, and bad settings stop with a clear message."""

from __future__ import annotations

import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.model.training import fit
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


def test_fit_reports_epochs_validation_and_the_lr_schedule(smoke_params, tmp_path):
    """One fit (each costs ~30 s of graph tracing on a slow CPU): 4 epochs, validation every 2nd, a cosine
    schedule from 1e-3 to 1e-4; the log, the history, the best epoch and the report agree."""
    from nanoseg.model.training import save_history_csv

    imgs, masks = _data()
    logged, epochs = [], []
    smoke_params["train"].update(epochs=4, val_every=2, lr=1e-3, lr_final_factor=0.1)
    model, history, info = fit(imgs, masks, imgs[:1], masks[:1], smoke_params,
                               log=lambda m, e: (logged.append(m), epochs.append(e)))
    assert info["epochs_run"] == 4 and epochs == [0, 1, 2, 3]
    assert len(history["val_loss"]) == len(history["loss"]) == 4
    assert np.isnan(history["val_loss"][0]) and np.isfinite(history["val_loss"][1])  # validated on epochs 2, 4
    assert info["best_epoch"] in (2, 4)
    lrs = history["learning_rate"]
    assert len(lrs) == 4 and all(a > b for a, b in zip(lrs, lrs[1:])) and all("learning_rate" in m for m in logged)
    assert info["lr_final"] <= 1e-3 / 10 * 1.5  # the last step runs at about lr / 10
    assert info["steps_done"] == 4 * 2 and info["cpu"]
    assert model.get_layer("encoder").trainable is False  # freeze_encoder from the settings
    save_history_csv(history, tmp_path / "history.csv")  # equal lengths: writes
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 1 + 4


def test_nan_loss_stops_with_clear_error_and_removes_the_backup(smoke_params, tmp_path):
    from nanoseg.model.training import Backup

    imgs, masks = _data()
    with pytest.raises(NanosegError, match="fold 3: the training loss became NaN"):
        fit([np.full_like(im, np.nan) for im in imgs], masks, None, None, smoke_params, label="fold 3",
            backup=Backup(tmp_path / "backup", "k"))
    assert not (tmp_path / "backup").exists()


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


def test_cosine_lr_decays_to_the_final_factor():
    from nanoseg.model.training import cosine_lr

    assert cosine_lr(1e-3, 0.0) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 1.0, 0.05) == pytest.approx(5e-5)
    assert cosine_lr(1e-3, 2.0, 0.05) == pytest.approx(5e-5)  # clipped: never below the end value
    lrs = [cosine_lr(1e-3, p) for p in np.linspace(0, 1, 11)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_best_epoch_of_indexes_training_epochs():
    from nanoseg.model.training import best_epoch_of

    nan = float("nan")
    assert best_epoch_of([nan, 0.5, nan, 0.3], 4) == 4
    assert best_epoch_of([nan, 0.2, nan, 0.3], 4) == 2
    assert best_epoch_of(None, 3) == 3


class Interrupted(Exception):
    """Stands for a kill, Ctrl+C or power cut in the middle of training."""


def test_interrupted_training_resumes_after_its_last_finished_epoch(smoke_params, tmp_path):
    """Keras BackupAndRestore per run: killed after epoch 2 of 4, the next fit with the same backup and key
    trains epochs 3 and 4 only, with the weights, optimizer state, learning-rate schedule, early stopping
    and curves of the first two; the backup is gone once training ends; another key starts over."""
    import json
    import shutil

    from nanoseg.model.training import Backup, cosine_lr

    imgs, masks = _data()
    smoke_params["train"].update(epochs=4, patience=3, lr=1e-3, lr_final_factor=0.1)
    folder = tmp_path / "backup"
    first = []

    def killed_after_epoch_2(metrics, epoch):
        first.append(metrics)
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(imgs, masks, imgs[:1], masks[:1], smoke_params, log=killed_after_epoch_2, backup=Backup(folder, "k1"))
    state = json.loads((folder / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]["loss"]) == 2 and state["key"] == "k1"
    assert (folder / "keras" / "latest.weights.h5").is_file() and (folder / state["early"]["file"]).is_file()
    shutil.copytree(folder, tmp_path / "backup-copy")  # for the other key, below (one fit fewer)

    epochs = []
    backup = Backup(folder, "k1")
    assert backup.state["epoch"] == 2
    model, history, info = fit(imgs, masks, imgs[:1], masks[:1], smoke_params, log=lambda m, e: epochs.append(e),
                               backup=backup)
    assert epochs == [2, 3]  # epochs 3 and 4 (0-based 2, 3): resumed at k + 1
    assert info["epochs_run"] == 4 and len(history["loss"]) == len(history["val_loss"]) == 4
    assert history["loss"][:2] == pytest.approx([m["loss"] for m in first])
    # the schedule carried on: each epoch logs the rate of its last step (2 steps per epoch, 8 in all)
    expected = [cosine_lr(1e-3, (2 * e + 1) / 7, 0.1) for e in range(4)]
    assert history["learning_rate"] == pytest.approx(expected, rel=1e-5)
    assert int(model.optimizer.iterations) == 4 * 2  # optimizer state restored, not restarted
    assert 1 <= info["best_epoch"] <= 4 and not folder.exists()

    shutil.copytree(tmp_path / "backup-copy", folder)  # the backup of the run killed after epoch 2
    assert Backup(folder, "k1").state["epoch"] == 2
    assert Backup(folder, "k2").state is None and not folder.exists()  # other settings: not resumed, removed


def test_time_budget_stop_is_counted_and_warned(smoke_params):
    """A fold stopped by its time budget after fewer steps than train.warn_below_steps gets a warning."""
    from nanoseg.model.training import budget_warning

    imgs, masks = _data()
    smoke_params["train"].update(epochs=5, max_minutes_per_fold=1e-6)  # the budget ends after the first epoch
    _, _, info = fit(imgs, masks, None, None, smoke_params)
    assert info["stopped_for_time"] and info["epochs_run"] == 1 and info["steps_done"] == 2
    warning = budget_warning(info, 300, "fold 2")
    assert warning.startswith("fold 2: the time budget ended training after 2 optimiser steps")
    assert "warn_below_steps = 300" in warning and "max_minutes_per_fold" in warning and "\n" not in warning
    assert budget_warning(info, 2, "fold 2") is None  # enough steps
    assert budget_warning(info, None, "fold 2") is None  # warnings off
    assert budget_warning({**info, "stopped_for_time": False}, 300, "fold 2") is None  # ended by epochs / early stop
