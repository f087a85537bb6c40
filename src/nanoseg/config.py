"""Settings from ``params.yaml``, with the selected profile applied.

``params.yaml`` is the single source of settings. Its top-level ``profile`` key
names one of ``profiles:``; that profile's values are merged over the base
values (profile wins). Everything else reads settings through :func:`load_params`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from nanoseg.errors import NanosegError


def project_root(start: str | os.PathLike | None = None) -> Path:
    """Return the project root: the nearest folder above ``start`` holding params.yaml.

    A ``dvc exp run --temp`` copy lives under ``<repo>/.dvc/tmp/exps/``; it has its
    own params.yaml, which is the right one for settings (use
    :func:`store_root` for where shared stores such as ``mlruns/`` live).
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def store_root(start: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds the shared stores (``mlruns/``, Optuna db).

    Runs inside a DVC temporary experiment copy (``.dvc/tmp/exps/...``) resolve to
    the original repository, so every run lands in the same MLflow store.
    ``NANOSEG_HOME`` overrides it.
    """
    if os.environ.get("NANOSEG_HOME"):
        return Path(os.environ["NANOSEG_HOME"]).resolve()
    root = project_root(start)
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def merge_params(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(path: str | os.PathLike | None = None, profile: str | None = None) -> dict[str, Any]:
    """Read ``params.yaml`` and apply the selected profile.

    Parameters
    ----------
    path : path-like, optional
        The params file; default ``params.yaml`` in the project root.
    profile : str, optional
        Profile to apply; default the file's ``profile`` key (or ``NANOSEG_PROFILE``).

    Returns
    -------
    dict
        The merged settings; ``params["profile"]`` names the applied profile.
    """
    path = Path(path) if path else project_root() / "params.yaml"
    if not path.is_file():
        raise NanosegError(f"{path}: settings file not found; run nanoseg from the project folder.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise NanosegError(f"{path}: not valid YAML ({exc}); fix the file.") from None
    profiles = raw.pop("profiles", {}) or {}
    name = profile or os.environ.get("NANOSEG_PROFILE") or raw.get("profile", "cpu")
    if name not in profiles:
        raise NanosegError(
            f"{path}: profile {name!r} is not defined; choose one of {sorted(profiles)}."
        )
    params = merge_params(raw, profiles[name])
    params["profile"] = name
    params["_root"] = str(path.resolve().parent)
    return params


def resolve(params: dict, relpath: str | os.PathLike) -> Path:
    """Resolve a path from the settings relative to the project root."""
    p = Path(relpath)
    return p if p.is_absolute() else Path(params.get("_root", ".")) / p
