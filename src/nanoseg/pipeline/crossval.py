"""K-fold cross-validation, tracked in MLflow, resumable.

One MLflow parent run (``cv-<label>-<profile>``, label ``paper`` or
``instance-<head>``, tags ``variant`` and ``instance_head``) with a nested run per fold
(``fold-<k>``): parameters, per-epoch loss/Dice, the fold's model, learning
curves and overlays. Each finished fold leaves ``cv/fold_<k>/result.json`` and
its validation probability maps; a re-run with the same settings and data
(same ``config_key``) skips finished folds and continues under the same parent
run. The decision threshold is chosen on the pooled validation predictions of
all folds (never on test images) and the 7 pixel metrics are reported per fold
and as mean ± std. The instance variant (``model.variant: instance``) trains on
targets derived from the masks (:mod:`nanoseg.model.targets`); its pixel metrics use
the foreground probability and its decoder settings (marker threshold, minimum
marker size) are chosen on the pooled validation predictions too.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import numpy as np

from nanoseg.atomic import atomic_path, copy_file, write_json
from nanoseg.config import resolve
from nanoseg.data.manifest import load_rows
from nanoseg.postprocess.decode import foreground_probability
from nanoseg.model.targets import instance_settings

PAPER = {"dice": 0.940, "iou": 0.887, "accuracy": 0.993}  # Sanan & Isaac, mean over folds


#: The code a fold's trained weights depend on (with every nanoseg module it imports: nanoseg.codehash).
TRAINING_CODE = ("nanoseg.model.training",)
#: The code its validation probability maps depend on, beyond the weights.
INFERENCE_CODE = ("nanoseg.inference.tiling",)
INFERENCE_FILES = ("inference/predictor.py",)  # Predictor lives in inference/predictor.py, whose command imports half the package


#: ``train`` settings that choose what is published or when to warn, not how a fold trains (left out of the key)
PUBLISH_ONLY = ("candidate", "final_val_fold", "warn_below_steps")
#: ``instance`` settings of the decoder grid, searched on the validation maps after training (left out of the key)
DECODE_ONLY = ("marker_grid", "min_marker_grid")


def config_key(params: dict, manifest, split: dict) -> str:
    """A hash of everything a fold's trained model depends on: settings, split, image bytes and the
    training code (:data:`TRAINING_CODE` and its imports), so that a change to e.g. losses.py trains again."""
    from nanoseg.codehash import code_hash

    keep = {k: params[k] for k in ("model", "train", "data") if k in params}
    keep["train"] = {k: v for k, v in keep["train"].items() if k not in PUBLISH_ONLY}
    if params["model"]["variant"] == "instance":  # the paper variant's key ignores instance settings
        keep["instance"] = {k: v for k, v in instance_settings(params).items() if k not in DECODE_ONLY}
    blob = json.dumps([keep, split, sorted(manifest["image_sha256"]), code_hash(TRAINING_CODE)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def inference_key(params: dict, key: str) -> str:
    """A hash of what a fold's validation probability maps depend on besides its model: tiling settings and code.
    A finished fold whose maps were made otherwise is predicted again from its saved model (not retrained)."""
    from nanoseg.codehash import ROOT, code_hash

    files = b"".join((ROOT / f).read_bytes() for f in INFERENCE_FILES)
    predict = {k: params["predict"][k] for k in ("tile", "overlap")}
    if params["predict"].get("tta"):  # named only when on, so the keys of CVs made before the setting stay valid
        predict["tta"] = True
    blob = json.dumps([key, predict, code_hash(INFERENCE_CODE), hashlib.sha256(files).hexdigest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data, default=float)


def _save_probs(path: Path, stems, probs) -> None:
    """The validation images' probability maps (float16), one array per stem, written atomically."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **{s: p.astype(np.float16) for s, p in zip(stems, probs)})


def predict_images(model, images, params: dict) -> list[np.ndarray]:
    """Probability maps for full images, through the same overlap-tile path as ``nanoseg predict``
    (with its 8-view test-time augmentation when ``predict.tta``, so the decoder is tuned on such maps)."""
    from nanoseg.inference.predictor import Predictor

    p = params["predict"]
    predictor = Predictor(model, tile=int(p["tile"]), overlap=int(p["overlap"]), batch=int(p["batch"]),
                          tta=bool(p.get("tta")))
    return [predictor.probability(im) for im in images]


