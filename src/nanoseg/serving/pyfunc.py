"""The ``mlflow.pyfunc`` model: a thin wrapper of :class:`nanoseg.serving.service.Service`.

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

import logging
import uuid

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from nanoseg.errors import NanosegError, mask_secrets
from nanoseg.serving.payload import ServerBusy, one_line
from nanoseg.tracking import MODEL_ARTIFACT
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
