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


def test_secrets_are_masked_in_what_nanoseg_prints(monkeypatch, capsys):
    from nanoseg.errors import mask_secrets, report_errors

    key_id, secret = "AKIA" + "IOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    text = (f"store http://alice:pa55word@mlflow.example:5000/ and s3://bob:{secret}@bucket/x, "
            f"postgresql+psycopg2://u:p%40ss@db/optuna, key {key_id}, aws_secret_access_key={secret}, "
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=abcdef0123&X-Amz-Credential=AKIA/x, token: t0ken-value")
    masked = mask_secrets(text)
    for leak in ("pa55word", secret, "p%40ss", key_id, "abcdef0123", "t0ken-value"):
        assert leak not in masked, leak
    assert "http://alice:***@mlflow.example:5000/" in masked and "AKIA***" in masked
    assert mask_secrets("sqlite:////work/mlruns/mlflow.db") == "sqlite:////work/mlruns/mlflow.db"  # nothing to hide
    assert mask_secrets("git commit 0123456789abcdef0123456789abcdef01234567") .endswith("01234567")

    @report_errors
    def fail():
        raise NanosegError("http://alice:pa55word@host/: not found")

    with pytest.raises(SystemExit):
        fail()
    assert "pa55word" not in capsys.readouterr().err


def test_tracking_uri_printed_masked_unless_raw(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa55word@127.0.0.1:5999")
    tracking.main(["--uri"])
    assert capsys.readouterr().out.strip() == "http://alice:***@127.0.0.1:5999"
    tracking.main(["--uri", "--raw"])  # for $(...) in commands (make ui)
    assert capsys.readouterr().out.strip() == "http://alice:pa55word@127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa55word@127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(NanosegError) as err:
        tracking.check_model_uri("models:/nanoseg/1")
    assert "pa55word" not in str(err.value) and "alice:***@127.0.0.1:9" in str(err.value)
