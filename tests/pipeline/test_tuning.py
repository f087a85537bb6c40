"""Optuna search: storage, resuming, pruning from the training log, nested MLflow runs,
several workers on one PostgreSQL study, and the real `nanoseg tune` on the smoke profile."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from nanoseg.pipeline import tuning
from nanoseg.errors import NanosegError
from tests.conftest import REPO, write_small_dataset
from tests.s3server import free_ports


def test_storage_url_resolves_under_the_store_root(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSEG_HOME", str(tmp_path))
    assert tuning.storage_url("tune/optuna.db") == f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}"
    assert (tmp_path / "tune").is_dir()
    url = "postgresql+psycopg2://u:secret@127.0.0.1:5432/db"
    assert tuning.storage_url(url) == url
    assert "secret" not in tuning._safe(url)


def test_settings_errors_are_clear():
    with pytest.raises(NanosegError, match="tune.pruner.name"):
        tuning.make_pruner({"name": "nope"})
    with pytest.raises(NanosegError, match=r"tune.pruner.n_startup_trial is not a setting \(did you mean "
                                           r"tune.pruner.n_startup_trials\?\)"):
        tuning.make_pruner({"name": "threshold", "lower": 0.1, "n_startup_trial": 2})
    pruner = tuning.make_pruner({"name": "threshold", "lower": 0.1, "n_startup_trials": 2})  # a median setting
    assert type(pruner).__name__ == "ThresholdPruner"
    split = {"folds": [{}, {}, {}]}
    assert tuning.fold_subset(split, 2) == [0, 1]
    assert tuning.fold_subset(split, None) == [0, 1, 2]
    assert tuning.fold_subset(split, [2]) == [2]
    with pytest.raises(NanosegError, match="tune.folds"):
        tuning.fold_subset(split, [5])
    with pytest.raises(NanosegError, match="cannot open the Optuna storage"):
        tuning.open_study("postgresql+psycopg2://u@127.0.0.1:1/none", "x")


def test_study_resumes_and_writes_best_params(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"lr": [1e-5, 1e-3], "batch": [2, 4, 8]}

    def objective(trial):
        hp = tuning.suggest(trial, space)
        return -abs(np.log10(hp["lr"]) + 4) - 0.01 * hp["batch"]

    study = tuning.open_study(url, "s", seed=0)
    tuning.check_space(study, space)
    assert tuning.optimize(study, objective, 3) == 3
    first = [t.params for t in study.trials]
    study = tuning.open_study(url, "s", seed=0)  # another process resuming
    tuning.check_space(study, space)
    assert tuning.optimize(study, objective, 5) == 2  # continues up to the study size
    assert tuning.optimize(study, objective, 5) == 0
    assert len(study.trials) == 5 and [t.params for t in study.trials[:3]] == first
    assert study.trials[3].params not in first  # the reseeded sampler does not repeat itself
    with pytest.raises(NanosegError, match="another one|search space"):
        tuning.check_space(study, {"lr": [1e-5, 1e-3], "batch": [2]})

    best = tuning.best_setting(study)
    assert best["command"] == f"dvc exp run -S train.lr={best['train']['lr']!r} -S train.batch={best['train']['batch']}"
    path = tuning.write_best(best, tmp_path / "tune" / "best_params.yaml", url)
    loaded = yaml.safe_load(path.read_text())
    assert loaded["train"] == best["train"] and loaded["value"] == pytest.approx(study.best_value)
    assert "params.yaml is unchanged" in path.read_text()
    plots = tuning.save_plots(study, tmp_path / "plots")
    assert {p.name for p in plots} >= {"optimization_history.png", "slice.png", "contour.png"}


def test_pruned_and_failed_trials_are_nested_mlflow_runs(tmp_path, monkeypatch):
    """The objective with training stubbed: pruning raised from the per-epoch log, a bad setting failing."""
    import mlflow

    from nanoseg import tracking
    from nanoseg.pipeline import crossval
    from nanoseg.model import training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def fake_fit(tr_img, tr_mask, va_img, va_mask, p, log=None, label=""):
        if p["train"]["batch"] == 8:
            raise NanosegError("train.batch = 8 is larger than the 3 training images of this fold")
        for epoch in range(3):  # batch 2 learns, batch 4 does not
            log({"loss": 0.5, "val_loss": 0.5, "val_dice_coefficient": 0.9 if p["train"]["batch"] == 2 else 0.1},
                epoch)
        return object(), {}, {"best_epoch": 3}

    monkeypatch.setattr(training, "fit", fake_fit)
    monkeypatch.setattr(crossval, "predict_images", lambda model, images, p: [m.astype(float) for m in masks])
    masks = [np.zeros((40, 40), bool)]
    masks[0][5:15, 5:15] = masks[0][20:30, 20:32] = True  # two clean particles: predicted perfectly
    data = {0: ([], [], [np.zeros((40, 40))], masks), 1: ([], [], [np.zeros((40, 40))], masks)}
    params = {"train": {"lr": 1e-4, "batch": 4, "epochs": 3}, "profile": "smoke", "model": {"variant": "paper"},
              "postprocess": {"opening_radius": 0, "min_area_nm2": 0, "min_distance_grid": [5]}}
    tune = {"lr": [1e-5, 1e-3], "batch": [2, 4, 8]}
    tracking.setup("tune-test")
    study = tuning.open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "stub",
                              tuning.make_pruner({"name": "threshold", "lower": 0.5}))
    for batch in (2, 4, 8):
        study.enqueue_trial({"lr": 1e-4, "batch": batch})
    with tracking.start_run("tune-stub") as parent:
        tuning.optimize(study, tuning.cv_objective(params, data, tune, tracker=tracking), 3)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert study.best_value == pytest.approx(1.0)

    runs = {r.data.tags["optuna_trial"]: r for r in mlflow.search_runs(
        [parent.info.experiment_id], filter_string="tags.stage = 'tune'", output_format="list")}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())
    assert runs["0"].info.status == "FINISHED" and runs["0"].data.tags["optuna_state"] == "COMPLETE"
    assert runs["0"].data.metrics["mean_val_f1_50_clean"] == pytest.approx(1.0)
    assert runs["0"].data.metrics["fold0_val_f1_50_clean"] == pytest.approx(1.0)
    assert runs["0"].data.params["batch"] == "2" and "fold1_val_dice_coefficient" in runs["0"].data.metrics
    assert runs["1"].info.status == "KILLED" and runs["1"].data.tags["optuna_state"] == "PRUNED"
    assert "fold 0 epoch 1" in runs["1"].data.tags["optuna_pruned_at"]
    assert runs["2"].info.status == "FAILED" and "larger than" in runs["2"].data.tags["optuna_error"]


# ----------------------------------------------------------------------------- PostgreSQL, two workers


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (run as `nobody` when the tests run as root)."""
    pytest.importorskip("psycopg2")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="nanoseg-pg-", dir="/tmp"))
    prefix = []
    if os.geteuid() == 0:
        os.chown(base, 65534, 65534)
        prefix = ["runuser", "-u", "nobody", "--"]
    port, data, sock = free_ports(1)[0], base / "data", base / "sock"
    env = {**os.environ, "LC_ALL": "C"}

    def pg(*args, check=True):
        return subprocess.run([*prefix, *args], cwd=base, env=env, capture_output=True, text=True, check=check,
                              timeout=120)

    try:
        pg("mkdir", str(sock))
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "start",
           "-o", f"-k {sock} -h 127.0.0.1 -p {port} -F")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


