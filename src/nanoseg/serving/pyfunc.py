"""The ``mlflow.pyfunc`` model, a thin wrapper of :class:`nanoseg.serving.service.Service`, and how it is logged.

Logged as code (:mod:`nanoseg.served_model`), never pickled. Its ``predict`` turns nanoseg's errors
into MLflow's, with the HTTP status the scoring server answers with:

* :class:`~nanoseg.serving.payload.RequestError` and other :class:`~nanoseg.errors.NanosegError`: 400
  (``INVALID_PARAMETER_VALUE``), the client's fault, with nanoseg's one-line message;
* :class:`~nanoseg.serving.payload.ServerBusy`: 503 (``TEMPORARILY_UNAVAILABLE``), the concurrency limit;
* anything else: 500 (``INTERNAL_ERROR``) with an error id and no traceback; the traceback goes to
  the server's log under that id.

MLflow's scoring server prefixes the message with the request DataFrame; the original message also
travels as ``nanoseg_message`` in the error body, which ``nanoseg serve`` answers with
(:mod:`nanoseg.serving.server`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
import warnings
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from nanoseg.config import store_root
from nanoseg.errors import NanosegError, mask_secrets
from nanoseg.serving.payload import ServerBusy, one_line
from nanoseg.model_store import REGISTERED_MODEL, download_pyfunc

_logger = logging.getLogger("nanoseg.serving.server")


def served_error(exc: Exception) -> MlflowException:
    """The MlflowException (status, one-line message) a failed request is answered with."""
    if isinstance(exc, ServerBusy):
        code = TEMPORARILY_UNAVAILABLE
        message = str(exc)
    elif isinstance(exc, NanosegError):
        code, message = INVALID_PARAMETER_VALUE, str(exc)
    else:
        error_id = uuid.uuid4().hex[:12]
        _logger.error("internal error %s while answering a request", error_id, exc_info=exc)
        code = INTERNAL_ERROR
        message = (f"internal error {error_id} ({type(exc).__name__}) while answering the request; the server log "
                   "has the details under this id. The request itself may be fine: retry, or report the id.")
    message = mask_secrets(one_line(message, 1000))
    return MlflowException(message, error_code=code, nanoseg_message=message)


class NanosegPyfunc(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` model: DataFrame of base64 images in, one result dict per image out.

    The request/answer format is documented in :mod:`nanoseg.serving.payload`.
    """

    # predict has no type hints: requests stay MLflow's DataFrame formats (dataframe_records, inputs, ...)
    # checked against the explicit signature; this also silences MLflow's suggestion to add them
    _skip_type_hint_validation = True

    def load_context(self, context):
        from nanoseg.serving.service import Service

        self.service = Service.from_folder(context.artifacts[MODEL_ARTIFACT], config=context.model_config)

    def predict(self, context, model_input, params=None):
        try:
            return self.service.predict(model_input, **(params or {}))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clean HTTP answer
            raise served_error(exc) from None


# ============================================================================ logging the served model
# Logged as code (nanoseg/served_model.py, MLflow "models from code"), registered as "nanoseg"
# (nanoseg.tracking.registry); the alias "champion" marks the version to serve.

MODEL_ARTIFACT = "nanoseg_model"
MODEL_CODE = Path(__file__).resolve().parent.parent / "served_model.py"
#: sha256 of earlier served_model.py texts that are this nanoseg's code too: before the subpackages, the file
#: imported NanosegPyfunc from nanoseg.pyfunc (still there, :mod:`nanoseg.pyfunc`)
LEGACY_MODEL_CODE = ("f6ace27942f4f8e712fcda5c1ffe009fa46cd55a2877b01ea3e1c1ad677682a4",)


def pyfunc_signature():
    """The served model's signature (see :mod:`nanoseg.serving.payload` for the meaning of each field)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    from nanoseg.measure.particles import table_columns
    from nanoseg.serving.payload import SUMMARY_FIELDS

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
    byte for byte or one of its earlier texts (:data:`LEGACY_MODEL_CODE`); a pickled model, or code edited
    in the registry, is not."""
    code = _pyfunc_flavor(Path(path)).get("model_code_path")
    copy = Path(path) / Path(code or "").name
    if not (code and copy.is_file()):
        return False
    text = copy.read_bytes()
    return text == MODEL_CODE.read_bytes() or hashlib.sha256(text).hexdigest() in LEGACY_MODEL_CODE


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
        folder = download_pyfunc(model, tmp / "download")
    if is_own_code(folder):
        return folder, None
    kind = ("holds code other than this nanoseg's served_model.py" if _pyfunc_flavor(folder).get("model_code_path")
            else "is a pickled pyfunc (logged before models from code)")
    note = (f"{model} {kind}: serving its weights and settings with this nanoseg's code; nothing of it is "
            "unpickled or run.")
    return rewrap_pyfunc(folder, tmp / "pyfunc"), note
