"""The HTTP server of ``nanoseg serve``: MLflow's scoring server behind nanoseg's guard.

uvicorn runs :func:`create_app` in each worker (``uvicorn --factory nanoseg.serving.server:create_app``):
it loads the pyfunc model folder named by ``NANOSEG_SERVE_MODEL`` (prepared by
:func:`nanoseg.serving.pyfunc.servable_model`, pickles refused), builds MLflow's scoring app (``/ping``,
``/health``, ``/version``, ``/invocations``; its timeout ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``
answers 504) and wraps it in :class:`Guard`, which handles ``/invocations``:

* at most ``NANOSEG_SERVE_MAX_CONCURRENT`` requests at once per worker: one more is answered 503 at
  once, before its body is read, with ``Retry-After``. (:class:`nanoseg.serving.service.Service` holds the
  same number of slots until the work is really done, also after a 504.)
* every error answer becomes ``{"error_code": ..., "message": "<one line>"}``: nanoseg's own message
  for its errors (400 for the client's faults, 503 busy, 500 for the server's with an error id in
  the log), a short one for MLflow's (invalid JSON, wrong shape, missing or mistyped fields, content
  type, timeout); never the request, a stack trace or a secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re

from nanoseg.errors import NanosegError, mask_secrets
from nanoseg.serving.payload import FIELDS, PARAMS, RequestError, check_request, one_line
from nanoseg.serving.service import CONCURRENT_ENV, DEFAULT_CONCURRENT, DEFAULT_TIMEOUT, MODEL_ENV, TIMEOUT_ENV

_logger = logging.getLogger("nanoseg.serving.server")
_JSON = [(b"content-type", b"application/json")]
_CODES = {400: "BAD_REQUEST", 404: "ENDPOINT_NOT_FOUND", 405: "BAD_REQUEST", 413: "BAD_REQUEST",
          415: "BAD_REQUEST", 500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_SHAPE = ('the request must be a JSON object with one of "dataframe_records", "dataframe_split", "inputs" or '
          '"instances" (and optionally "params"), e.g. {"dataframe_records": [{"image": "<base64>"}]}.')


def create_app():
    """The ASGI app of one server worker (settings from the environment that ``nanoseg serve`` sets)."""
    from mlflow.pyfunc import load_model, scoring_server

    path = os.environ.get(MODEL_ENV)
    if not path:
        raise NanosegError(f"{MODEL_ENV} is not set: start the server with `nanoseg serve`.")
    app = scoring_server.init(load_model(path))
    return Guard(app, int(os.environ.get(CONCURRENT_ENV) or DEFAULT_CONCURRENT),
                 int(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT))


class Guard:
    """ASGI middleware around MLflow's scoring app: concurrency limit and clean errors on ``/invocations``.

    Parameters
    ----------
    app : ASGI app
    limit : int
        Requests on ``/invocations`` answered at once; one more gets 503.
    timeout : int
        The scoring server's timeout in seconds (named in the 504 message).
    """

    def __init__(self, app, limit: int, timeout: int):
        self.app, self.limit, self.timeout, self.active = app, int(limit), int(timeout), 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/") != "/invocations":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await _read_body(receive, keep=False)  # read (and drop) it: a client still sending would see a reset
            message = (f"the server is busy: it answers {self.limit} request(s) at once and all are taken; "
                       "retry in a few seconds (or start it with a larger --max-concurrent or --workers).")
            await _respond(send, 503, {"error_code": _CODES[503], "message": message}, [(b"retry-after", b"2")])
            return
        self.active += 1  # one event loop per worker: no lock needed
        try:
            body = await _read_body(receive)
            refused = await _refusal(scope, body)
            if refused:
                await _respond(send, 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": refused}, [])
                return
            status, headers, body = await _collect(self.app, scope, _replay(body, receive))
        finally:
            self.active -= 1
        if status < 400:
            await _send(send, status, headers, body)
            return
        error = error_answer(status, body, self.timeout)
        await _respond(send, status, error, [(b"retry-after", b"2")] if status == 503 else [])


async def _read_body(receive, keep: bool = True) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away: MLflow's app sees an empty body
        if keep:
            chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A ``receive`` that hands the app the body already read, then waits on the real one (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refusal(scope, body: bytes) -> str | None:
    """nanoseg's message for a JSON request that MLflow would take but mishandle (see
    :func:`nanoseg.serving.payload.check_request`), or None; invalid JSON is left to MLflow's answer."""
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != b"application/json" or not body:
        return None
    try:
        parsed = await asyncio.to_thread(json.loads, body)  # big bodies: off the event loop
    except (ValueError, RecursionError):
        return None
    try:
        check_request(parsed)
    except RequestError as exc:
        return mask_secrets(one_line(exc))
    return None


