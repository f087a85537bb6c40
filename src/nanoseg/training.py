"""Training one model: the Table I recipe, with a time budget for CPUs.

Adam (lr 1e-4), batch 4, Dice loss, up to 200 epochs with EarlyStopping on
the validation loss (best weights restored) — all from ``params.yaml``
(``train:``). Random augmented crops come from
:func:`nanoseg.dataset.make_train_dataset`; validation runs on the full
validation images. ``train.max_minutes_per_fold`` caps the wall time (the
``cpu`` profile), ``train.steps_per_epoch`` sets how many batches make an epoch,
``train.freeze_encoder`` keeps the ImageNet encoder fixed (only the decoder trains).
Nothing here imports MLflow: per-epoch numbers go to a ``log`` callback.

``model.variant`` decides what is learned: ``paper`` the mask with Dice loss;
``instance`` the targets of ``instance.head`` (:mod:`nanoseg.targets`, derived
from the masks here, at load time) with :class:`nanoseg.losses.InstanceLoss`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from nanoseg.config import resolve
from nanoseg.errors import NanosegError


def _callbacks(keras, patience, max_minutes, log, epoch_offset=0, monitor="val_loss", label="training"):
    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = time.monotonic()
            self.stopped_for_time = False

        def on_epoch_end(self, epoch, logs=None):
            if max_minutes and (time.monotonic() - self.start) / 60.0 >= max_minutes:
                self.stopped_for_time = True
                self.model.stop_training = True

    class NanGuard(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.nan_epoch = None

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.nan_epoch = batch
                self.model.stop_training = True

    class Log(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            if log:
                log(logs, epoch + epoch_offset)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
            print(f"  {label} epoch {epoch + 1}: {shown} ({(time.monotonic() - self.start) / 60:.1f} min)", flush=True)

    cbs = [TimeBudget(), NanGuard(), Log()]
    if patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=int(patience), restore_best_weights=True,
                                                 mode="min", verbose=0))
    return cbs


def build_compiled(params: dict):
    """Build and compile the model from the settings (precision policy set first)."""
    import keras

    from nanoseg.losses import InstanceLoss, dice_coefficient, dice_loss, instance_training_metrics
    from nanoseg.model import build_unet, configure_precision
    from nanoseg.targets import instance_settings

    t, m = params["train"], params["model"]
    variant = m.get("variant", "paper")
    inst = instance_settings(params) if variant == "instance" else None
    configure_precision(t.get("mixed_bf16", "auto"))
    weights = m.get("weights")
    if weights not in (None, "imagenet"):
        weights = str(resolve(params, weights))
    model = build_unet(variant=variant, weights=weights,
                       decoder_filters=tuple(m.get("decoder_filters", (256, 128, 64, 32, 16))),
                       head=inst["head"] if inst else None)
    if t.get("freeze_encoder"):
        # transfer learning: the ImageNet encoder stays fixed (its BatchNorm in inference mode, which also
        # avoids batch-4 statistics); only the decoder trains. ~2x the training throughput on a CPU.
        model.get_layer("encoder").trainable = False
    if inst:  # instance.loss picks the weights in the targets (nanoseg.targets.pixel_weights)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(t["lr"])),
                      loss=InstanceLoss(inst["head"], inst["distance_weight"]),
                      metrics=instance_training_metrics(inst["head"]))
        return model
    if t.get("loss", "dice") != "dice":
        raise NanosegError(f"train.loss = {t.get('loss')!r}: the paper model trains with 'dice'.")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(t["lr"])), loss=dice_loss,
                  metrics=[dice_coefficient])
    return model


def fit(train_images, train_masks, val_images, val_masks, params: dict, log=None, epochs: int | None = None,
        max_minutes: float | None = None, label: str = "fold"):
    """Train one model.

    Parameters
    ----------
    train_images, train_masks : list of arrays
        Training images (H, W) float32 and masks (H, W) bool (the instance
        variant derives its targets from them: :func:`nanoseg.targets.training_targets`).
    val_images, val_masks : list of arrays or None
        Full validation images for early stopping; None trains a fixed number of epochs.
    params : dict
        Settings (``train`` and ``model`` sections are used).
    log : callable(dict, epoch), optional
        Receives per-epoch metrics (loss, dice_coefficient, val_loss, ...).
    epochs, max_minutes : optional
        Override ``train.epochs`` and the time budget.

    Returns
    -------
    model : keras.Model
    history : dict of lists
    info : dict
        ``best_epoch`` (1-based), ``epochs_run``, ``seconds``, ``stopped_for_time``.
    """
    import keras
    import tensorflow as tf

    from nanoseg.dataset import make_train_dataset
    from nanoseg.targets import training_targets

    t = params["train"]
    keras.utils.set_random_seed(int(t.get("seed", 0)))
    targets = [training_targets(m, params) for m in train_masks]
    ds = make_train_dataset(train_images, targets, int(t["crop"]),
                            int(t["batch"]), t.get("augment", {}), int(t.get("seed", 0)))
    steps = t.get("steps_per_epoch") or max(1, math.ceil(sum(im.size for im in train_images)
                                                          / (int(t["crop"]) ** 2 * int(t["batch"]))))
    val = None
    if val_images:
        val_targets = [training_targets(m, params) for m in val_masks]
        val_targets = [v[..., None] if v.ndim == 2 else v for v in val_targets]
        channels = val_targets[0].shape[-1]
        val = tf.data.Dataset.from_generator(
            lambda: ((im[..., None].astype(np.float32), v) for im, v in zip(val_images, val_targets)),
            output_signature=(tf.TensorSpec((None, None, 1), tf.float32),
                              tf.TensorSpec((None, None, channels), tf.float32)),
        ).apply(tf.data.experimental.assert_cardinality(len(val_images))).batch(1)  # known size: no Keras warning
    model = build_compiled(params)
    max_minutes = max_minutes if max_minutes is not None else t.get("max_minutes_per_fold")
    cbs = _callbacks(keras, t.get("patience") if val is not None else None, max_minutes, log,
                     monitor="val_loss", label=label)
    start = time.monotonic()
    hist = model.fit(ds, epochs=int(epochs or t["epochs"]), steps_per_epoch=int(steps), validation_data=val,
                     validation_freq=int(t.get("val_every", 1)), callbacks=cbs, verbose=0)
    seconds = time.monotonic() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    nan_guard = cbs[1]
    if nan_guard.nan_epoch is not None or any(not math.isfinite(v) for v in history.get("loss", [])):
        raise NanosegError(
            f"{label}: the training loss became NaN; training stopped. Lower train.lr (now {t['lr']}) or set "
            "train.mixed_bf16: false in params.yaml, then run again."
        )
    vl = history.get("val_loss")
    best_epoch = int(np.argmin(vl)) + 1 if vl else len(history.get("loss", []))
    return model, history, {"best_epoch": best_epoch, "epochs_run": len(history.get("loss", [])),
                            "seconds": round(seconds, 1), "stopped_for_time": cbs[0].stopped_for_time,
                            "steps_per_epoch": int(steps)}


def save_history_csv(history: dict, path: str | Path) -> Path:
    """Per-epoch curves as CSV (for ``dvc plots``)."""
    import pandas as pd

    df = pd.DataFrame(history)
    df.insert(0, "epoch", np.arange(1, len(df) + 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path
