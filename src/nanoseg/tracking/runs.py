"""Experiment tracking: the store, runs, their tags, params, metrics and artifacts.

Store: ``mlruns/`` in the project (sqlite backend ``mlruns/mlflow.db``, artifacts
in ``mlruns/artifacts``), resolved to an absolute path so that runs started by
``dvc repro``, ``dvc exp run`` (even in its temporary copy under
``.dvc/tmp/exps``), ``mlflow ui`` and ``mlflow models serve`` all see the same
store. ``MLFLOW_TRACKING_URI`` (or ``tracking.uri`` in params.yaml) points
everything at another store, e.g. an ``mlflow server`` with S3 artifacts.

Every run is tagged with the git commit, the dataset's DVC md5 (from
``data.dvc``) and ``DVC_EXP_NAME`` when set.

Run ``python -m nanoseg.tracking --uri`` to print the tracking URI (password masked; ``--uri --raw``
prints it as is, for ``$(...)`` in commands). Every other message masks it (:func:`nanoseg.errors.mask_secrets`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402
import yaml  # noqa: E402

from nanoseg.config import store_root  # noqa: E402
from nanoseg.errors import NanosegError, mask_secrets  # noqa: E402
from nanoseg.model_store import tracking_uri  # noqa: E402

EXPERIMENT = "nanoseg-bam-tio2"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise NanosegError(
            f"{folder}: the MLflow tracking store is not writable ({exc.strerror}). Fix its permissions, "
            "or point MLFLOW_TRACKING_URI at a writable store (e.g. sqlite:////tmp/mlruns/mlflow.db)."
        ) from None


def setup(experiment: str = EXPERIMENT, params: dict | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        _check_writable(db.parent)
        _check_writable(db.parent / "artifacts")
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
        try:
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            exp_id = mlflow.get_experiment_by_name(experiment).experiment_id  # created concurrently
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def run_tags() -> dict[str, str]:
    """Provenance tags: git commit, dataset md5 from data.dvc, DVC experiment name."""
    root = store_root()
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except OSError:
        pass
    dvcfile = Path.cwd() / "data.dvc"
    if not dvcfile.exists():
        dvcfile = root / "data.dvc"
    if dvcfile.exists():
        outs = (yaml.safe_load(dvcfile.read_text()) or {}).get("outs") or [{}]
        if outs[0].get("md5"):
            tags["data_md5"] = outs[0]["md5"]
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def start_run(name: str, nested: bool = False, tags: dict | None = None, params: dict | None = None,
              run_id: str | None = None):
    """Start (or resume, with ``run_id``) a run with provenance tags and flattened params."""
    with mlflow.start_run(run_name=None if run_id else name, nested=nested, run_id=run_id) as run:
        mlflow.set_tags({**run_tags(), **(tags or {})})
        if params:
            flat = {k: str(v)[:6000] for k, v in _flatten(params).items() if not k.startswith("_")}
            items = list(flat.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))
        yield run


# What people compare runs on, under the same short names in every fold, CV, final and evaluate run, so that
# the MLflow UI's runs table and compare view line them up: the parameters that vary between runs and the
# scores that decide (``val_*`` on validation images, ``test_*`` on the test split; ``ecd_error`` is the
# median relative ECD error of the clean particles). scripts/ui_screenshot.py opens the compare view on them.
COMPARE_PARAMS = ("variant", "head", "lr", "batch", "steps", "cpu")
COMPARE_METRICS = {"dice": "dice", "f1_50_clean": "f1_50_clean", "pq_clean": "pq_clean",
                   "ecd_error": "median_ecd_rel_error_clean"}  # compared name -> key of the scores it is read from


def compare_params(params: dict, cpu: str, steps=None) -> dict:
    """The :data:`COMPARE_PARAMS` of a run (``steps``: the optimiser steps done, when known)."""
    variant = params["model"]["variant"]
    head = params["instance"]["head"] if variant == "instance" else "-"
    out = {"variant": variant, "head": head, "lr": params["train"]["lr"], "batch": params["train"]["batch"],
           "cpu": cpu}
    if steps is not None:
        out["steps"] = int(steps)
    return out


def compare_metrics(scores: dict, prefix: str) -> dict:
    """``{prefix}{name}`` for the :data:`COMPARE_METRICS` found in ``scores`` (a :func:`~nanoseg.evaluation.score`
    result or CV fold means with a ``_mean`` suffix)."""
    out = {}
    for name, key in COMPARE_METRICS.items():
        for k in (key, f"{key}_mean"):
            if isinstance(scores.get(k), (int, float)):
                out[f"{prefix}{name}"] = float(scores[k])
                break
    return out


def log_params(values: dict) -> None:
    """Log parameters on the active run (values as strings; a key logged before keeps its value)."""
    run = mlflow.active_run()
    have = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: str(v)[:6000] for k, v in values.items() if k not in have}  # a resumed run keeps its values
    if fresh:
        mlflow.log_params(fresh)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v is not None and isinstance(v, (int, float))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    p = Path(path)
    if p.is_dir():
        mlflow.log_artifacts(str(p), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(p), artifact_path=artifact_path)


def log_dict(data: dict, name: str) -> None:
    mlflow.log_dict(data, name)


def set_tags(tags: dict) -> None:
    mlflow.set_tags(tags)


def log_to_run(run_id: str, metrics: dict | None = None, artifacts: list | None = None,
               artifact_path: str | None = None) -> None:
    """Log metrics/artifacts to a run that is not the active one (e.g. a finished fold run)."""
    client = mlflow.MlflowClient()
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and v is not None:
            client.log_metric(run_id, k, float(v))
    for a in artifacts or []:
        client.log_artifact(run_id, str(a), artifact_path=artifact_path)


def run_status(run_id: str | None) -> str | None:
    """The run's status (RUNNING, FINISHED, FAILED, KILLED), or None when it does not exist."""
    if not run_id:
        return None
    try:
        return mlflow.get_run(run_id).info.status
    except Exception:
        return None


def end_run(status: str = "FINISHED") -> None:
    """End the active run with ``status`` (FINISHED, FAILED, KILLED)."""
    mlflow.end_run(status)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m nanoseg.tracking")
    p.add_argument("--uri", action="store_true", help="print the tracking URI (password masked)")
    p.add_argument("--raw", action="store_true", help="with --uri: print it as is, for $(...) in commands")
    args = p.parse_args(argv)
    if args.uri:
        uri = tracking_uri()
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        print(uri if args.raw else mask_secrets(uri))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
