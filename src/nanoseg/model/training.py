"""Training one model: the Table I recipe, with a time budget for CPUs.

Adam (lr 1e-4), batch 4, Dice loss, up to 200 epochs with EarlyStopping on
the validation loss (best weights restored) — all from ``params.yaml``
(``train:``). Random augmented crops come from
:func:`nanoseg.model.input_pipeline.make_train_dataset`; validation runs on the full
validation images. ``train.max_minutes_per_fold`` caps the wall time (the
``cpu`` profile), ``train.steps_per_epoch`` sets how many batches make an epoch,
``train.freeze_encoder`` keeps the ImageNet encoder fixed (only the decoder trains).
Nothing here imports MLflow: per-epoch numbers go to a ``log`` callback.

``model.variant`` decides what is learned: ``paper`` the mask with Dice loss;
``instance`` the targets of ``instance.head`` (:mod:`nanoseg.model.targets`, derived
from the masks here, at load time) with :class:`nanoseg.model.losses.InstanceLoss`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from nanoseg.atomic import write_with
from nanoseg.config import resolve
from nanoseg.errors import NanosegError
from nanoseg.machine import cpu_model


def cosine_lr(lr0: float, progress: float, final_factor: float = 0.05) -> float:
    """Cosine decay from ``lr0`` at progress 0 to ``lr0 * final_factor`` at progress 1 (clipped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return float(lr0) * (final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * p)))


