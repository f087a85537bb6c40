"""Stage ``train``: the model to publish, ``models/final``, built as ``train.candidate`` says.

``ensemble`` (default): the cross-validation's fold models averaged in one model, threshold and
post-processing from the pooled out-of-fold predictions; ``best_fold``: the fold model with the
best validation clean F1@0.5, with its own tuned settings; ``final``: a model trained on the
training images less the validation images of fold ``train.final_val_fold``, best weights
restored by early stopping and settings tuned on those images. Every candidate's weights were
selected, and its settings tuned, on images it was not trained on (:mod:`nanoseg.model.candidates`).

Writes ``models/final/`` (model.keras + nanoseg.json; DVC-cached, not in git) and logs an MLflow run
``train-<label>-<profile>`` (tag ``candidate``).
"""

import gc
import json
import shutil
import sys
import time
from pathlib import Path

from nanoseg.atomic import copy_file, write_json
from nanoseg.config import load_params, resolve
from nanoseg.data.manifest import load_rows, read_prepared
from nanoseg.errors import NanosegError, report_errors

OUT = "models/final"


def check_cv(params: dict, cv: dict, cv_file, manifest, split) -> None:
    """Refuse a ``metrics/cv.json`` made with other settings, data or training code than now."""
    from nanoseg.pipeline.crossval import config_key
    from nanoseg.model.targets import instance_settings

    variant = params["model"]["variant"]
    decoder = (cv.get("postprocess") or {}).get("decoder")
    wanted = instance_settings(params)["head"] if variant == "instance" else None
    if decoder != wanted:
        raise NanosegError(f"{cv_file}: the cross-validation result is for another model variant/head "
                           f"(decoder {decoder!r}, settings ask for {wanted!r}); run `dvc repro cv` again.")
    if cv.get("key") != config_key(params, manifest, split):
        raise NanosegError(f"{cv_file}: the cross-validation was run with other settings, data or training code "
                           "than the current ones; run `dvc repro cv` again.")


def train_final(params: dict, manifest, split: dict, cv: dict, out, run_id: str) -> dict:
    """The ``final`` candidate: train on the training images less one fold's validation images, early stopping
    with best weights restored, threshold and post-processing tuned on the held-back images."""
    from nanoseg import tracking
    from nanoseg.pipeline.crossval import choose_postprocess, predict_images
    from nanoseg.data.manifest import median_pixel_size, pixel_sizes
    from nanoseg.evaluation.scoring import training_scale
    from nanoseg.evaluation.metrics import choose_threshold
    from nanoseg.model.network import save_model
    from nanoseg.report.plots import learning_curves
    from nanoseg.postprocess.decode import foreground_probability
    from nanoseg.model.targets import instance_settings
    from nanoseg.model.training import budget_warning, fit

    t = params["train"]
    k = int(t["final_val_fold"]) % len(split["folds"])
    val = list(split["folds"][k]["val"])
    train = [s for s in split["train"] if s not in set(val)]
    root = params["_root"]
    images, masks = load_rows(manifest, train, root)
    va_img, va_mask = load_rows(manifest, val, root)
    model, history, info = fit(images, masks, va_img, va_mask, params, log=tracking.log_metrics,
                               max_minutes=t["final_max_minutes"], label="final model")
    probs = predict_images(model, va_img, params)
    threshold = float(choose_threshold(va_mask, [foreground_probability(p) for p in probs]))
    post = choose_postprocess(va_mask, probs, threshold, params, median_pixel_size(manifest))
    meta = {"variant": params["model"]["variant"], "profile": params["profile"], "candidate": "final",
            "threshold": threshold, "postprocess": post, "tile": params["predict"]["tile"],
            "overlap": params["predict"]["overlap"], "tta": bool(params["predict"].get("tta")), "crop": t["crop"],
            "val": val, "n_train": len(train),
            "training_scale": training_scale(masks, pixel_sizes(manifest, train)),
            "tuned_on": f"{len(val)} held-back training images (validation images of fold {k})",
            "mlflow_run_id": run_id, **info}
    warning = budget_warning(info, t.get("warn_below_steps"), "final model")
    if warning:
        print(f"WARNING {warning}", file=sys.stderr)
        tracking.set_tags({"warning": f"under-trained: final model {info['steps_done']} steps"})
        meta["warnings"] = [warning]
    if params["model"]["variant"] == "instance":
        meta["instance"] = instance_settings(params)
    save_model(model, out, meta)
    curve = learning_curves(history, resolve(params, "plots/train/learning_curves.png"), title="final model")
    tracking.log_artifact(curve, "plots")
    tracking.log_metrics({"epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
                          "train_seconds": info["seconds"], "steps_done": info["steps_done"]})
    del model
    gc.collect()
    return meta


def _copy_member_curves(cv_dir: Path, folds, plots: Path) -> None:
    """The candidate's learning curves are its fold models' curves: copy them to ``plots/train``."""
    for k in folds:
        curve = Path(cv_dir) / f"fold_{k}" / "learning_curves.png"
        if curve.is_file():
            copy_file(curve, plots / f"fold_{k}_learning_curves.png")


def command(args=None) -> int:
    from nanoseg import tracking
    from nanoseg.model.candidates import CANDIDATES, make_best_fold, make_ensemble
    from nanoseg.pipeline.crossval import run_label, variant_params, variant_tags
    from nanoseg.machine import cpu_model

    params = load_params()
    manifest, split = read_prepared(resolve(params, "prepared"))
    cv_file = resolve(params, "metrics/cv.json")
    if not cv_file.is_file():
        raise NanosegError(f"{cv_file}: no cross-validation result; run `dvc repro cv` first.")
    cv = json.loads(cv_file.read_text())
    check_cv(params, cv, cv_file, manifest, split)
    candidate = params["train"]["candidate"]
    if candidate not in CANDIDATES:
        raise NanosegError(f"train.candidate = {candidate!r}: use one of {', '.join(CANDIDATES)} in params.yaml.")
    out = resolve(params, OUT)
    if out.exists():
        shutil.rmtree(out)
    tracking.setup(params=params)
    tags = {"stage": "train", **variant_tags(params), "profile": params["profile"], "candidate": candidate,
            "cpu": cpu_model()}
    start = time.monotonic()
    with tracking.start_run(f"train-{run_label(params)}-{params['profile']}", tags=tags,
                            params={"variant": params["model"]["variant"], "candidate": candidate,
                                    **variant_params(params)}) as run:
        common = {"mlflow_run_id": run.info.run_id, "cv_key": cv.get("key"),
                  "cv_dice_mean": cv.get("dice_mean"), "cv_f1_50_clean_mean": cv.get("f1_50_clean_mean")}
        plots = resolve(params, "plots/train")
        if plots.exists():
            shutil.rmtree(plots)
        plots.mkdir(parents=True)
        if candidate == "ensemble":
            _, meta = make_ensemble(resolve(params, "cv"), cv, out, common)
            _copy_member_curves(resolve(params, "cv"), range(int(cv["folds"])), plots)
        elif candidate == "best_fold":
            _, meta = make_best_fold(resolve(params, "cv"), cv, out, common)
            _copy_member_curves(resolve(params, "cv"), [meta["fold"]], plots)
        else:
            meta = train_final(params, manifest, split, cv, out, run.info.run_id)
            meta.update(common)
            write_json(out / "nanoseg.json", meta, default=str)
        tracking.log_dict(meta, "nanoseg.json")
    gc.collect()
    print(f"train: candidate {candidate!r} -> {OUT}/ ({time.monotonic() - start:.0f} s, MLflow run {run.info.run_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
