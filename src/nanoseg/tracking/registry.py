"""The model registry, written: tags and aliases of the registered model ``nanoseg``'s versions.

Reading models by URI (``models:/nanoseg@champion``, ``runs:/...``), the registered name and the alias are
:mod:`nanoseg.model_store`'s; how the served model is logged (its code, signature,
requirements) is :mod:`nanoseg.serving.pyfunc`'s.
"""

from __future__ import annotations

import mlflow

from nanoseg.model_store import CHAMPION, REGISTERED_MODEL


def set_version_tags(version: str, tags: dict, name: str = REGISTERED_MODEL) -> None:
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))


def set_alias(version: str, alias: str = CHAMPION, name: str = REGISTERED_MODEL) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))
