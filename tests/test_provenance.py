"""Provenance: DVC re-runs a stage when any code it runs changes, and the CV resume key knows the code."""

from __future__ import annotations

import yaml

from nanoseg import codehash
from nanoseg.pipeline import crossval
from tests.conftest import REPO


def test_dvc_stage_deps_cover_the_import_graph():
    """Every nanoseg module a stage can run (imports inside functions included) is a dep of that stage."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"prepare", "validate", "cv", "train", "evaluate", "publish"}
    for name, stage in stages.items():
        module = stage["cmd"].split("-m", 1)[1].strip()
        deps = {str(d) for d in stage["deps"]}
        needed = {str(p.relative_to(REPO)) for p in codehash.closure([module])}
        assert needed, name
        missing = sorted(n for n in needed if n not in deps and not any(n.startswith(d + "/") for d in deps))
        assert not missing, f"dvc.yaml stage {name!r} misses deps {missing}"


def test_closure_follows_lazy_imports():
    names = {str(p.relative_to(codehash.ROOT)) for p in codehash.closure(["nanoseg.model.training"])}
    assert {"model/training.py", "model/losses.py", "model/network.py", "model/targets.py", "model/input_pipeline.py",
            "model/precision.py", "model/__init__.py"} <= names
    cv = {str(p.relative_to(codehash.ROOT)) for p in codehash.closure(["nanoseg.pipeline.stages.cv"])}
    assert {"pipeline/crossval.py", "evaluation/metrics.py", "evaluation/scoring.py", "tracking/__init__.py",
            "pipeline/stages/cv.py", "pipeline/stages/__init__.py"} <= cv


def test_resume_key_changes_with_the_training_code(monkeypatch):
    import pandas as pd

    from nanoseg.config import load_params

    params = load_params(REPO / "params.yaml", profile="smoke")
    manifest = pd.DataFrame({"image_sha256": ["a", "b"]})
    split = {"train": ["a"], "test": ["b"], "folds": []}
    key = crossval.config_key(params, manifest, split)
    monkeypatch.setattr(codehash, "code_hash", lambda modules: "changed-losses-py")
    assert crossval.config_key(params, manifest, split) != key  # a change to losses.py trains the folds again
    monkeypatch.undo()
    assert crossval.config_key(params, manifest, split) == key
    # what to publish is not how a fold trains: the key ignores it
    params["train"]["candidate"] = "best_fold"
    assert crossval.config_key(params, manifest, split) == key
    # nor the decoder grid searched on the validation maps after training
    params["instance"] = {**params["instance"], "marker_grid": [0.5, 0.9], "min_marker_grid": [0, 50]}
    assert crossval.config_key(params, manifest, split) == key
    params["instance"]["class_weights"] = [1.0, 1.0, 9.0]
    assert crossval.config_key(params, manifest, split) != key
    assert crossval.inference_key(params, key) != crossval.inference_key({**params, "predict": {
        **params["predict"], "overlap": 0}}, key)
    # predict.tta makes the validation maps again (folds not retrained); off, the keys of earlier CVs stay valid
    tta = crossval.inference_key({**params, "predict": {**params["predict"], "tta": True}}, key)
    assert tta != crossval.inference_key(params, key)
    assert crossval.inference_key({**params, "predict": {**params["predict"], "tta": False}}, key) == \
        crossval.inference_key(params, key)
