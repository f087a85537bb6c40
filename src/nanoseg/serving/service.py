"""The server side of the served model: :class:`Service`, a loaded model that answers requests (what
:class:`nanoseg.serving.pyfunc.NanosegPyfunc` wraps), thread-safe, with a limit on concurrent requests,
and the server's defaults.

The request and answer formats are :mod:`nanoseg.serving.payload`'s; the HTTP server is
:mod:`nanoseg.serving.server` (started by ``nanoseg serve``, :mod:`nanoseg.cli.serve`), the client
:mod:`nanoseg.serving.client`. This module imports no MLflow.
"""

from __future__ import annotations

import os
import threading

from nanoseg.errors import NanosegError
from nanoseg.serving.payload import (
    MAX_PIXELS, PARAMS, RequestError, ServerBusy, answer, databar_row, pixel_size, read_upload, records,
)

DEFAULT_MODEL = "models:/nanoseg@champion"
DEFAULT_WORKERS = 1         # server processes, each with its own copy of the model
DEFAULT_CONCURRENT = 2      # requests one worker answers at once; more get 503
DEFAULT_TIMEOUT = 300       # seconds before a request is answered 504 (its work still holds its slot)
MODEL_ENV = "NANOSEG_SERVE_MODEL"
CONCURRENT_ENV = "NANOSEG_SERVE_MAX_CONCURRENT"
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"  # read by MLflow's scoring server


class Service:
    """A loaded model that answers requests (what the pyfunc wraps).

    Each image goes through the code of ``nanoseg predict`` (:func:`nanoseg.io.micrograph.read_micrograph` of
    the uploaded bytes, then :func:`nanoseg.inference.analyze.analyze`: tiles -> threshold -> clean-up ->
    instances -> particle table), in memory.

    Thread-safe: MLflow's server runs each request in a thread over this one object. A request
    changes no process-wide state (warning filters, loggers), and at most ``max_concurrent``
    requests run at once; one more raises :class:`ServerBusy` (HTTP 503) at once instead of
    queueing. A slot is held until the work is done, also when the server has already answered
    504 (timeout), so timed-out work cannot pile up.

    Parameters
    ----------
    predictor : nanoseg.inference.predictor.Predictor
    settings : dict
        The model's resolved settings (:func:`nanoseg.inference.loading.load_predictor`).
    max_pixels : int
        Largest image accepted (pixels).
    max_concurrent : int
        Requests answered at once.
    """

    def __init__(self, predictor, settings: dict, max_pixels: int = MAX_PIXELS,
                 max_concurrent: int = DEFAULT_CONCURRENT):
        self.predictor, self.settings, self.max_pixels = predictor, settings, int(max_pixels)
        self.max_concurrent = int(max_concurrent)
        if self.max_concurrent < 1:
            raise NanosegError(f"max_concurrent = {max_concurrent}: a server answers at least 1 request at once.")
        self._slots = threading.BoundedSemaphore(self.max_concurrent)

    @classmethod
    def from_folder(cls, folder, config: dict | None = None) -> "Service":
        """Load a saved model folder (model.keras + nanoseg.json) the way ``nanoseg predict`` does.

        ``config`` (the pyfunc's model_config) may set ``max_pixels`` and ``max_concurrent``;
        the environment variable ``NANOSEG_SERVE_MAX_CONCURRENT`` (set by ``nanoseg serve``) wins.
        """
        from nanoseg.inference.loading import load_predictor

        config = config or {}
        predictor, settings = load_predictor(str(folder))
        concurrent = os.environ.get(CONCURRENT_ENV) or config.get("max_concurrent", DEFAULT_CONCURRENT)
        return cls(predictor, settings, int(config.get("max_pixels", MAX_PIXELS)), int(concurrent))

    def analyze(self, data: bytes, name: str, label: str, pixel_size_nm=None, databar_row=None,
                return_images: bool = True) -> dict:
        """The answer for one image file's bytes, computed in memory (nothing is written to disk)."""
        from nanoseg.inference.analyze import analyze
        from nanoseg.io.micrograph import read_micrograph
        from nanoseg.report.results import png_bytes, tif_bytes

        try:
            mg = read_micrograph(name, pixel_size=pixel_size_nm, databar_row=databar_row, notes=[], data=data)
            result = analyze(self.predictor, self.settings, mg)
        except NanosegError as exc:
            message = str(exc)
            raise RequestError(label + message[len(name):] if message.startswith(f"{name}:") else message) from None
        images = (png_bytes(result.mask), tif_bytes(result.labels)) if return_images else (None, None)
        return answer(result.info, result.table, self.settings["threshold"], *images)

    def predict(self, model_input, return_images: bool = True, **params) -> list[dict]:
        """Answers for the request's records, one per image (see :mod:`nanoseg.serving.payload`).

        Raises
        ------
        ServerBusy
            ``max_concurrent`` requests are being answered.
        RequestError
            A bad request (checked for every image before any work).
        """
        if not self._slots.acquire(blocking=False):
            raise ServerBusy(f"the server is busy: it answers {self.max_concurrent} request(s) at once and all are "
                             "taken; retry in a few seconds (or start it with a larger --max-concurrent).")
        try:
            return self._answer(model_input, return_images, params)
        finally:
            self._slots.release()

    def _answer(self, model_input, return_images, params: dict) -> list[dict]:
        if params:
            raise RequestError(f"unknown parameter(s) {sorted(params)} in \"params\"; the parameters are "
                               f"{', '.join(PARAMS)}.")
        if not isinstance(return_images, bool):
            raise RequestError(f"params: return_images = {return_images!r}; give true or false.")
        rows = records(model_input)
        checked = [read_upload(r, i, self.max_pixels) for i, r in enumerate(rows)]  # all, before any work
        return [self.analyze(data, name, label, pixel_size(row.get("pixel_size_nm"), label),
                             databar_row(row.get("databar_row"), label), return_images)
                for row, (data, name, label) in zip(rows, checked)]
