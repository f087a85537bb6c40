"""``nanoseg serve``: the HTTP server of a model (uvicorn running :mod:`nanoseg.serving.server`, MLflow's
scoring server behind nanoseg's guard) with explicit workers, concurrency limit and timeout."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from nanoseg import processes
from nanoseg.errors import NanosegError, mask_secrets
from nanoseg.serving.service import (
    CONCURRENT_ENV, DEFAULT_CONCURRENT, DEFAULT_MODEL, DEFAULT_TIMEOUT, DEFAULT_WORKERS, MODEL_ENV, TIMEOUT_ENV,
)


def serve_command(args) -> int:
    """``nanoseg serve [--model URI] [--host 127.0.0.1] [--port 5001] [--workers N] [--max-concurrent N]
    [--timeout S]``: the HTTP server (uvicorn, :mod:`nanoseg.serving.server`) on the project's store.

    The model is brought to a local folder first (:func:`nanoseg.serving.pyfunc.servable_model`: code that
    is not this nanoseg's, and pickles, are never run); the server process loads it from there.
    """
    from nanoseg.serving.pyfunc import servable_model
    from nanoseg.model_store import tracking_uri

    model = args.model or DEFAULT_MODEL
    uri = tracking_uri()
    workers, concurrent, timeout = _workers(args), _concurrent(args), _timeout(args)  # checked before any download
    with tempfile.TemporaryDirectory(prefix="nanoseg-serve-") as tmp:
        local, note = servable_model(model, Path(tmp))
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
    return [sys.executable, "-m", "uvicorn", "--factory", "nanoseg.serving.server:create_app", "--host", args.host,
            "--port", str(args.port), "--workers", str(_workers(args)), "--no-server-header",
            "--timeout-graceful-shutdown", "10"]


def server_env(local: Path, args, uri: str) -> dict:
    """The server's environment: the model, its limits, and no pickles (MLFLOW_ALLOW_PICKLE_DESERIALIZATION)."""
    return dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
                MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false", **{MODEL_ENV: str(local),
                CONCURRENT_ENV: str(_concurrent(args)), TIMEOUT_ENV: str(_timeout(args))})


def _run_forwarding_signals(cmd: list[str], env: dict) -> int:
    """Run the server in its own process group; Ctrl+C and SIGTERM stop all of it (uvicorn included)."""
    proc = processes.start(cmd, env=env)

    def forward(signum, _frame):
        processes.signal_all(proc, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        processes.stop(proc)