async def _collect(app, scope, receive) -> tuple[int, list, bytes]:
    """Run ``app`` on one request; return its status, headers and whole body (500 if it raised first)."""
    start, chunks = {}, []

    async def send(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except Exception:  # noqa: BLE001 - Starlette re-raises after answering 500; the log gets the traceback
        _logger.exception("unhandled error while answering /invocations")
        if not start:
            return 500, [], b""
    return int(start.get("status", 500)), list(start.get("headers", [])), b"".join(chunks)


async def _send(send, status: int, headers: list, body: bytes) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _respond(send, status: int, error: dict, extra: list) -> None:
    await _send(send, status, _JSON + extra, json.dumps(error).encode())


def error_answer(status: int, body: bytes, timeout: int = DEFAULT_TIMEOUT) -> dict:
    """The answer for an error of MLflow's app: ``{"error_code", "message"}``, one line, secrets masked.

    Parameters
    ----------
    status : int
        The status MLflow's app answered with (kept).
    body : bytes
        Its body: nanoseg's error (``nanoseg_message``), MLflow's JSON error or plain text.
    timeout : int
        The server's timeout, for the 504 message.
    """
    try:
        data = json.loads(body or b"null")
    except ValueError:
        data = None
    data = data if isinstance(data, dict) else {}
    text = str(data.get("message") or data.get("detail") or body.decode(errors="replace"))
    if data.get("nanoseg_message"):
        message = str(data["nanoseg_message"])
    elif status == 504:
        message = (f"the request took longer than the server's timeout ({timeout} s); its work still finishes and "
                   "holds its slot meanwhile. Send fewer or smaller images per request, or start the server with "
                   "a larger --timeout.")
    elif status == 405:
        message = "use POST for /invocations (GET /ping or /health checks that the server is up)."
    elif status == 415:
        message = f"send the request as JSON: Content-Type: application/json ({text.split('. ', 1)[0]})."
    elif status >= 500:
        message = ("internal error while answering the request; the server log has the details. The request itself "
                   "may be fine: retry, or report the time of the request.")
        _logger.error("MLflow answered %s: %s", status, one_line(text, 2000))
    else:
        message = mlflow_message(text)
    return {"error_code": data.get("error_code") or _CODES.get(status, "BAD_REQUEST"),
            "message": mask_secrets(one_line(message))}


def mlflow_message(text: str) -> str:
    """nanoseg's one-line message for a request MLflow refused (its own messages repeat the request)."""
    if "valid JSON formatted string" in text or "valid UTF-8" in text:
        return f"the request body is not valid JSON (or not UTF-8); {_SHAPE}"
    if "Received a list" in text or "Received dictionary with input fields" in text \
            or "Received unexpected input type" in text or "must be a dictionary" in text:
        return _SHAPE
    missing = re.search(r"missing inputs (\[[^\]]*\])", text)
    if missing:
        return (f"missing inputs {missing[1]}: every record needs \"image\" (the image file as base64); the fields "
                f"are {', '.join(FIELDS)}.")
    param = next((p for p in PARAMS if f"'{p}'" in text or f"\"{p}\"" in text), None)
    if param or "params" in text.lower():
        return f"bad \"params\": {param or 'parameters'} must be true or false; the parameters are {', '.join(PARAMS)}."
    column = next((f for f in FIELDS if re.search(rf"\b{f}\b", text)), None)
    if column:
        kind = "a string" if column in ("image", "name") else "a number or null"
        return f"field \"{column}\" has the wrong type: it must be {kind}."
    detail = text.rsplit("Error: ", 1)[-1]
    return f"the request does not fit the model's input ({one_line(detail, 160)}); {_SHAPE}"
