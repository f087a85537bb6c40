"""Stage `publish`: the final model registered as pyfunc `nanoseg`, its tags, and the `champion` rule."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.stages.publish import promotion
from tests.conftest import REPO

pytestmark = pytest.mark.slow

META = {"variant": "paper", "threshold": 0.5, "tile": 256, "overlap": 32, "mlflow_run_id": "train-run",
        "postprocess": {"opening_radius": 1, "min_area_nm2": 200.0, "split": False, "min_distance_px": 5}}


def save_tiny_model(folder):
    """An untrained ResNet50 U-Net with a tiny decoder, saved like the train stage does.

    The last decoder level is set by hand to pass the input image through, so the model
    thresholds brightness (particles are bright): its masks hold particles, as a trained one's do.
    """
    from nanoseg.model import build_unet, configure_precision, save_model

    configure_precision(False)
    model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8, 8))
    for name, source in (("dec5a_conv", 8), ("dec5b_conv", 0)):  # dec5a sees [upsampled (8), image (1)]
        kernel = np.zeros(model.get_layer(name).kernel.shape, np.float32)
        kernel[1, 1, source, 0] = 1.0
        model.get_layer(name).kernel.assign(kernel)
    head = model.get_layer("head")
    kernel = np.zeros(head.kernel.shape, np.float32)
    kernel[0, 0, 0, 0] = 40.0
    head.kernel.assign(kernel)
    head.bias.assign(np.array([-40.0 * 0.45], np.float32))  # probability = sigmoid(40 (image - 0.45))
    return save_model(model, folder, META)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with models/final, data.dvc and a git commit, its MLflow store inside it."""
    root = tmp_path_factory.mktemp("registry")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=root, check=True)
    save_tiny_model(root / "models/final")
    (root / "metrics").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOSEG_HOME", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("NANOSEG_PROFILE", raising=False)
        mp.chdir(root)
        yield root


def write_test_metrics(root, dice, f1, val_f1=0.5):
    (root / "metrics/test.json").write_text(json.dumps({"model": {"dice": dice, "f1_50": f1, "n_pred": 12},
                                                        "baselines": {"otsu": {"dice": 0.5}}}))
    (root / "metrics/cv.json").write_text(json.dumps({"threshold": 0.5, "folds": 2, "dice_mean": dice,
                                                      "f1_50_mean": val_f1, "f1_50_std": 0.01}))


def test_promotion_rule():
    assert promotion({"val_f1_50": 0.5}, None) == (True, "no champion yet")
    assert promotion({"val_f1_50": 0.9}, {"val_f1_50": 0.9})[0]  # "at least" the champion's
    ok, why = promotion({"val_f1_50": 0.89, "f1_50": 0.99}, {"val_f1_50": 0.9, "f1_50": 0.1})
    assert not ok and why == "validation f1_50 0.8900 < champion's 0.9000"  # the default: validation F1
    ok, why = promotion({"dice": 0.89}, {"dice": 0.9}, rank_by="dice")
    assert not ok and why == "test dice 0.8900 < champion's 0.9000"
    assert promotion({"dice": 0.1, "f1_50": 0.95}, {"dice": 0.9, "f1_50": 0.9}, rank_by="f1_50")[0]
    assert promotion({"val_f1_50": 0.5}, {"dice": 0.9})[0]  # a champion without the score is replaced
    assert not promotion({"val_f1_50": float("nan")}, {"val_f1_50": 0.2})[0]


def test_publish_registers_versions_and_moves_champion_by_the_rule(project, capsys):
    import mlflow

    from nanoseg.config import load_params
    from nanoseg.stages import publish as stage

    write_test_metrics(project, 0.80, 0.60, val_f1=0.50)
    assert stage.command() == 0
    assert "version 1 is now @champion (no champion yet)" in capsys.readouterr().out

    write_test_metrics(project, 0.70, 0.90, val_f1=0.40)  # worse validation F1: registered, not promoted
    assert stage.command() == 0
    out = capsys.readouterr().out
    assert "version 2 registered but NOT promoted: validation f1_50 0.4000 < champion's 0.5000" in out
    assert json.loads((project / "reports/publish.json").read_text())["champion_version"] == "1"

    params = load_params()
    params["publish"]["rank_by"] = "f1_50"  # a variant that ranks by instance F1
    record = stage.publish(params)
    assert record["version"] == "3" and record["promoted"] and "f1_50 0.9000 >= champion's 0.6000" in record["reason"]

    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("nanoseg", "champion").version) == "3"
    v2 = client.get_model_version("nanoseg", "2")
    assert v2.tags["test_dice"] == "0.7" and v2.tags["test_f1_50"] == "0.9" and v2.tags["val_f1_50"] == "0.4"
    assert v2.tags["data_md5"] == "0123456789abcdef0123456789abcdef.dir" and len(v2.tags["git_commit"]) == 40
    assert json.loads(v2.tags["params"])["train"]["lr"] == params["train"]["lr"]
    run = mlflow.get_run(v2.run_id)
    assert run.data.metrics["test_dice"] == pytest.approx(0.7) and run.data.tags["promoted"] == "False"
    assert run.data.tags["stage"] == "publish"

    info = mlflow.models.get_model_info("models:/nanoseg@champion")
    assert [c.name for c in info.signature.inputs] == ["image", "name", "pixel_size_nm", "databar_row"]
    assert "particles" in info.signature.outputs.input_names() and info.saved_input_example_info
    assert info.metadata["nanoseg"]["threshold"] == 0.5


def test_champion_loads_as_pyfunc_and_refuses_bad_input(project):
    import mlflow

    from nanoseg.serving import input_example

    if not (project / "reports/publish.json").is_file():
        pytest.skip("needs the publish test")
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
    from nanoseg.stages.publish import publish

    before = len(mlflow.MlflowClient().search_model_versions("name='nanoseg'"))
    params = load_params()
    params["publish"]["rank_by"] = "pq"
    write_test_metrics(project, 0.9, 0.9)
    with pytest.raises(NanosegError, match="publish.rank_by = 'pq' is not a test metric"):
        publish(params)
    params["publish"]["rank_by"] = "val_pq"
    with pytest.raises(NanosegError, match=r"'val_pq' is not a cross-validation mean .*run `dvc repro cv`"):
        publish(params)
    params["_root"] = str(tmp_path)
    with pytest.raises(NanosegError, match="no test metrics; run `dvc repro evaluate`"):
        publish(params)
    (tmp_path / "metrics").mkdir()
    shutil.copy(project / "metrics/test.json", tmp_path / "metrics/test.json")
    with pytest.raises(NanosegError, match="model folder not found or incomplete"):
        publish(params)
    assert len(mlflow.MlflowClient().search_model_versions("name='nanoseg'")) == before


def test_plain_model_folder_becomes_a_pyfunc(project, tmp_path):
    """What `nanoseg serve --model models/final` serves: the folder wrapped without the registry."""
    import mlflow

    from nanoseg import tracking

    path = tracking.save_pyfunc(project / "models/final", tmp_path / "pyfunc")
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
                    tracking.log_metrics({"val_dice": 0.90 + k / 100, "val_iou": 0.82 + k / 100})
        with tracking.start_run("evaluate-paper-smoke", tags={"stage": "evaluate"}):
            pass
    out = tmp_path / "ui.png"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"NANOSEG_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts/ui_screenshot.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs" in proc.stdout and "compare-runs" in proc.stdout  # the cv folds, waited for by name
    image = Image.open(out)
    assert image.size == (1600, 1800)
    assert len(image.convert("L").getcolors(65536) or []) > 50  # a rendered page, not a blank one
