"""A real `nanoseg serve` on loopback for the serving tests, and a raw HTTP client for it."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nanoseg import processes
from nanoseg.errors import NanosegError
from tests.s3server import free_ports


class Served:
    """``nanoseg serve --model MODEL [options]`` on 127.0.0.1 and a free port, in its own process group."""

    def __init__(self, model, log: Path, *options: str, env: dict | None = None, command: list | None = None,
                 base_env: dict | None = None):
        """``command`` replaces ``python -m nanoseg`` (e.g. the venv's ``nanoseg`` script); ``base_env``
        replaces ``os.environ`` as the environment ``env`` adds to (e.g. a bare ``PATH=/usr/bin:/bin``)."""
        import subprocess

        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [*(command or [sys.executable, "-m", "nanoseg"]), "serve", "--model", str(model),
                    "--host", "127.0.0.1", "--port", str(self.port), *options]
        self.log = log
        env = {"MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
        with log.open("w") as out:
            if base_env is None:
                self.proc = processes.start(self.cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            else:  # exactly this environment: no PATH added
                self.proc = subprocess.Popen(self.cmd, env={**base_env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)

    def wait(self, timeout: float = 300) -> "Served":
        try:
            processes.wait_for_url(self.url + "/ping", self.proc, timeout, what="nanoseg serve", log=self.log)
        except NanosegError as exc:
            pytest.fail(str(exc))
        return self

    def alive(self, path: str = "/ping") -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        processes.stop(self.proc)


def post_raw(url: str, body: bytes, content_type: str = "application/json", timeout: float = 300):
    """POST ``body`` to ``url``/invocations: (status, headers, raw body bytes), errors included."""
    req = urllib.request.Request(url + "/invocations", data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post(url: str, body: bytes, content_type: str = "application/json"):
    """POST and parse: (status, JSON answer); a plain-text answer comes back as {"message": text}."""
    status, _, raw = post_raw(url, body, content_type)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {"message": raw.decode(errors="replace")}
