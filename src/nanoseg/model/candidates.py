"""The models ``publish`` may register, built from one cross-validation.

Three candidates, each with weights selected on data it was not trained on and with its own
threshold and post-processing (issue: publish only what was validated):

* ``ensemble`` — the k fold models as one Keras model that averages their probability maps
  (nnU-Net's default); threshold and decoder settings chosen on the pooled out-of-fold
  predictions (``metrics/cv.json``). When the members' encoders are identical (the ``cpu``
  profile freezes the ImageNet encoder) the encoder runs once and only the decoders are
  repeated. The per-member outputs stay reachable (layers ``m<i>_probability``): their
  spread is an uncertainty map (:meth:`nanoseg.inference.predictor.Predictor.probability_with_spread`).
* ``best_fold`` — the fold model with the best validation clean F1@0.5, with the threshold and
  post-processing tuned on its own validation images (``per_fold_own`` in ``metrics/cv.json``).
* ``final`` — one model trained on the training images less a validation subset, best weights
  restored by early stopping, threshold and post-processing tuned on that subset
  (:mod:`nanoseg.pipeline.stages.train`).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np

from nanoseg.atomic import copy_file, write_json
from nanoseg.config import TrainSettings
from nanoseg.errors import NanosegError

CANDIDATES = typing.get_args(TrainSettings.model_fields["candidate"].annotation)  # ensemble, best_fold, final


def fold_model_dirs(cv_dir, folds: int) -> list[Path]:
    """The saved fold models ``cv/fold_<k>/model`` (all must exist)."""
    dirs = [Path(cv_dir) / f"fold_{k}" / "model" for k in range(folds)]
    missing = [str(d) for d in dirs if not (d / "model.keras").is_file()]
    if missing:
        raise NanosegError(f"{', '.join(missing)}: fold model(s) missing; run `dvc repro cv` (it keeps every fold's "
                           "model) before building a candidate.")
    return dirs


def _same_weights(a, b) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb))


def _copy_layer(layer, name):
    """A new layer like ``layer`` (same config and weights) under another name."""
    new = type(layer).from_config({**layer.get_config(), "name": name})
    return new


def _decode(member, i, feats, image):
    """Replay a member U-Net's decoder (layer names from :func:`nanoseg.model.network.build_unet`) on new tensors."""
    x, *skips = feats
    made = []

    def apply(name, inputs):
        src = member.get_layer(name)
        layer = _copy_layer(src, f"m{i}_{name}")
        out = layer(inputs)
        made.append((layer, src))
        return out

    for level, skip in enumerate([*skips, image], start=1):
        x = apply(f"dec{level}_up", x)
        x = apply(f"dec{level}_concat", [x, skip])
        for part in ("a", "b"):
            for kind in ("conv", "bn", "relu"):
                x = apply(f"dec{level}{part}_{kind}", x)
    x = apply("head", x)
    return apply("probability", x), made


def build_ensemble(members):
    """One Keras model averaging the outputs of ``members`` (U-Nets from :func:`nanoseg.model.network.build_unet`).

    Returns
    -------
    model : keras.Model
        Input (N, H, W, 1), output the mean of the members' outputs (layer ``ensemble_mean``);
        member ``i``'s output is layer ``m<i>_probability``.
    shared_encoder : bool
        Whether the members' encoders were identical and run once.
    """
    import keras
    from keras import layers

    if len(members) < 2:
        raise NanosegError(f"an ensemble needs at least 2 fold models, got {len(members)}.")
    encoders = [m.get_layer("encoder") for m in members]
    shared = all(_same_weights(encoders[0], e) for e in encoders[1:])
    image = keras.Input(shape=(None, None, 1), name="image")
    x = members[0].get_layer("gray_to_rgb")([image, image, image])
    x = members[0].get_layer("preprocess")(x)
    outs, made = [], []
    if shared:
        feats = keras.Model(encoders[0].inputs, encoders[0].outputs, name="encoder")(x)
    for i, member in enumerate(members):
        if not shared:
            feats = keras.Model(encoders[i].inputs, encoders[i].outputs, name=f"m{i}_encoder")(x)
        out, layers_made = _decode(member, i, feats, image)
        outs.append(out)
        made += layers_made
    mean = layers.Average(name="ensemble_mean", dtype="float32")(outs)
    model = keras.Model(image, mean, name=f"nanoseg_ensemble_{len(members)}")
    for layer, src in made:  # built by the calls above: now copy the trained weights
        layer.set_weights(src.get_weights())
    return model, shared


def member_outputs(model) -> list:
    """The per-member output tensors of an ensemble built by :func:`build_ensemble` (empty for one model)."""
    out, i = [], 0
    names = {layer.name for layer in model.layers}
    while f"m{i}_probability" in names:
        out.append(model.get_layer(f"m{i}_probability").output)
        i += 1
    return out


def make_ensemble(cv_dir, cv: dict, out, extra_meta: dict | None = None) -> tuple[Path, dict]:
    """Build the ``ensemble`` candidate from the fold models and save it to ``out``."""
    from nanoseg.model.network import load_model, save_model

    dirs = fold_model_dirs(cv_dir, int(cv["folds"]))
    loaded = [load_model(d) for d in dirs]
    model, shared = build_ensemble([m for m, _ in loaded])
    first = loaded[0][1]
    meta = {k: first[k] for k in ("variant", "profile", "tile", "overlap", "crop", "instance", "training_scale")
            if k in first}
    meta.update({"candidate": "ensemble", "threshold": cv["threshold"], "postprocess": cv["postprocess"],
                 "tta": bool(cv.get("tta")),  # tuned on TTA maps: runs with TTA
                 "ensemble": {"members": len(dirs), "shared_encoder": shared,
                              "member_runs": [m.get("mlflow_run_id") for _, m in loaded],
                              "member_best_epochs": [m.get("best_epoch") for _, m in loaded]},
                 "tuned_on": "pooled out-of-fold validation predictions of the CV"})
    meta.update(extra_meta or {})
    return save_model(model, out, meta), meta


def best_fold(cv: dict, rank_by: str = "f1_50_clean") -> int:
    """The fold whose model scored best on its own validation images (own threshold and post-processing)."""
    own = cv.get("per_fold_own") or {}
    if not own:
        raise NanosegError("metrics/cv.json has no per-fold scores (per_fold_own); run `dvc repro cv` again.")
    vals = {int(k): v["scores"].get(rank_by, float("nan")) for k, v in own.items()}
    return max(vals, key=lambda k: -np.inf if not np.isfinite(vals[k]) else vals[k])


def make_best_fold(cv_dir, cv: dict, out, extra_meta: dict | None = None) -> tuple[Path, dict]:
    """Copy the best fold's model to ``out`` with its own threshold and post-processing."""
    k = best_fold(cv)
    src = fold_model_dirs(cv_dir, int(cv["folds"]))[k]
    own = cv["per_fold_own"][str(k)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    copy_file(src / "model.keras", out / "model.keras")
    meta = json.loads((src / "nanoseg.json").read_text())
    meta.update({"candidate": "best_fold", "fold": k, "threshold": own["threshold"], "tta": bool(cv.get("tta")),
                 "postprocess": own["postprocess"], "tuned_on": f"the validation images of fold {k}"})
    meta.update(extra_meta or {})
    write_json(out / "nanoseg.json", meta, default=str)
    return out, meta
