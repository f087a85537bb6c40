"""Experiment tracking: the one module that imports MLflow.

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
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402
import yaml  # noqa: E402

from nanoseg.config import store_root  # noqa: E402
from nanoseg.errors import NanosegError, mask_secrets  # noqa: E402

EXPERIMENT = "nanoseg-bam-tio2"


def store_dir() -> Path:
    return store_root() / "mlruns"


def tracking_uri(params: dict | None = None) -> str:
    """The tracking URI: env ``MLFLOW_TRACKING_URI``, else params ``tracking.uri``, else the project's sqlite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or ((params or {}).get("tracking") or {}).get("uri")
    if uri:
        return uri
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


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
COMPARE_METRICS = ("dice", "f1_50_clean", "pq_clean", "ecd_error")


def compare_params(params: dict, cpu: str, steps=None) -> dict:
    """The :data:`COMPARE_PARAMS` of a run (``steps``: the optimiser steps done, when known)."""
    variant = params["model"].get("variant", "paper")
    head = (params.get("instance") or {}).get("head", "classes3") if variant == "instance" else "-"
    out = {"variant": variant, "head": head, "lr": params["train"]["lr"], "batch": params["train"]["batch"],
           "cpu": cpu}
    if steps is not None:
        out["steps"] = int(steps)
    return out


def compare_metrics(scores: dict, prefix: str) -> dict:
    """``{prefix}{name}`` for the :data:`COMPARE_METRICS` found in ``scores`` (a :func:`~nanoseg.evaluation.score`
    result or CV fold means with a ``_mean`` suffix)."""
    source = {"dice": "dice", "f1_50_clean": "f1_50_clean", "pq_clean": "pq_clean",
              "ecd_error": "median_ecd_rel_error_clean"}
    out = {}
    for name, key in source.items():
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


def find_run(experiment_id: str, filter_string: str) -> str | None:
    """Id of the newest finished run matching ``filter_string`` (MLflow search syntax), or None."""
    runs = mlflow.search_runs([experiment_id], filter_string=filter_string, order_by=["start_time DESC"],
                              max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


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


# ============================================================================ registry and pyfunc model
# The served model: a thin mlflow.pyfunc wrapper (nanoseg.pyfunc) around nanoseg.serving.Service, logged as
# code (nanoseg/served_model.py, MLflow "models from code"), registered as "nanoseg"; the alias "champion"
# marks the version to serve.

REGISTERED_MODEL = "nanoseg"
CHAMPION = "champion"
MODEL_ARTIFACT = "nanoseg_model"
MODEL_CODE = Path(__file__).with_name("served_model.py")


def __getattr__(name):
    """``nanoseg.tracking.NanosegPyfunc``: versions registered before models from code hold a pickle that
    names the pyfunc class here (``nanoseg serve`` never unpickles them: :func:`servable_model`)."""
    if name == "NanosegPyfunc":
        from nanoseg.pyfunc import NanosegPyfunc

        return NanosegPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def end_run(status: str = "FINISHED") -> None:
    """End the active run with ``status`` (FINISHED, FAILED, KILLED)."""
    mlflow.end_run(status)


def pyfunc_signature():
    """The served model's signature (see :mod:`nanoseg.payload` for the meaning of each field)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    from nanoseg.measure import table_columns
    from nanoseg.payload import SUMMARY_FIELDS

    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "name", required=False),
                     ColSpec("double", "pixel_size_nm", required=False),
                     ColSpec("double", "databar_row", required=False)])  # a whole number; double allows null
    kinds = {"image": "string", "id": "long", "area_px": "long", "touches_border": "boolean",
             "touches_databar": "boolean", "measurable": "boolean"}
    columns = dict.fromkeys(table_columns("nm") + table_columns("px"))
    particle = Object([Property(c, kinds.get(c, "double"), required=False) for c in columns])
    summary = Object([Property(k, v, required=False) for k, v in SUMMARY_FIELDS.items()])
    outputs = Schema([ColSpec("string", "name"), ColSpec("long", "width"), ColSpec("long", "height"),
                      ColSpec("double", "pixel_size_nm", required=False), ColSpec("string", "pixel_size_source"),
                      ColSpec("string", "unit"), ColSpec("long", "databar_row"), ColSpec("double", "threshold"),
                      ColSpec(summary, "summary"), ColSpec(Array(particle), "particles"),
                      ColSpec("string", "mask_png", required=False), ColSpec("string", "labels_tif", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs,
                          params=ParamSchema([ParamSpec("return_images", "boolean", True)]))


def _requirements():
    lock = store_root() / "requirements.lock"
    if lock.is_file():
        return str(lock)
    return [f"mlflow=={mlflow.__version__}", "tensorflow-cpu==2.21.*", "scikit-image", "tifffile", "imagecodecs",
            "pillow", "pandas"]


def log_pyfunc(folder: str | os.PathLike, input_example, tags: dict | None = None, metadata: dict | None = None,
               model_config: dict | None = None, registered_name: str | None = REGISTERED_MODEL):
    """Log the model folder (model.keras + nanoseg.json) as a pyfunc model in the active run and register it.

    The model is logged as code (:data:`MODEL_CODE`, MLflow "models from code"): nothing is pickled.

    Returns
    -------
    mlflow.models.model.ModelInfo
        ``registered_model_version`` holds the new version number (None without ``registered_name``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL_CODE), artifacts={MODEL_ARTIFACT: str(folder)},
            signature=pyfunc_signature(), input_example=input_example, pip_requirements=_requirements(),
            registered_model_name=registered_name, metadata=metadata, model_config=model_config,
            tags={k: str(v) for k, v in (tags or {}).items()})
    return info


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