def _callbacks(keras, patience, max_minutes, log, epoch_offset=0, monitor="val_loss", label="training",
               lr0=None, total_steps=None, final_factor=0.05, steps_per_epoch=None, backup=None):
    """The training callbacks. With ``backup`` (a :class:`Backup`), training resumes after its last
    finished epoch: Keras' BackupAndRestore restores the weights, optimizer and epoch, and the state
    of the callbacks here (wall time, steps, early stopping and its best weights, the curves so far)
    comes back from the backup's own record."""
    state = backup.state if backup is not None else None
    elapsed0 = float(state["elapsed"]) if state else 0.0

    class Clock:
        """Training wall time, counting the time before an interruption."""
        start = time.monotonic() - elapsed0

        @classmethod
        def minutes(cls) -> float:
            return (time.monotonic() - cls.start) / 60.0

    class CosineSchedule(keras.callbacks.Callback):
        """Learning rate by training progress: the larger of steps done / planned steps and wall time /
        time budget, so a run stopped by its time budget has decayed to the end whatever the CPU's speed."""

        def __init__(self):
            super().__init__()
            self.step = int(state["epoch"]) * int(steps_per_epoch) if state and steps_per_epoch else 0
            self.lr = lr0

        def progress(self) -> float:
            by_steps = self.step / max(1, total_steps - 1) if total_steps else 0.0  # last step at the end value
            by_time = Clock.minutes() / max_minutes if max_minutes else 0.0
            return max(by_steps, by_time)

        def on_train_batch_begin(self, batch, logs=None):
            self.lr = cosine_lr(lr0, self.progress(), final_factor)
            self.model.optimizer.learning_rate.assign(self.lr)
            self.step += 1

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(self.lr)
                logs["progress"] = float(min(self.progress(), 1.0))
            if self.progress() >= 1.0:  # the schedule has reached its end: stop here (decayed, never mid-way)
                self.model.stop_training = True

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stopped_for_time = False

        def on_epoch_end(self, epoch, logs=None):
            if max_minutes and Clock.minutes() >= max_minutes:
                self.stopped_for_time = True
                self.model.stop_training = True

    class EarlyStopping(keras.callbacks.EarlyStopping):
        """Keras' EarlyStopping, its counters and best weights carried over an interruption."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state and state.get("early"):
                early = state["early"]
                self.wait, self.best_epoch = int(early["wait"]), int(early["best_epoch"])
                self.best = None if early["best"] is None else float(early["best"])
                self.best_weights = backup.best_weights()

    class Record(keras.callbacks.Callback):
        """The per-epoch curves, one value per training epoch (nan where a metric was not computed:
        validation every ``val_every`` epochs), those before an interruption included; written to the
        backup after each epoch, before BackupAndRestore saves the weights."""

        def __init__(self, early):
            super().__init__()
            self.early = early
            self.history = {k: list(v) for k, v in (state or {}).get("history", {}).items()}

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            for k in set(self.history) | set(logs):  # nan where a value is missing (validation every n epochs)
                self.history.setdefault(k, [float("nan")] * epoch).append(float(logs.get(k, float("nan"))))
            early = None
            if self.early is not None and self.early.best_weights is not None:
                early = {"wait": self.early.wait, "best_epoch": self.early.best_epoch,
                         "best": None if self.early.best is None else float(self.early.best)}
            if backup is not None:
                backup.record(epoch + 1, Clock.minutes() * 60.0, self.history, early,
                              self.early.best_weights if early else None)

    class Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            if log:
                log(logs, epoch + epoch_offset)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if k not in ("learning_rate", "progress"))
            shown += f", lr {logs['learning_rate']:.2e}" if "learning_rate" in logs else ""
            print(f"  {label} epoch {epoch + 1}: {shown} ({Clock.minutes():.1f} min)", flush=True)

    budget = TimeBudget()
    cbs = [keras.callbacks.TerminateOnNaN()]
    if lr0 is not None:
        cbs.append(CosineSchedule())
    cbs.append(budget)  # after the schedule, which may stop on the same clock: the stop is then still counted
    early = None
    if patience:
        early = EarlyStopping(monitor=monitor, patience=int(patience), restore_best_weights=True, mode="min",
                              verbose=0)
        cbs.append(early)
    record = Record(early)
    cbs.append(record)  # after early stopping (its state is recorded), before the log (it may fail)
    if backup is not None:
        cbs.append(keras.callbacks.BackupAndRestore(str(backup.keras_dir)))
    cbs.append(Log())
    return cbs, budget, record


class Backup:
    """What a training run leaves to resume from after an interruption, in ``folder``.

    ``folder/keras``: Keras' ``BackupAndRestore`` (weights, optimizer state, epoch, written after every
    epoch); ``folder/state.json``: the rest (epochs done, training seconds, the curves so far, early
    stopping's counters, ``key``: what the run trains) with early stopping's best weights
    (``best_<epoch>.npz``). A record of another ``key`` (other settings, data or code), or one that does
    not match Keras' backup (interrupted between the two writes), is discarded: training starts over.
    ``fit`` removes the folder once training has ended (also on a NaN loss).
    """

    def __init__(self, folder, key: str = "", extra: dict | None = None):
        self.folder = Path(folder)
        self.keras_dir = self.folder / "keras"
        self.key, self.extra = str(key), dict(extra or {})
        self.state = self._load()

    def _load(self) -> dict | None:
        import json

        f = self.folder / "state.json"
        try:
            state = json.loads(f.read_text())
            keras_epoch = json.loads((self.keras_dir / "training_metadata.json").read_text())["epoch"]
            ok = (state.get("key") == self.key and int(state["epoch"]) == int(keras_epoch) > 0
                  and (state.get("early") is None or (self.folder / state["early"]["file"]).is_file()))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            return state
        self.remove()
        return None

    def best_weights(self) -> list | None:
        if not self.state or not self.state.get("early"):
            return None
        with np.load(self.folder / self.state["early"]["file"]) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]

    def record(self, epoch: int, seconds: float, history: dict, early: dict | None, best_weights) -> None:
        from nanoseg.atomic import write_json

        self.folder.mkdir(parents=True, exist_ok=True)
        old = {p.name for p in self.folder.glob("best_*.npz")}
        if early is not None:
            early["file"] = f"best_{early['best_epoch'] + 1}.npz"
            if early["file"] not in old:
                write_with(self.folder / early["file"], lambda tmp: np.savez(tmp, *best_weights))
        write_json(self.folder / "state.json", {"key": self.key, **self.extra, "epoch": int(epoch),
                                                "elapsed": float(seconds), "history": history, "early": early})
        for name in old - {early["file"] if early else None}:
            (self.folder / name).unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the backup (training has ended)."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self) -> None:
        """Delete the backup and forget its state: the next ``fit`` starts over."""
        self.remove()
        self.state = None


def build_compiled(params: dict):
    """Build and compile the model from the settings (precision policy set first)."""
    import keras

    from nanoseg.model.losses import InstanceLoss, dice_coefficient, dice_loss, instance_training_metrics
    from nanoseg.model.network import build_unet
    from nanoseg.model.precision import configure_precision
    from nanoseg.model.targets import instance_settings

    t, m = params["train"], params["model"]
    variant = m["variant"]
    inst = instance_settings(params) if variant == "instance" else None
    configure_precision(t["mixed_bf16"])
    weights = m["weights"]
    if weights not in (None, "imagenet"):
        weights = str(resolve(params, weights))
    model = build_unet(variant=variant, weights=weights,
                       decoder_filters=tuple(m["decoder_filters"]),
                       head=inst["head"] if inst else None)
    if t["freeze_encoder"]:
        # transfer learning: the ImageNet encoder stays fixed (its BatchNorm in inference mode, which also
        # avoids batch-4 statistics); only the decoder trains. ~2x the training throughput on a CPU.
        model.get_layer("encoder").trainable = False
    if inst:  # instance.loss picks the weights in the targets (nanoseg.model.targets.pixel_weights)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(t["lr"])),
                      loss=InstanceLoss(inst["head"], inst["distance_weight"], inst["hv_weight"]),
                      metrics=instance_training_metrics(inst["head"]))
        return model
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(t["lr"])), loss=dice_loss,
                  metrics=[dice_coefficient])
    return model


def fit(train_images, train_masks, val_images, val_masks, params: dict, log=None, epochs: int | None = None,
        max_minutes: float | None = None, label: str = "fold", backup: Backup | None = None):
    """Train one model.

    Parameters
    ----------
    train_images, train_masks : list of arrays
        Training images (H, W) float32 and masks (H, W) bool (the instance
        variant derives its targets from them: :func:`nanoseg.model.targets.training_targets`).
    val_images, val_masks : list of arrays or None
        Full validation images for early stopping; None trains a fixed number of epochs.
    params : dict
        Settings (``train`` and ``model`` sections are used).
    log : callable(dict, epoch), optional
        Receives per-epoch metrics (loss, dice_coefficient, val_loss, ...).
    epochs, max_minutes : optional
        Override ``train.epochs`` and the time budget.
    backup : Backup, optional
        Where training is backed up after every epoch: a run interrupted after epoch k (killed,
        Ctrl+C, power cut) resumes at epoch k + 1 when ``fit`` is called again with the same backup
        folder and key (weights, optimizer, learning-rate schedule, time budget, early stopping and
        the curves so far carried over; the random crops start a new sequence). Removed when
        training ends.

    Returns
    -------
    model : keras.Model
    history : dict of lists
    info : dict
        ``best_epoch`` (1-based), ``epochs_run``, ``seconds``, ``stopped_for_time``.
    """
    import keras
    import tensorflow as tf

    from nanoseg.model.input_pipeline import make_train_dataset
    from nanoseg.model.targets import VECTORS, instance_settings, training_targets, zoom_targets

    t = params["train"]
    keras.utils.set_random_seed(int(t["seed"]))
    targets = [training_targets(m, params) for m in train_masks]
    ds = make_train_dataset(train_images, targets, int(t["crop"]),
                            int(t["batch"]), t["augment"], int(t["seed"]), masks=train_masks,
                            zoom_target=lambda m, shape: zoom_targets(m, shape, params),
                            vectors=VECTORS.get(instance_settings(params)["head"])
                            if params["model"]["variant"] == "instance" else None)
    steps = t["steps_per_epoch"] or max(1, math.ceil(sum(im.size for im in train_images)
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
    max_minutes = max_minutes if max_minutes is not None else t["max_minutes_per_fold"]
    n_epochs, val_every = int(epochs or t["epochs"]), int(t["val_every"])
    final_factor = float(t["lr_final_factor"])
    if not 0 < final_factor <= 0.1:
        raise NanosegError(f"train.lr_final_factor = {final_factor}: the learning rate must decay to at most 1/10 "
                           "of train.lr by the end of training; use a value in (0, 0.1] in params.yaml.")
    cbs, budget, record = _callbacks(keras, t["patience"] if val is not None else None, max_minutes, log,
                                     monitor="val_loss", label=label, lr0=float(t["lr"]),
                                     total_steps=n_epochs * int(steps), final_factor=final_factor,
                                     steps_per_epoch=int(steps), backup=backup)
    start = time.monotonic()
    if backup is not None and backup.state:
        print(f"  {label}: resuming after epoch {backup.state['epoch']} (interrupted run, backup "
              f"{backup.folder})", flush=True)
        start -= float(backup.state["elapsed"])
    model.fit(ds, epochs=n_epochs, steps_per_epoch=int(steps), validation_data=val,
              validation_freq=val_every, callbacks=cbs, verbose=0, shuffle=False)  # tf.data shuffles
    seconds = time.monotonic() - start
    if backup is not None:  # training has ended (the epochs, the budget, early stopping or a NaN loss)
        backup.remove()
    history = record.history  # one value per training epoch, nan where validation did not run
    if any(not math.isfinite(v) for v in history.get("loss", [])):  # TerminateOnNaN stopped it
        raise NanosegError(
            f"{label}: the training loss became NaN; training stopped. Lower train.lr (now {t['lr']}) or set "
            "train.mixed_bf16: false in params.yaml, then run again."
        )
    epochs_run = len(history.get("loss", []))
    best_epoch = best_epoch_of(history.get("val_loss"), epochs_run)
    return model, history, {"best_epoch": best_epoch, "epochs_run": epochs_run,
                            "seconds": round(seconds, 1), "stopped_for_time": budget.stopped_for_time,
                            "steps_per_epoch": int(steps), "steps_done": epochs_run * int(steps),
                            "lr_final": history.get("learning_rate", [float(t["lr"])])[-1],
                            "restored_best": val is not None and bool(t["patience"]), "cpu": cpu_model()}


def budget_warning(info: dict, min_steps, label: str) -> str | None:
    """A one-paragraph warning when training ended on its time budget after fewer than ``min_steps``
    optimiser steps (``train.warn_below_steps``; None: never), else None.

    A wall-clock budget gives a slower CPU fewer steps: the model is then under-trained on this machine,
    and scores below results obtained with more steps, with nothing else to say so.
    """
    if not min_steps or not info.get("stopped_for_time") or int(info["steps_done"]) >= int(min_steps):
        return None
    per_step = float(info["seconds"]) / max(1, int(info["steps_done"]))
    return (f"{label}: the time budget ended training after {info['steps_done']} optimiser steps "
            f"({per_step:.1f} s per step on {info.get('cpu', 'this CPU')}), fewer than train.warn_below_steps = "
            f"{min_steps}. The model is under-trained on this machine and will score below results trained "
            "with more steps (the README's cpu-profile results had 425-500 per fold). Give it more time "
            "(e.g. dvc exp run -S train.max_minutes_per_fold=40 -S train.final_max_minutes=60) or a budget in "
            "steps (train.epochs with train.max_minutes_per_fold: null).")


def best_epoch_of(val_loss, epochs_run: int) -> int:
    """The 1-based training epoch of the lowest validation loss.

    ``val_loss`` is aligned to the training epochs (nan on epochs without validation: Keras
    validates after epochs ``val_every, 2 * val_every, ...``). Without validation: the last epoch.
    """
    vals = np.asarray(val_loss if val_loss else [], dtype=float)
    if not np.isfinite(vals).any():
        return epochs_run
    return int(np.nanargmin(vals)) + 1


def save_history_csv(history: dict, path: str | Path) -> Path:
    """Per-epoch curves as CSV (for ``dvc plots``)."""
    import pandas as pd

    df = pd.DataFrame(history)
    df.insert(0, "epoch", np.arange(1, len(df) + 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_with(path, lambda tmp: df.to_csv(tmp, index=False))
