"""Stage `publish`: the final model registered as pyfunc `nanoseg`, its tags, and the `champion` rule."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.serving import pyfunc
from tests.conftest import REPO
from tests.tiny_model import META, save_tiny_model

pytestmark = pytest.mark.slow

def save_broken_model(folder):
    """A candidate that outputs foreground everywhere (today's failure, exaggerated)."""
    from nanoseg.model.network import build_unet, save_model
    from nanoseg.model.precision import configure_precision

    configure_precision(False)
    model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8, 8))
    head = model.get_layer("head")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.array([40.0], np.float32))
    return save_model(model, folder, META)


def set_threshold(folder, threshold):
    meta = json.loads((folder / "nanoseg.json").read_text())
    (folder / "nanoseg.json").write_text(json.dumps({**meta, "threshold": threshold}))


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory, bam_dir):
    """A project folder (smoke profile that may publish, small BAM(-layout) crops prepared), data.dvc and a git
    commit; made once, copied for each test by ``project``."""
    import yaml

    from tests.conftest import write_small_dataset

    root = tmp_path_factory.mktemp("registry")
    data = write_small_dataset(bam_dir, root / "dataset", n=8)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"]["source"] = params["data"]["dir"] = str(data)
    params["publish"]["profiles"] = ["smoke"]  # this test's candidates are smoke models
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "params.yaml", "data.dvc"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=root, check=True)
    (root / "metrics").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOSEG_HOME", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("NANOSEG_PROFILE", raising=False)
        mp.chdir(root)
        from nanoseg.pipeline.stages import prepare

        assert prepare.command() == 0
    assert not (root / "mlruns").exists()  # the copies start with empty stores
    return root


@pytest.fixture
def project(prepared_project, tmp_path, monkeypatch):
    """A fresh copy of the prepared project, the working directory, with its own empty MLflow store: each test
    makes the models, metrics and registry versions it needs (none depends on another having run)."""
    from nanoseg import tracking

    root = tmp_path / "project"
    shutil.copytree(prepared_project, root, symlinks=True)
    monkeypatch.setenv("NANOSEG_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NANOSEG_PROFILE", raising=False)
    monkeypatch.chdir(root)
    tracking.setup()  # MLflow's process-wide tracking URI: this test's store, not the previous test's
    return root


def write_cv(root, dice, f1_clean, std=0.01):
    """metrics/cv.json as the cv stage writes it: the CV estimate the gate holds the candidate to."""
    (root / "metrics/cv.json").write_text(json.dumps({
        "threshold": 0.5, "folds": 2, "dice_mean": dice, "dice_std": std, "f1_50_clean_mean": f1_clean,
        "f1_50_clean_std": std, "f1_50_mean": f1_clean, "f1_50_std": std}))


def evaluate_and_publish(capsys):
    from nanoseg.pipeline.stages import evaluate, publish

    assert evaluate.command() == 0
    assert publish.command() == 0
    out = capsys.readouterr().out
    return json.loads((Path.cwd() / "metrics/test.json").read_text()), json.loads(
        (Path.cwd() / "reports/publish.json").read_text()), out


def score_only(folder):
    """The model's test scores, as evaluate measures them, without registering anything."""
    from nanoseg.config import load_params, resolve
    from nanoseg.data.manifest import read_prepared
    from nanoseg.data.heldout import load_test
    from nanoseg.evaluation.model_scores import score_model

    params = load_params()
    manifest, split = read_prepared(resolve(params, "prepared"))
    return score_model(folder, load_test(params, manifest, split))["scores"]