def variant_params(params: dict) -> dict:
    """What to log as run parameters: ``model`` and ``train``, plus ``instance`` for the instance variant."""
    out = {"train": params["train"], "model": params["model"]}
    if params["model"]["variant"] == "instance":
        out["instance"] = instance_settings(params)
    return out


def run_label(params: dict) -> str:
    """``paper`` or ``instance-<head>``: names runs so both variants and both heads compare side by side."""
    if params["model"]["variant"] == "instance":
        return f"instance-{instance_settings(params)['head']}"
    return params["model"]["variant"]


def variant_tags(params: dict) -> dict:
    """MLflow tags ``variant`` (and ``instance_head`` for the instance variant)."""
    tags = {"variant": params["model"]["variant"]}
    if tags["variant"] == "instance":
        tags["instance_head"] = instance_settings(params)["head"]
    return tags


def run_fold(k: int, fold: dict, manifest, params: dict, fold_dir: Path, key: str) -> dict:
    """Train and validate fold ``k`` inside a nested MLflow run; write ``result.json``."""
    import keras

    from nanoseg import tracking
    from nanoseg.data.manifest import pixel_sizes
    from nanoseg.evaluation.scoring import training_scale
    from nanoseg.evaluation.metrics import pixel_metrics
    from nanoseg.model.network import save_model
    from nanoseg.report.plots import learning_curves
    from nanoseg.machine import cpu_model
    from nanoseg.model.training import Backup, fit, save_history_csv

    root = params["_root"]
    tr_img, tr_mask = load_rows(manifest, fold["train"], root)
    va_img, va_mask = load_rows(manifest, fold["val"], root)
    fold_dir.mkdir(parents=True, exist_ok=True)
    # an interrupted fold resumes after its last finished epoch, in its own MLflow run (same resume key)
    backup = Backup(fold_dir / "backup", key=key)
    resumed = (backup.state or {}).get("run_id")
    if backup.state and tracking.run_status(resumed) is None:  # its MLflow run is gone: start over
        backup.discard()
        resumed = None
    tags = {"stage": "cv", "fold": str(k), **variant_tags(params), "profile": params["profile"], "cpu": cpu_model()}
    with tracking.start_run(f"fold-{k}", nested=True, tags=tags, run_id=resumed,
                            params=None if resumed else {"fold": k, "variant": params["model"]["variant"],
                                                         "n_train": len(tr_img), "n_val": len(va_img),
                                                         **variant_params(params)}) as run:
        backup.extra["run_id"] = run.info.run_id
        model, history, info = fit(tr_img, tr_mask, va_img, va_mask, params, log=tracking.log_metrics,
                                   label=f"fold {k}", backup=backup)
        probs = predict_images(model, va_img, params)
        metrics = pixel_metrics(va_mask, [foreground_probability(p) for p in probs], threshold=0.5)
        tracking.log_metrics({f"val_{m}_at_0.5": v for m, v in metrics.items()})
        tracking.log_params(tracking.compare_params(params, cpu_model(), info["steps_done"]))
        tracking.log_metrics({"best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
                              "train_seconds": info["seconds"], "steps_done": info["steps_done"],
                              "lr_final": info["lr_final"]})
        save_history_csv(history, fold_dir / "history.csv")
        curve = learning_curves(history, fold_dir / "learning_curves.png", title=f"fold {k}")
        tracking.log_artifact(curve, "plots")
        meta = {"variant": params["model"]["variant"], "profile": params["profile"], "fold": k, "threshold": 0.5,
                "val": list(fold["val"]), "tile": params["predict"]["tile"], "overlap": params["predict"]["overlap"],
                "crop": params["train"]["crop"], "mlflow_run_id": run.info.run_id,
                "training_scale": training_scale(tr_mask, pixel_sizes(manifest, fold["train"])), **info}
        if params["model"]["variant"] == "instance":
            meta["instance"] = instance_settings(params)
        # kept on disk: the candidates for publishing (ensemble, best fold) are built from these
        folder = save_model(model, fold_dir / "model", meta)
        tracking.log_artifact(folder, "model")
        _save_probs(fold_dir / "val_probs.npz", fold["val"], probs)
        result = {"fold": k, "key": key, "inference_key": inference_key(params, key), "run_id": run.info.run_id,
                  "val": fold["val"], **info, "metrics_at_0.5": metrics}
        _write_json(fold_dir / "result.json", result)
    del model
    keras.backend.clear_session()
    gc.collect()
    return result


