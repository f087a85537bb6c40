"""The server side of the served model and the commands around it.

* :class:`Service`: a loaded model that answers requests (what :class:`nanoseg.pyfunc.NanosegPyfunc`
  wraps), thread-safe, with a limit on concurrent requests;
* ``nanoseg serve``: the HTTP server (uvicorn running :mod:`nanoseg.server`, MLflow's scoring server
  behind nanoseg's guard) with explicit workers, concurrency limit and timeout;
* ``nanoseg request``: the client (:mod:`nanoseg.procs` starts and stops the server process).

The request and answer formats are :mod:`nanoseg.payload`'s (re-exported here). This module imports
no MLflow (``nanoseg serve`` asks :mod:`nanoseg.tracking` for the model, lazily).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

from nanoseg.errors import NanosegError, mask_secrets
from nanoseg.payload import (  # noqa: F401 - the request codec, re-exported for clients and older imports
    MAX_IMAGE_BYTES, MAX_IMAGES, MAX_PIXELS, PARAMS, SUMMARY_FIELDS, RequestError, ServerBusy, answer,
    b64encode_file, databar_row, decode_image, decode_labels, decode_mask, example_image, image_size,
    input_example, make_request, pixel_size, read_upload, records, summarize,
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

    Each image goes through ``nanoseg predict``'s own per-image code
    (:func:`nanoseg.predict.predict_one`: read -> tiles -> threshold -> clean-up ->
    instances -> particle table), with the uploaded bytes in a temporary folder.

    Thread-safe: MLflow's server runs each request in a thread over this one object. A request
    changes no process-wide state (warning filters, loggers), and at most ``max_concurrent``
    requests run at once; one more raises :class:`ServerBusy` (HTTP 503) at once instead of
    queueing. A slot is held until the work is done, also when the server has already answered
    504 (timeout), so timed-out work cannot pile up.

    Parameters
    ----------
    predictor : nanoseg.predict.Predictor
    settings : dict
        The model's resolved settings (:func:`nanoseg.predict.load_predictor`).
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
        from nanoseg.predict import load_predictor

        config = config or {}
        predictor, settings = load_predictor(str(folder))
        concurrent = os.environ.get(CONCURRENT_ENV) or config.get("max_concurrent", DEFAULT_CONCURRENT)
        return cls(predictor, settings, int(config.get("max_pixels", MAX_PIXELS)), int(concurrent))

    def analyze(self, data: bytes, name: str, label: str, pixel_size_nm=None, databar_row=None,
                return_images: bool = True) -> dict:
        """The answer for one image file's bytes."""
        from types import SimpleNamespace

        from nanoseg.predict import predict_one

        with tempfile.TemporaryDirectory(prefix="nanoseg-request-") as tmp:
            src, out = Path(tmp) / "in", Path(tmp) / "out"
            src.mkdir()
            out.mkdir()
            path = src / name
            path.write_bytes(data)
            args = SimpleNamespace(pixel_size=pixel_size_nm, databar_row=databar_row)
            try:
                table, info = predict_one(self.predictor, self.settings, path, out, args)
            except NanosegError as exc:
                raise RequestError(str(exc).replace(str(path), label)) from None
            images = ((out / f"{path.stem}_mask.png").read_bytes(), (out / f"{path.stem}_labels.tif").read_bytes()) \
                if return_images else (None, None)
        return answer(info, table, self.settings["threshold"], *images)

    def predict(self, model_input, return_images: bool = True, **params) -> list[dict]:
        """Answers for the request's records, one per image (see :mod:`nanoseg.payload`).

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


# ----------------------------------------------------------------------------- commands


def serve_command(args) -> int:
    """``nanoseg serve [--model URI] [--host 127.0.0.1] [--port 5001] [--workers N] [--max-concurrent N]
    [--timeout S]``: the HTTP server (uvicorn, :mod:`nanoseg.server`) on the project's store.

    The model is brought to a local folder first (:func:`nanoseg.tracking.servable_model`: code that
    is not this nanoseg's, and pickles, are never run); the server process loads it from there.
    """
    from nanoseg import tracking

    model = args.model or DEFAULT_MODEL
    uri = tracking.tracking_uri()
    workers, concurrent, timeout = _workers(args), _concurrent(args), _timeout(args)  # checked before any download
    with tempfile.TemporaryDirectory(prefix="nanoseg-serve-") as tmp:
        local, note = tracking.servable_model(model, Path(tmp))
        if note:
            print(f"nanoseg serve: {mask_secrets(note)}", flush=True)
        cmd, env = server_command(args), server_env(local, args, uri)
        print(f"serving {mask_secrets(model)} (store {mask_secrets(uri)}) at http://{args.host}:{args.port}"
              f"/invocations: {workers} worker(s) x {concurrent} request(s) at once, timeout {timeout} s", flush=True)
        return _run_forwarding_signals(cmd, env)


def _workers(args) -> int:
    return _positive(getattr(args, "workers", None), DEFAULT_WORKERS, "--workers")


def _concurrent(args) -> int:
    return _positive(getattr(args, "max_concurrent", None), DEFAULT_CONCURRENT, "--max-concurrent")


def _timeout(args) -> int:
    return _positive(getattr(args, "timeout", None), DEFAULT_TIMEOUT, "--timeout")


def _positive(value, default: int, option: str) -> int:
    if value is None:
        return default
    if int(value) < 1:
        raise NanosegError(f"{option} {value}: give a whole number of at least 1.")
    return int(value)


def server_command(args) -> list[str]:
    """The uvicorn command line of the server (the model folder travels in the environment: :func:`server_env`)."""
    return [sys.executable, "-m", "uvicorn", "--factory", "nanoseg.server:create_app", "--host", args.host,
            "--port", str(args.port), "--workers", str(_workers(args)), "--no-server-header",
            "--timeout-graceful-shutdown", "10"]


def server_env(local: Path, args, uri: str) -> dict:
    """The server's environment: the model, its limits, and no pickles (MLFLOW_ALLOW_PICKLE_DESERIALIZATION)."""
    return dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
                MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false", **{MODEL_ENV: str(local),
                CONCURRENT_ENV: str(_concurrent(args)), TIMEOUT_ENV: str(_timeout(args))})


