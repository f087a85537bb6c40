"""Scoring a model on the held-out test images (:func:`nanoseg.data.heldout.load_test`) exactly as users get it.

:func:`score_model` opens a model folder through :func:`nanoseg.inference.loading.load_predictor` — the same
settings, threshold and post-processing that ``nanoseg predict`` and the server use, taken from the model's own metadata — and scores it with
:func:`nanoseg.evaluation.scoring.score`. ``evaluate`` scores the candidate and the current champion this
way; ``publish`` and the benchmarks reuse it.
"""

from __future__ import annotations

import time

import numpy as np

from nanoseg.data.heldout import HeldOut


def score_model(folder, test: HeldOut, batch: int | None = None, scale="auto", polarity="auto",
                clean_min_px: int | None = None, tta: bool | None = None) -> dict:
    """Score the model in ``folder`` on ``test`` with its own settings (as ``nanoseg predict`` runs it).

    ``scale`` and ``polarity`` are ``nanoseg predict``'s ``--scale`` and ``--polarity`` (default auto);
    ``clean_min_px`` the smallest ``clean`` instance (:func:`nanoseg.evaluation.scoring.score`);
    ``tta`` ``nanoseg predict --tta`` (None: the model's default, no TTA).

    Returns
    -------
    dict
        ``scores`` (pixel, instance and size metrics: :func:`nanoseg.evaluation.scoring.score`), ``segs``
        (mask, labels per image), ``settings`` (what the model ran with), ``meta`` (its nanoseg.json),
        ``seconds_per_image`` (probability map + decoding), ``probs`` (foreground probability per image).
    """
    from nanoseg.evaluation.scoring import score
    from nanoseg.inference.analyze import infer
    from nanoseg.inference.loading import load_predictor

    predictor, settings = load_predictor(str(folder), batch=batch, tta=tta)
    threshold, post = settings["threshold"], settings["postprocess"]
    start = time.perf_counter()
    probs, segs = [], []
    for im, px in zip(test.images, test.pixel_sizes):
        res = infer(predictor, settings, im, px, scale=scale, polarity=polarity)  # nanoseg predict's path: polarity, scale, decoding
        probs.append(res["prob"])
        segs.append((res["labels"] > 0, res["labels"]))
    seconds = (time.perf_counter() - start) / max(1, len(test.images))
    scores = score(test.masks, probs, [lab for _, lab in segs], test.pixel_sizes, test.class_masks,
                   threshold=threshold, clean_min_px=clean_min_px)
    meta = {k: v for k, v in settings.items() if k not in ("model_folder",)}
    return {"scores": scores, "segs": segs, "settings": {"threshold": threshold, "postprocess": post,
                                                          "tile": settings["tile"], "overlap": settings["overlap"]},
            "meta": meta, "seconds_per_image": round(seconds, 2), "probs": probs}


def numeric(scores: dict) -> dict:
    """The numeric entries of a scores dict (what goes to JSON files, tags and MLflow metrics)."""
    return {k: float(v) for k, v in scores.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def model_fingerprint(folder) -> str:
    """sha256 (16 hex) of a model folder's ``nanoseg.json`` and ``model.keras``: ties scores to the exact files."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for name in ("nanoseg.json", "model.keras"):
        with open(Path(folder) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def split_fingerprint(split: dict) -> str:
    """sha256 (16 hex) of the train/test split and folds: two models compare only on the same split."""
    import hashlib
    import json

    blob = json.dumps({k: split.get(k) for k in ("train", "test", "folds")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def score_champion(params: dict, test: HeldOut, batch=None) -> dict | None:
    """The current champion (``@champion`` of the registered model ``nanoseg`` in MLflow), downloaded and
    scored on ``test`` like any candidate: its version, tags and scores (None when there is no champion)."""
    import tempfile

    import mlflow

    from nanoseg import model_store

    name, alias = model_store.REGISTERED_MODEL, model_store.CHAMPION
    mlflow.set_tracking_uri(model_store.tracking_uri(params))
    current = model_store.alias_version(alias, name)
    if current is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_store.download_model(f"models:/{name}/{current.version}", tmp)
        res = score_model(folder, test, batch=batch)
    return {"version": str(current.version), "uri": f"models:/{name}/{current.version}",
            "tags": dict(current.tags or {}), "scores": numeric(res["scores"]), "settings": res["settings"],
            "seconds_per_image": res["seconds_per_image"]}
