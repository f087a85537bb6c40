"""Opening a model for inference: a saved folder or an MLflow model URI, with its settings.

:func:`load_predictor` finds the model (:func:`model_folder`: a folder written by training, or a URI
downloaded through :func:`nanoseg.model_store.download_model`), loads it in the precision that is
fast on this machine and resolves its inference settings (:func:`resolve_settings`: defaults < the
model's ``nanoseg.json`` < the caller's overrides; never a ``params.yaml`` of the working folder).
"""

from __future__ import annotations

import re
from pathlib import Path

from nanoseg.config import PostprocessSettings, PredictSettings
from nanoseg.errors import NanosegError
from nanoseg.inference.predictor import Predictor


#: Settings of a model that carries none of its own: params.yaml's defaults (:mod:`nanoseg.config`).
DEFAULTS = {**PredictSettings().model_dump(), "min_area_nm2": PostprocessSettings().min_area_nm2, "precision": "auto"}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def resolve_settings(metadata: dict, overrides: dict | None = None) -> dict:
    """Inference settings: built-in defaults < the model's metadata < overrides (the command line).

    Nothing comes from a ``params.yaml`` in the working folder: a model runs the same wherever it is
    used (the settings it was validated with travel in its ``nanoseg.json``, ``tta`` included: a model
    whose decoder was tuned on 8-view TTA maps runs with TTA unless told ``tta=False``).

    Returns a dict with ``tile, overlap, batch, tta, precision, threshold`` and
    ``postprocess`` (``opening_radius, min_area_nm2, split, min_distance_px``).
    Overrides that are None are ignored.
    """
    from nanoseg.postprocess.decode import DEFAULT_POST

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(DEFAULTS) - {"postprocess"}
    if unknown:
        raise TypeError(f"unknown predictor settings {sorted(unknown)}; use some of {sorted(DEFAULTS)} or postprocess")
    settings = dict(DEFAULTS)
    settings.update({k: metadata[k] for k in ("tile", "overlap", "threshold", "tta") if metadata.get(k) is not None})
    post = {**DEFAULT_POST, "min_area_nm2": settings.pop("min_area_nm2"), **(metadata.get("postprocess") or {})}
    if "min_area_nm2" in overrides:
        post["min_area_nm2"] = overrides.pop("min_area_nm2")
    post.update(overrides.pop("postprocess", {}))
    settings.update(overrides)
    settings["postprocess"] = post
    settings["threshold"] = float(settings["threshold"])
    settings["tta"] = bool(settings["tta"])
    return settings


def model_folder(model_ref) -> Path:
    """The local folder of a model: ``model_ref`` itself, or the download of an MLflow URI."""
    ref = str(model_ref)
    if _URI.match(ref):
        try:
            from nanoseg.model_store import download_model
        except ImportError as exc:
            raise NanosegError(f"{ref}: MLflow model URIs need MLflow ({exc}); "
                               "pass a saved model folder instead.") from None
        return Path(download_model(ref))
    folder = Path(ref)
    if not folder.exists():
        raise NanosegError(
            f"{ref}: no such model folder or MLflow URI; pass --model with a folder written by training "
            "(e.g. models/final after `dvc repro`) or a URI such as models:/nanoseg@champion or runs:/<id>/model."
        )
    return folder


def load_predictor(model_ref, **overrides):
    """Open a model for inference.

    Parameters
    ----------
    model_ref : str or Path
        A folder written by :func:`nanoseg.model.network.save_model`, or an MLflow URI
        (``models:/nanoseg@champion``, ``runs:/<id>/model``, ...), downloaded
        with :func:`nanoseg.model_store.download_model`.
    **overrides
        ``tile, overlap, batch, tta, threshold, min_area_nm2, postprocess,
        precision`` ("auto": run the model in the policy that is fast on this
        machine, see :func:`nanoseg.model.precision.configure_precision`; "keep": as saved).

    Returns
    -------
    predictor : Predictor
    metadata : dict
        The model's ``nanoseg.json`` updated with the resolved settings
        (see :func:`resolve_settings`), ``model_ref`` and ``model_folder``.
    """
    from nanoseg.model.network import load_model
    from nanoseg.model.precision import preferred_policy, with_policy

    folder = model_folder(model_ref)
    model, meta = load_model(folder)
    settings = resolve_settings(meta, overrides)
    if settings["precision"] != "keep":
        model = with_policy(model, preferred_policy(settings["precision"]))
    predictor = Predictor(model, tile=settings["tile"], overlap=settings["overlap"], batch=settings["batch"],
                          tta=settings["tta"])
    return predictor, {**meta, **settings, "model_ref": str(model_ref), "model_folder": str(folder)}