def _run_forwarding_signals(cmd: list[str], env: dict) -> int:
    """Run the server in its own process group; Ctrl+C and SIGTERM stop all of it (uvicorn included)."""
    from nanoseg import procs

    proc = procs.start(cmd, env=env)

    def forward(signum, _frame):
        procs.signal_all(proc, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        procs.stop(proc)


def post(url: str, body: dict, timeout: float = 600) -> dict:
    """POST ``body`` as JSON to ``url`` (``/invocations`` appended to a bare address); return the answer."""
    import urllib.error
    import urllib.request

    if not re.search(r"/invocations/?$", url):
        url = url.rstrip("/") + "/invocations"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = _error_message(exc.read().decode(errors="replace"))
        what = "is busy" if exc.code == 503 else "failed" if exc.code >= 500 else "refused the request"
        raise NanosegError(f"{url}: the server {what} (HTTP {exc.code}): {text[:2000]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NanosegError(f"{url}: no answer ({reason}); start the server with `nanoseg serve` "
                           "and check the address.") from None


def _error_message(text: str) -> str:
    """The message of an error answer (nanoseg's, or a plain MLflow server's without the request it repeats)."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict):
        return text
    text = str(data.get("nanoseg_message") or data.get("message") or text)
    if text.startswith("Failed to predict data") and "\nError: " in text:
        text = text.rsplit("\nError: ", 1)[1]  # MLflow's prefix repeats the (truncated) request
    return text


def request_command(args) -> int:
    """``nanoseg request --url URL IMAGE... [--pixel-size X] [--out DIR [--overwrite]]``: print each image's
    summary as JSON; with ``--out`` also save the masks, labels and particles (never over earlier answers
    unless ``--overwrite``, never two images with the same stem: checked before anything is sent)."""
    from nanoseg.micrograph import parse_pixel_size
    from nanoseg.outputs import check_answer_files

    for p in args.images:
        if not Path(p).is_file():
            raise NanosegError(f"{p}: no such image file; check the path.")
    px = parse_pixel_size(args.pixel_size) if getattr(args, "pixel_size", None) else None
    out = Path(args.out) if getattr(args, "out", None) else None
    overwrite = bool(getattr(args, "overwrite", False))
    if out is not None:
        check_answer_files(out, args.images, overwrite)
    reply = post(args.url, make_request(args.images, px, return_images=out is not None))
    results = reply.get("predictions", reply) if isinstance(reply, dict) else reply
    if out is not None:
        save_answers(results, out, overwrite=overwrite, names=[Path(p).name for p in args.images])
    summary = [{"name": r["name"], "unit": r["unit"], "pixel_size_nm": r["pixel_size_nm"], **r["summary"]}
               for r in results]
    print(json.dumps(summary, indent=2))
    return 0


def save_answers(results: list[dict], out: Path, overwrite: bool = False, names: list[str] | None = None) -> None:
    """Write ``<stem>_mask.png``, ``<stem>_labels.tif`` and ``particles.csv`` of the answers to ``out``, each
    file atomically.

    Parameters
    ----------
    results : list of dict
        The server's answers, in the order of the images sent.
    out : Path
        Folder, created if needed.
    overwrite : bool
        Replace files that exist already (otherwise refused, before anything is written).
    names : list of str, optional
        The images' own file names (default: the names in the answers); they name the files.

    Raises
    ------
    NanosegError
        Two images with the same stem, or existing files without ``overwrite`` (:func:`nanoseg.outputs.check_answer_files`).
    """
    import pandas as pd

    from nanoseg.atomic import write_bytes, write_with
    from nanoseg.outputs import check_answer_files

    names = list(names) if names is not None else [r["name"] for r in results]
    check_answer_files(out, names, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, r in zip(names, results):
        stem = Path(name).stem
        if r.get("mask_png"):
            write_bytes(out / f"{stem}_mask.png", base64.b64decode(r["mask_png"]))
            write_bytes(out / f"{stem}_labels.tif", base64.b64decode(r["labels_tif"]))
        rows += r["particles"]
    write_with(out / "particles.csv", lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
