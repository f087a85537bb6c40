"""A cross-validation fold interrupted mid-way resumes after its last finished epoch, in the same MLflow run."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO, write_small_dataset

pytestmark = pytest.mark.slow


class Interrupted(Exception):
    """Stands for a kill or Ctrl+C of `dvc repro` during training."""


def test_an_interrupted_fold_resumes_at_the_next_epoch_in_its_run(tmp_path, bam_dir, monkeypatch, capsys):
    import mlflow

    from nanoseg import tracking
    from nanoseg.config import load_params
    from nanoseg.data.manifest import prepare, read_prepared
    from nanoseg.pipeline import crossval

    data = write_small_dataset(bam_dir, tmp_path / "dataset", n=6)
    proj = tmp_path / "proj"
    proj.mkdir()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"], raw["data"]["dir"] = "smoke", str(data)
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(proj / "params.yaml")
    params["train"].update(epochs=3, max_minutes_per_fold=None)
    prepare(params, proj / "prepared", progress=False)
    manifest, split = read_prepared(proj / "prepared")
    key = crossval.config_key(params, manifest, split)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    tracking.setup(params=params)
    fold_dir = proj / "cv" / "fold_0"
    real_log = tracking.log_metrics

    def killed_after_epoch_2(metrics, step=None):
        real_log(metrics, step)
        if step == 1:
            raise Interrupted

    with tracking.start_run("cv-resume-test"):
        monkeypatch.setattr(tracking, "log_metrics", killed_after_epoch_2)
        with pytest.raises(Interrupted):
            crossval.run_fold(0, split["folds"][0], manifest, params, fold_dir, key)
        assert (fold_dir / "backup" / "state.json").is_file() and not (fold_dir / "result.json").exists()
        [first] = mlflow.search_runs(filter_string="tags.fold = '0'", output_format="list")
        monkeypatch.setattr(tracking, "log_metrics", real_log)
        result = crossval.run_fold(0, split["folds"][0], manifest, params, fold_dir, key)

    assert "fold 0: resuming after epoch 2" in capsys.readouterr().out
    assert result["run_id"] == first.info.run_id and result["epochs_run"] == 3
    history = mlflow.MlflowClient().get_metric_history(result["run_id"], "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]  # epochs 1-2 before the interruption, 3 after, once each
    assert mlflow.get_run(result["run_id"]).info.status == "FINISHED"
    assert not (fold_dir / "backup").exists() and crossval.finished_fold(fold_dir, key) is not None