def champion_version():
    import mlflow

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias("nanoseg", "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def test_gate_rule():
    from nanoseg.pipeline.stages.publish import RULE, gate

    cv = {"dice_mean": 0.95, "dice_std": 0.003, "f1_50_clean_mean": 0.79, "f1_50_clean_std": 0.03}
    good = {"scores": {"dice": 0.94, "f1_50_clean": 0.76}, "profile": "cpu", "data_md5": "d", "split": "s",
            "fingerprint_ok": True}
    ok, checks = gate(good, cv, None, RULE)
    assert ok and [c["check"] for c in checks] == ["profile", "provenance", "cv_dice", "cv_f1_50_clean", "champion"]
    # today's failure: Dice 0.795 / F1 0.42 against a CV of 0.954 / 0.787 -> refused on both metrics
    ok, checks = gate({**good, "scores": {"dice": 0.795, "f1_50_clean": 0.42}}, cv, None, RULE)
    assert not ok and [c["check"] for c in checks if not c["passed"]] == ["cv_dice", "cv_f1_50_clean"]
    assert "0.7950 < CV 0.9500 - 0.0300" in checks[2]["detail"]  # tolerance max(2 x 0.003, 0.03)
    assert "- 0.0600" in checks[3]["detail"]  # 2 x std 0.03
    assert not gate({**good, "profile": "smoke"}, cv, None, RULE)[0]  # a smoke run never publishes
    assert not gate({**good, "fingerprint_ok": False}, cv, None, RULE)[0]  # stale metrics/test.json
    champ = {"version": "3", "scores": {"f1_50_clean": 0.77}, "tags": {"data_md5": "d", "split": "s", "profile": "cpu"}}
    ok, checks = gate(good, cv, champ, RULE)
    assert not ok and "0.7600 < champion version 3's 0.7700 on the same images" in checks[-1]["detail"]
    assert gate(good, cv, {**champ, "scores": {"f1_50_clean": 0.76}}, RULE)[0]  # "at least as good"
    other = {**champ, "scores": {"f1_50_clean": 0.1}, "tags": {**champ["tags"], "data_md5": "old"}}
    ok, checks = gate(good, cv, other, RULE)
    assert not ok and "not like with like" in checks[-1]["detail"]
    assert gate(good, cv, other, {**RULE, "replace_incomparable": True})[0]
    smoke_champion = {**champ, "scores": {"f1_50_clean": 0.99}, "tags": {**champ["tags"], "profile": "smoke"}}
    assert gate(good, cv, smoke_champion, RULE)[0]  # a champion that should never have been is replaced
    assert not gate({**good, "scores": {"dice": float("nan"), "f1_50_clean": 0.8}}, cv, None, RULE)[0]


def test_publish_gate_end_to_end(project, capsys):
    """Today's failure reproduced in minutes: evaluate scores candidate and champion on the same test images,
    publish moves @champion only for a candidate that holds its CV estimate and beats the champion."""
    import mlflow

    from nanoseg.inference.loading import load_predictor

    final = project / "models/final"
    # 1. a first candidate far below its CV estimate: registered, validation=failed, no alias
    save_broken_model(final)
    write_cv(project, dice=0.9, f1_clean=0.6)
    test, record, out = evaluate_and_publish(capsys)
    assert test["champion"] is None and test["model"]["recall"] == 1.0
    assert not record["promoted"] and record["version"] == "1" and champion_version() is None
    assert "registered but NOT promoted" in out and "no version holds @champion yet" in out
    v1 = mlflow.MlflowClient().get_model_version("nanoseg", "1")
    assert v1.tags["validation"] == "failed" and "dice" in v1.tags["validation_reasons"]
    with pytest.raises(NanosegError, match=r"none holds the alias 'champion' \(version\(s\) 1 failed the publish gate"):
        load_predictor("models:/nanoseg@champion")

    # 2. a working (worse-thresholded) model whose CV estimate it holds: the first champion
    save_tiny_model(final)
    set_threshold(final, 0.9)
    scores = score_only(final)
    write_cv(project, dice=scores["dice"], f1_clean=scores["f1_50_clean"])
    test, record, out = evaluate_and_publish(capsys)
    assert record["promoted"] and champion_version() == record["version"] == "2", out
    worse = test["model"]["f1_50_clean"]

    # 3. the broken candidate again, with a CV estimate it would meet: refused against the champion, who stays
    save_broken_model(final)
    bscores = score_only(final)
    write_cv(project, dice=bscores["dice"], f1_clean=bscores["f1_50_clean"])
    test, record, out = evaluate_and_publish(capsys)
    assert test["champion"]["version"] == "2" and test["champion"]["scores"]["f1_50_clean"] == pytest.approx(worse)
    assert not record["promoted"] and champion_version() == "2"
    assert [c["check"] for c in record["checks"] if not c["passed"]] == ["champion"]
    assert "@champion stays on version 2" in out

    # 4. a better candidate replaces the worse champion
    save_tiny_model(final)
    better = score_only(final)
    assert better["f1_50_clean"] > worse
    write_cv(project, dice=better["dice"], f1_clean=better["f1_50_clean"])
    test, record, out = evaluate_and_publish(capsys)
    assert record["promoted"] and champion_version() == record["version"]
    assert record["previous_champion"]["version"] == "2" and "is now @champion" in out
    v = mlflow.MlflowClient().get_model_version("nanoseg", record["version"])
    assert v.tags["validation"] == "passed" and v.tags["data_md5"] == "0123456789abcdef0123456789abcdef.dir"
    assert v.tags["split"] and v.tags["test_f1_50_clean"] and v.tags["cv_dice_mean"] and len(v.tags["git_commit"]) == 40

    # 5. metrics/test.json from other model files: refused (provenance), nothing scored twice silently
    set_threshold(final, 0.5 + 1e-6)
    from nanoseg.pipeline.stages import publish

    assert publish.command() == 0
    record = json.loads((project / "reports/publish.json").read_text())
    assert not record["promoted"] and [c["check"] for c in record["checks"] if not c["passed"]] == ["provenance"]

    info = mlflow.models.get_model_info("models:/nanoseg@champion")
    assert [c.name for c in info.signature.inputs] == ["image", "name", "pixel_size_nm", "databar_row"]
    assert "particles" in info.signature.outputs.input_names() and info.saved_input_example_info


def test_champion_loads_as_pyfunc_and_refuses_bad_input(project, capsys):
    import mlflow

    from nanoseg.serving.payload import input_example

    save_tiny_model(project / "models/final")  # a candidate that holds its CV estimate: the first champion
    scores = score_only(project / "models/final")
    write_cv(project, dice=scores["dice"], f1_clean=scores["f1_50_clean"])
    assert evaluate_and_publish(capsys)[1]["promoted"] and champion_version() == "1"
    model = mlflow.pyfunc.load_model("models:/nanoseg@champion")
    out = model.predict(input_example(), params={"return_images": False})
    assert len(out) == 1 and out[0]["name"] == "example.png" and out[0]["unit"] == "nm"
    assert set(out[0]) >= {"summary", "particles", "threshold", "databar_row"} and "mask_png" not in out[0]
    assert out[0]["summary"]["n_particles"] == len(out[0]["particles"])
    bad = input_example()
    bad["image"] = "aGVsbG8="  # base64 of "hello"
    with pytest.raises(mlflow.exceptions.MlflowException, match="not a TIFF or PNG image"):
        model.predict(bad)


def test_publish_refuses_missing_inputs_and_registers_nothing(project, tmp_path):
    import mlflow

    from nanoseg.config import load_params
    from nanoseg.pipeline.stages.publish import publish

    save_tiny_model(project / "models/final")
    write_cv(project, 0.9, 0.9)
    (project / "metrics/test.json").write_text(json.dumps({"model": {"dice": 0.9, "f1_50_clean": 0.9}}))
    assert not mlflow.MlflowClient().search_model_versions("name='nanoseg'")
    params = load_params()
    params["publish"]["rank_by"] = "nope"
    with pytest.raises(NanosegError, match="publish.rank_by = 'nope' is not a test metric"):
        publish(params)
    params["publish"] = {"rank_by": "dice", "tolerence_min": 0.1}
    with pytest.raises(NanosegError, match=r"publish.tolerence_min is not a setting \(did you mean publish.tolerance_min\?\)"):
        publish(params)
    params["publish"] = {}
    params["_root"] = str(tmp_path)
    with pytest.raises(NanosegError, match="no test metrics; run `dvc repro evaluate`"):
        publish(params)
    (tmp_path / "metrics").mkdir()
    shutil.copy(project / "metrics/test.json", tmp_path / "metrics/test.json")
    shutil.copy(project / "metrics/cv.json", tmp_path / "metrics/cv.json")
    with pytest.raises(NanosegError, match="model folder not found or incomplete"):
        publish(params)
    assert not mlflow.MlflowClient().search_model_versions("name='nanoseg'")


def test_plain_model_folder_becomes_a_pyfunc(project, tmp_path):
    """What `nanoseg serve --model models/final` serves: the folder wrapped without the registry."""
    import mlflow

    from nanoseg import tracking

    save_tiny_model(project / "models/final")
    path = pyfunc.save_pyfunc(project / "models/final", tmp_path / "pyfunc")
    info = mlflow.models.get_model_info(str(path))
    assert info.flavors["python_function"]["artifacts"]["nanoseg_model"]["path"] == "artifacts/final"
    assert (path / "artifacts/final/model.keras").is_file() and info.signature.params
    with pytest.raises(NanosegError, match="models:/nope@champion: not found in the model registry"):
        tracking.check_model_uri("models:/nope@champion")


def test_ui_screenshot_shows_the_fold_runs(tmp_path):
    """scripts/ui_screenshot.py: `mlflow ui` on loopback, the run comparison page in headless Chromium."""
    import os
    import sys

    from PIL import Image

    from nanoseg import tracking

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOSEG_HOME", str(tmp_path))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.setup()
        with tracking.start_run("cv-paper-smoke", tags={"stage": "cv"}):
            for k in range(2):
                with tracking.start_run(f"fold-{k}", nested=True, tags={"stage": "cv", "fold": str(k)},
                                        params={"fold": k}):
                    tracking.log_params(tracking.compare_params({"model": {"variant": "paper"},
                                                                 "train": {"lr": 1e-3, "batch": 4}}, "Test CPU",
                                                                steps=100 + k))
                    scores = {"dice": 0.90 + k / 100, "f1_50_clean": 0.8, "pq_clean": 0.7,
                              "median_ecd_rel_error_clean": 0.05}
                    tracking.log_metrics({"val_iou": 0.82 + k / 100, **tracking.compare_metrics(scores, "val_")})
        with tracking.start_run("evaluate-paper-smoke", tags={"stage": "evaluate"}):
            pass
    out = tmp_path / "ui.png"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"NANOSEG_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts/ui_screenshot.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs" in proc.stdout and "compare-runs" in proc.stdout  # the cv folds, waited for by name
    # the plot opens on what differs (fold, steps) and the scores that decide, not on the page's defaults
    assert "plot axes: fold, steps, val_dice, val_f1_50_clean, val_pq_clean, val_ecd_error" in proc.stdout
    image = Image.open(out)
    assert image.size == (1600, 1800)
    assert len(image.convert("L").getcolors(65536) or []) > 50  # a rendered page, not a blank one
