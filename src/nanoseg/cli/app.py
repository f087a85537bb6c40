"""``nanoseg app [--model URI] [--port 5002]``: the page for microscopists (:mod:`nanoseg.app.web`) on 127.0.0.1."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from nanoseg.app.web import DEFAULT_PORT, HOST, Workspace, create_app
from nanoseg.errors import NanosegError
from nanoseg.serving.service import DEFAULT_MODEL


def check_port(port: int, host: str = HOST) -> None:
    """Raise NanosegError unless ``host:port`` can be bound now."""
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            raise NanosegError(f"{host}:{port}: cannot listen there ({exc.strerror}); another program (an earlier "
                               "`nanoseg app`?) uses the port: stop it or pass another --port.") from None


def app_command(args) -> int:
    """``nanoseg app [--model URI] [--port 5002]``: load the model, serve the page on 127.0.0.1 until Ctrl+C."""
    import uvicorn

    from nanoseg.inference.loading import load_predictor

    model = args.model or DEFAULT_MODEL
    port = int(args.port or DEFAULT_PORT)
    check_port(port)
    predictor, settings = load_predictor(model)
    with tempfile.TemporaryDirectory(prefix="nanoseg-app-") as tmp:
        app = create_app(Workspace(predictor, settings, Path(tmp), model))
        print(f"nanoseg app: model {model}; open http://{HOST}:{port}/ (Ctrl+C stops)", flush=True)
        uvicorn.run(app, host=HOST, port=port, log_level="warning")
    return 0
