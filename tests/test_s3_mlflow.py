"""MLflow tracking server with its artifacts in S3 (SeaweedFS, see tests/s3server.py).

`mlflow server` on 127.0.0.1 with a sqlite backend and
``--artifacts-destination s3://<bucket>/mlflow``; the client logs a run with an
artifact and a small pyfunc model through the tracking URI, registers it and
loads it back. The client holds no S3 credentials: the server proxies the
artifacts, which must land in the bucket.
"""

import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from nanoseg import processes
from nanoseg.errors import NanosegError
from tests.s3server import free_ports

mlflow = pytest.importorskip("mlflow")


class Threshold(mlflow.pyfunc.PythonModel):
    """A tiny stand-in for the segmentation model: foreground = pixels above 0.5."""

    def predict(self, context, model_input: list[list[float]], params=None) -> list[list[int]]:
        return (np.asarray(model_input, dtype=float) > 0.5).astype(int).tolist()


@pytest.fixture(scope="module")
def mlflow_server(s3_server, tmp_path_factory):
    """Yield (tracking URI, bucket) of a tracking server storing artifacts in S3."""
    bucket = f"mlflow-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_ports(1)[0]
    env = {**s3_server.env(), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no extra job-runner process
    cmd = [processes.tool("mlflow"), "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", f"s3://{bucket}/mlflow"]
    log = open(root / "server.log", "wb")
    proc = processes.start(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        processes.wait_for_url(f"{uri}/health", proc, 120, what="mlflow server", log=root / "server.log")
    except NanosegError as exc:
        _stop(proc, log)
        pytest.fail(str(exc))
    yield uri, bucket
    _stop(proc, log)


def _stop(proc, log):
    """Stop the server and its uvicorn worker (the process group it leads)."""
    processes.stop(proc)
    log.close()


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    uri, bucket = mlflow_server
    for name in list(os.environ):
        if name.startswith(("AWS_", "MLFLOW_S3")):
            monkeypatch.delenv(name)  # the client reaches S3 only through the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri, bucket
    mlflow.set_tracking_uri(None)  # back to "unset"; monkeypatch then restores the env
    mlflow.set_registry_uri(None)


def test_run_artifact_and_registered_model_live_in_s3(tracking, s3_server, tmp_path):
    uri, bucket = tracking
    notes = tmp_path / "notes.txt"
    notes.write_text("pixel size 7.34375 nm\n")
    mlflow.set_experiment("s3-artifacts")
    with mlflow.start_run() as run:
        mlflow.log_param("threshold", 0.5)
        mlflow.log_metric("dice", 0.9)
        mlflow.log_artifact(str(notes), artifact_path="reports")
        info = mlflow.pyfunc.log_model(name="model", python_model=Threshold(),
                                       pip_requirements=["numpy"],
                                       registered_model_name="nanoseg-s3-test")
    assert int(info.registered_model_version) == 1

    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                              artifact_path="reports/notes.txt",
                                              dst_path=str(tmp_path / "dl"))
    assert Path(got).read_bytes() == notes.read_bytes()
    model = mlflow.pyfunc.load_model("models:/nanoseg-s3-test/1")
    assert model.predict([[0.2, 0.7], [0.9, 0.1]]) == [[0, 1], [1, 0]]

    client = s3_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="mlflow/") for o in page.get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/reports/notes.txt") for k in keys), keys
    assert any(k.endswith("/MLmodel") for k in keys), keys
    assert any(k.endswith("/python_model.pkl") for k in keys), keys
    assert mlflow.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