INSTANCE_KEYS = tuple(f"{k}{sub}" for sub in ("", "_clean") for k in
                      ("f1_50", "f1_75", "pq", "median_ecd_rel_error", "ecd_wasserstein", "n_gt", "n_pred")) + (
    "matched_ecd_bias", "err_merged_share")


def choose_postprocess(truths, probs, threshold: float, params: dict, pixel_size_nm) -> dict:
    """Instance post-processing settings (split or not, seed distance) that maximise instance F1@0.5
    on the pooled validation predictions — validation folds only, never test images.
    Instance-variant outputs go to :func:`choose_instance_postprocess`."""
    from nanoseg.evaluation.scoring import truth_labels
    from nanoseg.evaluation.selection import tune_split_params
    from nanoseg.postprocess.decode import min_area_px

    if params["model"]["variant"] == "instance":
        return choose_instance_postprocess(truths, probs, threshold, params, pixel_size_nm)
    post = params["postprocess"]
    area = min_area_px(post, pixel_size_nm)
    grid = {"threshold": [threshold], "opening_radius": [int(post["opening_radius"])],
            "min_area_px": [area], "split": [False, True],
            "min_distance_px": list(post["min_distance_grid"])}
    best = tune_split_params(probs, [truth_labels(t) for t in truths], grid)
    return {"opening_radius": int(post["opening_radius"]), "min_area_nm2": float(post["min_area_nm2"]),
            "split": bool(best["split"]), "min_distance_px": int(best["min_distance_px"]),
            "val_f1_50": float(best["f1_50"]), "val_f1_50_clean": float(best["f1_50_clean"])}


def choose_instance_postprocess(truths, probs, threshold: float, params: dict, pixel_size_nm) -> dict:
    """Decoder settings of the instance variant (marker threshold, minimum marker size) that maximise
    instance F1@0.5 on the pooled validation predictions (grids ``instance.marker_grid`` and
    ``instance.min_marker_grid``) — validation folds only, never test images."""
    from nanoseg.evaluation.scoring import truth_labels
    from nanoseg.evaluation.selection import tune_instance_params
    from nanoseg.postprocess.decode import min_area_px

    post = params["postprocess"]
    inst = instance_settings(params)
    radius = int(post["opening_radius"])
    grid = {"threshold": [threshold], "opening_radius": [radius], "min_area_px": [min_area_px(post, pixel_size_nm)],
            "marker_threshold": [float(v) for v in inst["marker_grid"]],
            "min_marker_px": [int(v) for v in inst["min_marker_grid"]]}
    best = tune_instance_params(probs, [truth_labels(t) for t in truths], grid, decoder=inst["head"])
    return {"decoder": inst["head"], "opening_radius": radius, "min_area_nm2": float(post["min_area_nm2"]),
            "marker_threshold": float(best["marker_threshold"]), "min_marker_px": int(best["min_marker_px"]),
            "val_f1_50": float(best["f1_50"]), "val_f1_50_clean": float(best["f1_50_clean"])}


def tune_own(truths, probs, pixel_sizes_nm, params: dict, pixel_size_nm) -> dict:
    """One model's own decision threshold and post-processing, tuned on its validation images ``truths`` /
    ``probs`` (each with its pixel size in ``pixel_sizes_nm``; ``pixel_size_nm`` sets the grid's minimum area),
    and the scores they give there: ``{"threshold", "postprocess", "scores"}`` (a fold's ``per_fold_own``)."""
    from nanoseg.evaluation.metrics import choose_threshold
    from nanoseg.evaluation.scoring import score
    from nanoseg.postprocess.decode import segment

    threshold = float(choose_threshold(truths, [foreground_probability(p) for p in probs]))
    post = choose_postprocess(truths, probs, threshold, params, pixel_size_nm)
    labels = [segment(p, threshold, post, px)[1] for p, px in zip(probs, pixel_sizes_nm)]
    return {"threshold": threshold, "postprocess": post,
            "scores": score(truths, probs, labels, pixel_sizes_nm, threshold=threshold)}


