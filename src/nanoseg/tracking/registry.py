"""The model registry: the registered model ``nanoseg``, its versions, tags and aliases (``@champion``), and
downloading a model by URI (``models:/``, ``runs:/``, any MLflow artifact URI).

How the served model is logged (its code, signature, requirements) is :mod:`nanoseg.serving.pyfunc`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from nanoseg.errors import NanosegError, mask_secrets
from nanoseg.tracking.runs import tracking_uri

REGISTERED_MODEL = "nanoseg"
CHAMPION = "champion"  # the alias of the version to serve


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


def set_version_tags(version: str, tags: dict, name: str = REGISTERED_MODEL) -> None:
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))


def alias_version(alias: str = CHAMPION, name: str = REGISTERED_MODEL):
    """The model version holding ``alias`` (tags included), or None."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(version: str, alias: str = CHAMPION, name: str = REGISTERED_MODEL) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))


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