WORKER = textwrap.dedent("""
    import os, sys, time
    from nanoseg.pipeline import tuning

    def objective(trial):
        trial.set_user_attr("worker", os.getpid())
        x = trial.suggest_float("x", -1.0, 1.0)
        time.sleep(0.2)  # so that both workers get trials
        return -x * x

    study = tuning.open_study(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]))
    print(tuning.optimize(study, objective, int(sys.argv[4])))
""")


def test_two_workers_share_one_study_on_postgresql(postgres):
    study = tuning.open_study(postgres, "shared", seed=0)  # the first machine creates it
    n = 10
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, postgres, "shared", str(seed), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outs = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    ran = [int(o[0].strip().splitlines()[-1]) for o in outs]
    study = tuning.open_study(postgres, "shared", seed=None)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert n <= len(done) <= n + 1 and sum(ran) == len(study.trials)  # MaxTrialsCallback may let one more in
    assert len({t.user_attrs["worker"] for t in done}) == 2 and min(ran) >= 1
    assert tuning.optimize(study, lambda t: 0.0, n) == 0  # the study is complete: a late worker does nothing


# ----------------------------------------------------------------------------- the real command


@pytest.fixture(scope="module")
def project(tmp_path_factory, bam_dir):
    """A project folder (smoke profile, small dataset, prepared split) with its own store."""
    from nanoseg.config import load_params
    from nanoseg.data.manifest import prepare

    root = tmp_path_factory.mktemp("tune")
    data = write_small_dataset(bam_dir, root / "dataset", n=8)
    proj = root / "proj"
    proj.mkdir()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["data"]["dir"] = str(data)
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    prepare(load_params(proj / "params.yaml"), proj / "prepared", progress=False)
    return proj


@pytest.mark.slow
def test_tune_command_prunes_resumes_and_reports(project):
    import mlflow

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "NANOSEG_PROFILE", "NANOSEG_OPTUNA_STORAGE")}
    env["NANOSEG_HOME"] = str(project)
    from nanoseg import processes

    def tune(*args):
        return subprocess.run([processes.tool("nanoseg"), "tune", *args], cwd=project, capture_output=True, text=True,
                              timeout=600, env=processes.child_env(base=env))

    first = tune("--trials", "1")
    assert first.returncode == 0, first.stderr[-4000:]
    assert "reproduce it with:  dvc exp run -S train.lr=" in first.stdout
    best = yaml.safe_load((project / "tune/best_params.yaml").read_text())
    assert best["trial"] == 0 and best["train"]["batch"] == 2 and 1e-5 <= best["train"]["lr"] <= 1e-3
    assert (project / "tune/optuna.db").is_file() and (project / "tune/plots/optimization_history.png").is_file()

    # every later trial is pruned at its first epoch: the real training stops through the log callback
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tune"]["pruner"] = {"name": "threshold", "lower": 1.01}
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    second = tune()  # the smoke study's size is 2: this continues it
    assert second.returncode == 0, second.stderr[-4000:]
    assert "1 of 2 trials finished" in second.stdout and '"PRUNED": 1' in second.stdout
    assert yaml.safe_load((project / "tune/best_params.yaml").read_text())["trial"] == 0

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    exp = mlflow.get_experiment_by_name("nanoseg-bam-tio2")
    runs = mlflow.search_runs([exp.experiment_id], filter_string="tags.stage = 'tune'", output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = {r.data.tags["optuna_trial"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and set(trials) == {"0", "1"}  # the resumed study logs under the same run
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials.values())
    assert trials["0"].data.tags["optuna_state"] == "COMPLETE" and "mean_val_f1_50_clean" in trials["0"].data.metrics
    assert trials["1"].info.status == "KILLED" and trials["1"].data.tags["optuna_state"] == "PRUNED"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "plots")}
    assert "plots/optimization_history.png" in arts
    assert "best_mean_val_f1_50_clean" in parents[0].data.metrics