def model_uri(alias: str = CHAMPION, name: str = REGISTERED_MODEL) -> str:
    return f"models:/{name}@{alias}"


def save_pyfunc(folder: str | os.PathLike, path: str | os.PathLike, model_config: dict | None = None) -> Path:
    """Save a plain model folder as a local pyfunc model, as code (to serve it without the registry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(str(path), python_model=str(MODEL_CODE), artifacts={MODEL_ARTIFACT: str(folder)},
                                 signature=pyfunc_signature(), pip_requirements=_requirements(),
                                 model_config=model_config)
    return Path(path)


def _pyfunc_flavor(path: Path) -> dict:
    from mlflow.models import Model

    return Model.load(str(path)).flavors.get("python_function") or {}


def is_own_code(path: str | os.PathLike) -> bool:
    """Whether the pyfunc model folder ``path`` is logged as code, with this nanoseg's :data:`MODEL_CODE`
    byte for byte (a pickled model, or code edited in the registry, is not)."""
    code = _pyfunc_flavor(Path(path)).get("model_code_path")
    copy = Path(path) / Path(code or "").name
    return bool(code) and copy.is_file() and copy.read_bytes() == MODEL_CODE.read_bytes()


def rewrap_pyfunc(path: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """The weights and settings of the pyfunc model folder ``path`` (however it was logged: pickled before
    models from code) saved again at ``dst`` with this nanoseg's code; nothing of ``path`` is executed."""
    flavor = _pyfunc_flavor(Path(path))
    artifact = ((flavor.get("artifacts") or {}).get(MODEL_ARTIFACT) or {}).get("path")
    folder = Path(path) / artifact if artifact else None
    if folder is None or not (folder / "nanoseg.json").is_file():
        raise NanosegError(f"{path}: not a nanoseg pyfunc model (no artifact {MODEL_ARTIFACT!r} with a nanoseg.json); "
                           "pass a nanoseg model URI or a saved model folder.")
    return save_pyfunc(folder, dst, model_config=flavor.get("model_config"))


def servable_model(model: str, tmp: str | os.PathLike) -> tuple[Path, str | None]:
    """A local pyfunc model folder that serves ``model`` with this nanoseg's code, and a note (or None).

    Parameters
    ----------
    model : str
        A registry or run URI (``models:/nanoseg@champion``, ``runs:/...``), a pyfunc model folder
        (with ``MLmodel``) or a plain saved model folder (model.keras + nanoseg.json).
    tmp : path-like
        A folder for the download and the re-wrapped copy.

    Returns
    -------
    (Path, str or None)
        The folder to serve. A model logged as this nanoseg's code is served as is; a plain folder, a
        pickled version (registered before models from code) or one whose code differs is re-wrapped
        (:func:`rewrap_pyfunc`), so that no pickle and no code from the store is ever run.
    """
    tmp = Path(tmp)
    folder = Path(model)
    if folder.is_dir() and (folder / "nanoseg.json").is_file() and not (folder / "MLmodel").is_file():
        return save_pyfunc(folder, tmp / "pyfunc"), None
    if not folder.is_dir():
        folder = _download_pyfunc(model, tmp / "download")
    if is_own_code(folder):
        return folder, None
    kind = ("holds code other than this nanoseg's served_model.py" if _pyfunc_flavor(folder).get("model_code_path")
            else "is a pickled pyfunc (logged before models from code)")
    note = (f"{model} {kind}: serving its weights and settings with this nanoseg's code; nothing of it is "
            "unpickled or run.")
    return rewrap_pyfunc(folder, tmp / "pyfunc"), note


def _download_pyfunc(uri: str, dst: Path) -> Path:
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
