"""The MLflow store as a source of models: where it is (:func:`tracking_uri`), the registered model
``nanoseg`` and its alias ``champion``, and reading a model from it by URI (``models:/``, ``runs:/``, any
MLflow artifact URI), with one-line errors that say what to do.

Everything that *reads* models (inference, evaluation, serving) uses this module; writing runs and
registering versions is :mod:`nanoseg.tracking`'s, which builds on it. Store: ``mlruns/`` in the project
(sqlite ``mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``), or ``MLFLOW_TRACKING_URI`` / ``tracking.uri``
in params.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402

from nanoseg.config import store_root  # noqa: E402
from nanoseg.errors import NanosegError, mask_secrets  # noqa: E402

REGISTERED_MODEL = "nanoseg"
CHAMPION = "champion"  # the alias of the version to serve


def store_dir() -> Path:
    return store_root() / "mlruns"


def tracking_uri(params: dict | None = None) -> str:
    """The tracking URI: env ``MLFLOW_TRACKING_URI``, else params ``tracking.uri``, else the project's sqlite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or ((params or {}).get("tracking") or {}).get("uri")
    if uri:
        return uri
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


def download_model(uri: str, dst: str | os.PathLike | None = None) -> Path:
    """Download a model (``runs:/``, ``models:/``, any MLflow artifact URI) and return the folder
    holding its ``nanoseg.json`` and ``model.keras``."""
    setup_uri = tracking_uri()
    mlflow.set_tracking_uri(setup_uri)
    if uri.startswith("models:/"):
        check_model_uri(uri)  # a missing alias or version gets its own message
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None))
    except Exception as exc:  # MlflowException, OSError, ...
        raise NanosegError(
            f"{uri}: no such model in the tracking store {mask_secrets(setup_uri)} "
            f"({mask_secrets(str(exc).splitlines()[0][:200])}). "
            "List models with `mlflow ui` (make ui), or pass a saved model folder."
        ) from None
    hits = sorted(local.rglob("nanoseg.json"))
    if not hits:
        raise NanosegError(f"{uri}: downloaded, but it holds no nanoseg model (no nanoseg.json).")
    return hits[0].parent


def alias_version(alias: str = CHAMPION, name: str = REGISTERED_MODEL):
    """The model version holding ``alias`` (tags included), or None."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def download_pyfunc(uri: str, dst: Path) -> Path:
    mlflow.set_tracking_uri(tracking_uri())
    if uri.startswith("models:/"):
        check_model_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:  # MlflowException, OSError, ...
        raise NanosegError(f"{uri}: cannot download the model from {mask_secrets(tracking_uri())} "
                           f"({mask_secrets(str(exc).splitlines()[0][:200])}); check the URI.") from None
    if not (local / "MLmodel").is_file():
        raise NanosegError(f"{uri}: not an MLflow model (no MLmodel file); pass a model URI or a saved model folder.")
    return local


def check_model_uri(uri: str) -> None:
    """Raise NanosegError unless a ``models:/name@alias`` or ``models:/name/version`` URI resolves."""
    mlflow.set_tracking_uri(tracking_uri())
    body = uri[len("models:/"):]
    name, _, ref = body.partition("@") if "@" in body else body.partition("/")
    client = mlflow.MlflowClient()
    if "@" in body:
        try:
            versions = client.search_model_versions(f"name='{name}'")
        except mlflow.exceptions.MlflowException:
            versions = []
        try:
            client.get_model_version_by_alias(name, ref)
            return
        except mlflow.exceptions.MlflowException:
            if versions:
                failed = sorted(int(v.version) for v in versions if (v.tags or {}).get("validation") == "failed")
                raise NanosegError(
                    f"{uri}: the registered model {name!r} has {len(versions)} version(s) but none holds the alias "
                    f"{ref!r}" + (f" (version(s) {', '.join(map(str, failed))} failed the publish gate: see their "
                                  "tag validation_reasons or reports/publish.json)" if failed else "")
                    + f". Pass --model models:/{name}/<version> to use a version anyway, or a saved model folder."
                ) from None
    try:
        if "@" in body:
            client.get_model_version_by_alias(name, ref)
        elif ref.isdigit():
            client.get_model_version(name, ref)
        else:
            client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        raise NanosegError(
            f"{uri}: not found in the model registry of {mask_secrets(tracking_uri())} "
            f"({mask_secrets(str(exc).splitlines()[0][:200])}). "
            "Publish a model first (`dvc repro publish`), or pass --model with a saved model folder."
        ) from None