def finished_fold(fold_dir: Path, key: str) -> dict | None:
    """The fold's ``result.json`` when it was trained with the same settings, data and training code."""
    f = fold_dir / "result.json"
    if f.is_file() and (fold_dir / "val_probs.npz").is_file() and (fold_dir / "model" / "nanoseg.json").is_file():
        result = json.loads(f.read_text())
        if result.get("key") == key:
            return result
    return None


def refresh_val_probs(result: dict, fold: dict, manifest, params: dict, fold_dir: Path) -> dict:
    """Predict a finished fold's validation images again from its saved model when the inference code or
    tiling settings changed since (its weights are still valid: same training key)."""
    wanted = inference_key(params, result["key"])
    if result.get("inference_key") == wanted:
        return result
    from nanoseg.model.network import load_model

    print(f"fold {result['fold']}: inference code or tiling changed; predicting its validation images again")
    model, _ = load_model(fold_dir / "model")
    va_img, _ = load_rows(manifest, fold["val"], params["_root"])
    probs = predict_images(model, va_img, params)
    _save_probs(fold_dir / "val_probs.npz", fold["val"], probs)
    result = {**result, "inference_key": wanted}
    _write_json(fold_dir / "result.json", result)
    return result


def run_cv(params: dict, manifest, split: dict, out_dir: Path) -> dict:
    """Cross-validate; return the summary written to ``metrics/cv.json``."""
    from tqdm import tqdm

    from nanoseg import tracking
    from nanoseg.evaluation.error_analysis import classify_errors, merged_mask, summarize_errors
    from nanoseg.data.manifest import median_pixel_size, pixel_sizes
    from nanoseg.evaluation.scoring import score, truth_labels
    from nanoseg.postprocess.decode import segment
    from nanoseg.evaluation.metrics import PIXEL_METRICS, choose_threshold, summarize_folds
    from nanoseg.report.plots import error_bars, error_overlay, metric_bars
    from nanoseg.machine import cpu_model
    from nanoseg.model.training import budget_warning

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = config_key(params, manifest, split)
    state_file = out_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    tracking.setup(params=params)
    parent_id = state.get("parent_run_id") if state.get("key") == key else None
    if tracking.run_status(parent_id) is None:
        parent_id = None
    variant = params["model"]["variant"]
    name = f"cv-{run_label(params)}-{params['profile']}"
    tags = {"stage": "cv", **variant_tags(params), "profile": params["profile"], "config_key": key}
    with tracking.start_run(name, tags=tags, run_id=parent_id,
                            params=None if parent_id else {**variant_params(params), "prepare": params["prepare"],
                                                           "variant": variant, "profile": params["profile"]}) as parent:
        _write_json(state_file, {"key": key, "parent_run_id": parent.info.run_id})
        results = []
        folds = split["folds"]
        for k, fold in enumerate(tqdm(folds, desc="cv folds", unit="fold")):
            fold_dir = out_dir / f"fold_{k}"
            done = finished_fold(fold_dir, key)
            if done:
                print(f"fold {k}: finished earlier with the same settings, data and training code "
                      f"(run {done['run_id']}), not trained again")
                results.append(refresh_val_probs(done, fold, manifest, params, fold_dir))
                continue
            results.append(run_fold(k, fold, manifest, params, fold_dir, key))

        # threshold from the pooled validation predictions of all folds
        root = params["_root"]
        truths, probs, per_fold_data = [], [], []
        for k, fold in enumerate(folds):
            stored = np.load(out_dir / f"fold_{k}" / "val_probs.npz")
            images, masks = load_rows(manifest, fold["val"], root)
            p = [stored[s].astype(np.float32) for s in fold["val"]]
            per_fold_data.append((images, masks, p, pixel_sizes(manifest, fold["val"])))
            truths += masks
            probs += p
        threshold = float(choose_threshold(truths, [foreground_probability(p) for p in probs]))
        plots_dir = resolve(params, "plots/cv")
        plots_dir.mkdir(parents=True, exist_ok=True)
        for k in range(len(folds)):
            copy_file(out_dir / f"fold_{k}" / "history.csv", plots_dir / f"fold_{k}.csv")
        px = median_pixel_size(manifest)  # only for the grid's minimum area; every image is scored with its own
        post = choose_postprocess(truths, probs, threshold, params, px)
        per_fold, own, classified = [], {}, []
        for k, (images, masks, p, pxs) in enumerate(per_fold_data):
            segs = [segment(pk, threshold, post, pk_px) for pk, pk_px in zip(p, pxs)]
            m = score(masks, p, [lab for _, lab in segs], pxs, threshold=threshold)
            per_fold.append(m)
            overlays = []
            for s, im, tr, (pred, lab) in zip(folds[k]["val"], images, masks, segs):
                gt = truth_labels(tr)
                classified.append(classify_errors(gt, lab))
                overlays.append(error_overlay(im, tr, pred, out_dir / f"fold_{k}" / f"overlay_{s}.png",
                                              title=f"fold {k} · {s} · threshold {threshold:.2f}",
                                              merged=merged_mask(gt, classified=classified[-1])))
            tracking.log_to_run(results[k]["run_id"], metrics={**{f"val_{n}": v for n, v in m.items()},
                                                               **tracking.compare_metrics(m, "val_")},
                                artifacts=overlays, artifact_path="overlays")
            # the fold model on its own: threshold and post-processing tuned on its validation images only
            # (what the `best_fold` publishing candidate carries)
            own[str(k)] = tune_own(masks, p, pxs, params, px)
        summary = summarize_folds(per_fold)
        stats = {n: {"mean": summary[n]["mean"], "std": summary[n]["std"]} for n in PIXEL_METRICS}
        bars = metric_bars(stats, resolve(params, "plots/cv_summary/metrics_mean_std.png"), list(PIXEL_METRICS),
                           title=f"{len(folds)}-fold CV ({run_label(params)}, {params['profile']} profile)",
                           reference=PAPER)
        tracking.log_artifact(bars, "plots")
        errors = summarize_errors(classified)  # counts over all validation images of all folds
        tracking.log_artifact(error_bars(errors, resolve(params, "plots/cv_summary/errors.png"),
                                         title=f"{len(folds)}-fold CV, all validation images"), "plots")
        best_epochs = [r["best_epoch"] for r in results]
        min_steps = params["train"].get("warn_below_steps")
        short = [(r, w) for r in results if (w := budget_warning(r, min_steps, f"fold {r['fold']}"))]
        warnings = [w for _, w in short]
        if short:  # a slow CPU under a wall-clock budget: say so wherever the CV's numbers are read
            tracking.set_tags({"warning": "under-trained: " + ", ".join(
                f"fold {r['fold']} {r['steps_done']} steps" for r, _ in short) + " (metrics/cv.json warnings)"})
        cv = {
            "threshold": threshold,
            "folds": len(folds),
            **{f"{n}_mean": stats[n]["mean"] for n in PIXEL_METRICS},
            **{f"{n}_std": stats[n]["std"] for n in PIXEL_METRICS},
            **{f"{n}_mean": summary[n]["mean"] for n in INSTANCE_KEYS if n in summary},
            **{f"{n}_std": summary[n]["std"] for n in INSTANCE_KEYS if n in summary},
            "best_epoch_median": int(np.median(best_epochs)),
            "steps_done": [int(r.get("steps_done", 0)) for r in results],
            "cpu": cpu_model(),
            "key": key,
            "profile": params["profile"],
            "postprocess": post,
            "tta": bool(params["predict"].get("tta")),  # the validation maps (and so the tuning) had 8-view TTA
            "per_fold": {str(k): m for k, m in enumerate(per_fold)},
            "per_fold_own": own,
            "errors": errors,
            "warnings": warnings,
        }
        tracking.log_metrics({k: v for k, v in cv.items() if isinstance(v, (int, float))})
        tracking.log_metrics(tracking.compare_metrics(cv, "val_"))  # fold means under the fold runs' names
        tracking.log_params(tracking.compare_params(params, cv["cpu"], int(np.median(cv["steps_done"]))))
        tracking.log_dict(cv, "cv.json")
    return cv
