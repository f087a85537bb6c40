"""The MLflow store: location, provenance tags, resumable runs, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoseg import config, tracking
from nanoseg.errors import NanosegError


def test_store_resolves_from_dvc_temp_copy(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    tmpcopy = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    tmpcopy.mkdir(parents=True)
    (repo / "params.yaml").write_text("profile: cpu\n")
    (tmpcopy / "params.yaml").write_text("profile: cpu\n")
    monkeypatch.delenv("NANOSEG_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmpcopy)
    assert config.project_root() == tmpcopy
    assert config.store_root() == repo
    assert tracking.tracking_uri() == f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    assert Path(tracking.tracking_uri()[len("sqlite:///"):]).is_absolute()


def test_env_overrides_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


def test_runs_are_tagged_and_nested(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("NANOSEG_HOME", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    exp_id = tracking.setup("unit-test")
    with tracking.start_run("parent", params={"train": {"lr": 1e-4}, "_root": "x"}) as parent:
        with tracking.start_run("child", nested=True) as child:
            tracking.log_metrics({"dice": 0.9, "skip": None}, step=1)
    run = mlflow.get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["dvc_exp_name"] == "exp-test"
    assert run.data.metrics["dice"] == 0.9
    assert mlflow.get_run(parent.info.run_id).data.params["train.lr"] == "0.0001"
    exp = mlflow.get_experiment(exp_id)
    assert exp.artifact_location.startswith((tmp_path / "mlruns" / "artifacts").as_uri())
    assert tracking.run_status(parent.info.run_id) == "FINISHED"
    assert tracking.run_status("0" * 32) is None


def test_store_not_writable(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("NANOSEG_HOME", str(tmp_path))
    (tmp_path / "mlruns").write_text("a file where the store folder should be")
    with pytest.raises(NanosegError, match="not writable"):
        tracking.setup("unit-test")


def test_unknown_model_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("NANOSEG_HOME", str(tmp_path))
    tracking.setup("unit-test")
    with pytest.raises(NanosegError, match="not found in the model registry"):
        tracking.download_model("models:/does-not-exist@champion")
