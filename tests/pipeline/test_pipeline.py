"""End to end: a fresh copy of the project runs the whole DVC pipeline on the smoke profile,
against real DVC and a real MLflow store, then `nanoseg predict` uses the final model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from nanoseg import processes
from tests.conftest import REPO, write_small_dataset

pytestmark = pytest.mark.slow

def sh(*cmd, cwd, check=True, timeout=900):
    """Run a command as a user would with the venv on PATH (the venv's tools first, processes.child_env)."""
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NANOSEG_HOME")}
    env = processes.child_env({"DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
                           "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}, base=base)
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory, bam_dir):
    """A fresh clone-like copy of the project with a small dataset imported through DVC."""
    root = tmp_path_factory.mktemp("e2e")
    repo = root / "nanoseg"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            dst = repo / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    data = write_small_dataset(bam_dir, root / "dataset", n=8)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=repo)
    out = sh("nanoseg", "data", "--source", str(data), cwd=repo)
    assert "8 images" in out.stdout
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "data", cwd=repo)
    return repo


def test_smoke_pipeline_end_to_end(project):
    run = sh("dvc", "exp", "run", "-S", "profile=smoke", cwd=project)
    assert "cv:" in run.stdout and "test (" in run.stdout
    cv = json.loads((project / "metrics/cv.json").read_text())
    for m in ("accuracy", "precision", "recall", "f1", "dice", "iou", "auc"):
        assert f"{m}_mean" in cv and f"{m}_std" in cv
    assert 0.0 <= cv["threshold"] <= 1.0 and "postprocess" in cv
    assert cv["warnings"] == []  # smoke folds end on their epochs, not on the time budget
    test = json.loads((project / "metrics/test.json").read_text())
    assert {"dice", "iou", "f1_50", "pq", "median_ecd_rel_error"} <= set(test["model"])
    assert {"otsu", "otsu_watershed"} <= set(test["baselines"])
    assert (project / "models/final/nanoseg.json").is_file()
    assert sorted(p.name for p in (project / "plots/cv").glob("*.csv")) == ["fold_0.csv", "fold_1.csv"]
    assert list((project / "plots/test").glob("overlay_*.png"))

    shown = sh("dvc", "metrics", "show", cwd=project).stdout
    assert "metrics/cv.json" in shown and "metrics/test.json" in shown

    # MLflow: one cv parent run with two nested fold runs carrying the 7 metrics and plots
    import mlflow

    from nanoseg.tracking import COMPARE_PARAMS as tracking_compare_params

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    exp = mlflow.get_experiment_by_name("nanoseg-bam-tio2")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get("stage") == "cv" and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    assert parents[0].data.tags["variant"] == "instance"  # the default trains the instance variant
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(folds) == 2
    for f in folds:
        assert {"val_dice", "val_iou", "val_auc", "val_f1_50"} <= set(f.data.metrics)
        # the compared set, under the same names in every run (MLflow UI columns and compare view)
        assert {"val_f1_50_clean", "val_pq_clean", "val_ecd_error"} <= set(f.data.metrics)
        assert set(tracking_compare_params) <= set(f.data.params) and f.data.params["cpu"]
        assert int(f.data.params["steps"]) > 0 and f.data.params["lr"] and f.data.params["batch"]
        assert f.data.tags.get("git_commit") and f.data.tags.get("data_md5")
        arts = {a.path for a in mlflow.MlflowClient().list_artifacts(f.info.run_id)}
        assert {"model", "plots", "overlays"} <= arts
    assert "dice_mean" in parents[0].data.metrics
    assert parents[0].data.metrics["val_f1_50_clean"] == pytest.approx(cv["f1_50_clean_mean"])
    assert set(tracking_compare_params) <= set(parents[0].data.params)
    evaluate = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert len(evaluate) == 1 and {"test_f1_50_clean", "test_ecd_error"} <= set(evaluate[0].data.metrics)

    # the candidate: the fold models as one ensemble, scored by evaluate as users get it
    meta = json.loads((project / "models/final/nanoseg.json").read_text())
    assert meta["candidate"] == "ensemble" and meta["ensemble"]["members"] == 2
    assert {"f1_50_clean", "pq_clean", "tp_clean"} <= set(test["model"]) and test["champion"] is None
    assert test["model_fingerprint"] and test["split_fingerprint"]
    # publish registered it, but a smoke run never becomes @champion
    record = json.loads((project / "reports/publish.json").read_text())
    assert not record["promoted"] and [c["check"] for c in record["checks"] if not c["passed"]][0] == "profile"
    assert record["warnings"] == []
    assert "registered but NOT promoted" in run.stdout
    client = mlflow.MlflowClient()
    version = client.get_model_version("nanoseg", record["version"])
    assert version.tags.get("data_md5") and version.tags.get("git_commit") and version.tags["validation"] == "failed"
    assert version.tags.get("variant") == "instance" and version.tags.get("test_f1_50_clean")
    assert "smoke" in version.tags["validation_reasons"]
    bad = sh("nanoseg", "predict", str(sorted((project / "data/Electron Microscopy Images/SEM").glob("*.tif"))[0]),
             "--model", "models:/nanoseg@champion", "--out", "nope", cwd=project, check=False)
    assert bad.returncode == 2 and "none holds the alias 'champion'" in bad.stderr and "Traceback" not in bad.stderr

    # an interrupted/repeated cv does not train finished folds again
    again = sh("python", "-m", "nanoseg.pipeline.stages.cv", cwd=project)
    assert again.stdout.count("not trained again") == 2

    # the final model predicts new images with the output contract
    img = sorted((project / "data/Electron Microscopy Images/SEM").glob("*.tif"))[0]
    pred = sh("nanoseg", "predict", str(img), "--model", "models/final", "--out", "pred", cwd=project)
    for name in (f"{img.stem}_mask.png", f"{img.stem}_labels.tif", f"{img.stem}_overlay.png",
                 "particles.csv", "summary.json", "psd.png"):
        assert (project / "pred" / name).is_file(), (name, pred.stdout, pred.stderr)

    # predict.tta: the folds' validation maps are made again with 8-view TTA (no retraining), the decoder is
    # tuned on them, and the published model runs with TTA unless told --no-tta
    tta = sh("dvc", "exp", "run", "-S", "profile=smoke", "-S", "predict.tta=true", cwd=project)
    assert tta.stdout.count("not trained again") == 2 and tta.stdout.count("predicting its validation images again") == 2
    assert json.loads((project / "models/final/nanoseg.json").read_text())["tta"] is True
    for flag, expected in (([], True), (["--no-tta"], False)):
        sh("nanoseg", "predict", str(img), "--model", "models/final", "--out", "pred_tta", "--overwrite", *flag,
           cwd=project)
        assert json.loads((project / "pred_tta/summary.json").read_text())["tta"] is expected
        assert (project / "pred_tta" / f"{img.stem}_uncertainty.tif").is_file() is expected
