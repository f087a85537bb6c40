"""Instance variant vs paper variant (issue 9): cross-validation, then the held-out test images.

Candidates: ``paper`` (Dice loss on the mask), ``classes3`` (background /
interior / separating boundary, class-weighted CE + Dice), ``fg_distance``
(foreground + normalised distance, marker watershed); ``*_border`` use the
U-Net border weight map (``instance.loss: border_wcce_dice``).

Mode ``cv`` runs :func:`nanoseg.pipeline.crossval.run_cv` for every candidate (nested MLflow
runs in the project's experiment, run names ``cv-<label>-<profile>``), with a
time budget per fold; threshold and decoder settings come from the validation
folds only. It then trains each candidate's final model on all training images
(epochs: the CV median best epoch, ``--final-minutes`` cap), like the ``train`` stage.
Mode ``test`` scores those final models (or ``--model NAME=FOLDER``) on the test
images beside Otsu + morphology and Otsu + watershed: pixel Dice, F1@0.5,
F1@0.75, PQ, median ECD error, ECD Wasserstein (nm), particle counts, s/image.
Results: ``bench/results/instance_variants.json`` and ``.md`` (each mode
updates its part). Work files (fold outputs, models) go to ``bench/.work/``.

    python bench/instance_variants.py cv [--candidates paper,classes3,fg_distance] [--folds 0,1]
                                         [--minutes-per-fold 8] [--final-minutes 12]   (0: no final model)
    python bench/instance_variants.py test [--model paper=models/final]
    python bench/instance_variants.py all --smoke     # a tiny end-to-end check (~10 min on 2 CPU cores)

``--smoke`` uses the ``smoke`` profile on a small dataset cut from ``data.source``
(6 images of 224x320 px), a throw-away MLflow store, and writes
``bench/results/instance_variants_smoke.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"
WORK = ROOT / "bench/.work/instance_variants"
CANDIDATES = {
    "paper": {"model": {"variant": "paper"}},
    "classes3": {"model": {"variant": "instance"}, "instance": {"head": "classes3", "loss": "wcce_dice"}},
    "classes3_border": {"model": {"variant": "instance"}, "instance": {"head": "classes3", "loss": "border_wcce_dice"}},
    "fg_distance": {"model": {"variant": "instance"}, "instance": {"head": "fg_distance", "loss": "wcce_dice"}},
    "fg_distance_border": {"model": {"variant": "instance"},
                           "instance": {"head": "fg_distance", "loss": "border_wcce_dice"}},
}
KEYS = ("dice", "f1_50", "f1_75", "pq", "median_ecd_rel_error", "ecd_wasserstein", "n_gt", "n_pred")


def candidate_params(base: dict, name: str, work: Path) -> dict:
    """The settings of one candidate; its outputs (cv/, plots/) go to ``work/<name>``."""
    from nanoseg.config import merge_params

    if name not in CANDIDATES:
        raise SystemExit(f"unknown candidate {name!r}; choose from {sorted(CANDIDATES)}")
    params = merge_params(base, CANDIDATES[name])
    weights = params["model"].get("weights")
    if weights not in (None, "imagenet"):
        params["model"]["weights"] = str((Path(base["_root"]) / weights).resolve())
    params["_root"] = str(work / name)
    Path(params["_root"]).mkdir(parents=True, exist_ok=True)
    return params


def absolute_manifest(manifest, root: Path):
    """Manifest with absolute file paths, so candidates can work in their own folders."""
    manifest = manifest.copy()
    for col in ("image_path", "mask_path", "class_mask_path"):
        manifest[col] = [str((root / p).resolve()) if isinstance(p, str) and p else p for p in manifest[col]]
    return manifest


def smoke_dataset(base: dict, work: Path, n: int = 6, rows: int = 224, cols: int = 320, bar: int = 32) -> Path:
    """A small dataset in the BAM layout cut from ``data.source`` (never modified), prepared."""
    import tifffile

    from nanoseg.config import resolve
    from nanoseg.data.manifest import prepare
    from nanoseg.io.micrograph import read_image_array, read_micrograph

    d = base["data"]
    src, out = resolve(base, d["source"]), work / "dataset"
    for sub in (d["images"], d["masks"], d["class_masks"]):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for path in sorted((src / d["images"]).glob("*.tif"))[:n]:
        mg = read_micrograph(path)
        m = read_image_array(src / d["masks"] / f"{path.stem}{d['mask_suffix']}.tif")
        cm = read_image_array(src / d["class_masks"] / f"{path.stem}{d['class_mask_suffix']}.tif")
        r0, c0 = max(((r, c) for r in range(0, 704 - rows + 1, 32) for c in range(0, 1024 - cols + 1, 64)),
                     key=lambda rc: (m[rc[0]: rc[0] + rows, rc[1]: rc[1] + cols] > 0).mean())
        img = np.concatenate([mg.pixels[r0: r0 + rows, c0: c0 + cols], mg.pixels[712: 712 + bar, :cols]])
        px_per_cm = 1e7 / mg.pixel_size_nm
        tifffile.imwrite(out / d["images"] / path.name, (img * 255).round().astype(np.uint8),
                         resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
        mask = np.concatenate([m[r0: r0 + rows, c0: c0 + cols], np.zeros((bar, cols), m.dtype)])
        tifffile.imwrite(out / d["masks"] / f"{path.stem}{d['mask_suffix']}.tif", mask)
        tifffile.imwrite(out / d["class_masks"] / f"{path.stem}{d['class_mask_suffix']}.tif",
                         cm[r0: r0 + rows, c0: c0 + cols])
    params = copy.deepcopy(base)
    params["_root"], params["data"]["dir"] = str(work), str(out)
    prepare(params, work / "prepared", progress=False)
    return work / "prepared"  # manifest paths relative to work


def cv_mode(base, manifest, split, names, args, work) -> dict:
    """Cross-validate every candidate, then train its final model; return ``{name: summary}``."""
    import gc

    import keras

    from nanoseg.data.manifest import load_rows
    from nanoseg.model.network import save_model
    from nanoseg.pipeline.crossval import run_cv
    from nanoseg.model.training import fit

    folds = split["folds"] if args.folds is None else [split["folds"][int(k)] for k in args.folds.split(",")]
    out = {}
    for name in names:
        params = candidate_params(base, name, work)
        if args.minutes_per_fold is not None:
            params["train"]["max_minutes_per_fold"] = args.minutes_per_fold
        start = time.monotonic()
        cv = run_cv(params, manifest, {**split, "folds": folds}, Path(params["_root"]) / "cv")
        cv_seconds = time.monotonic() - start
        info = {"epochs_run": None, "seconds": None}
        if args.final_minutes != 0:  # 0: compare on the validation folds only, no final model
            images, masks = load_rows(manifest, split["train"], params["_root"])
            epochs = max(1, int(cv["best_epoch_median"]))
            minutes = args.final_minutes if args.final_minutes is not None else params["train"].get("final_max_minutes")
            model, _, info = fit(images, masks, None, None, params, epochs=epochs, max_minutes=minutes,
                                 label=f"{name} final model")
            meta = {"variant": params["model"]["variant"], "profile": params["profile"], "threshold": cv["threshold"],
                    "postprocess": cv["postprocess"], "tile": params["predict"]["tile"],
                    "overlap": params["predict"]["overlap"], "epochs": info["epochs_run"], "candidate": name}
            if params["model"]["variant"] == "instance":
                meta["instance"] = params["instance"]
            save_model(model, work / name / "model", meta)
            del model
            keras.backend.clear_session()
            gc.collect()
        out[name] = {**{k: cv.get(f"{k}_mean") for k in KEYS}, **{f"{k}_std": cv.get(f"{k}_std") for k in KEYS},
                     "threshold": cv["threshold"], "postprocess": cv["postprocess"], "folds": len(folds),
                     "max_minutes_per_fold": params["train"].get("max_minutes_per_fold"),
                     "best_epoch_median": cv["best_epoch_median"], "cv_seconds": round(cv_seconds, 1),
                     "final_epochs": info["epochs_run"], "final_seconds": info["seconds"]}
        print(f"{name}: CV Dice {out[name]['dice']:.3f}, F1@0.5 {out[name]['f1_50']:.3f} "
              f"({len(folds)} folds, {cv_seconds / 60:.1f} min)", flush=True)
    return out


def reference_row(path: Path, folds: list[int] | None) -> dict:
    """A row from an earlier pipeline CV (``metrics/cv.json``): mean/std of its ``per_fold`` scores over
    ``folds`` (its threshold and post-processing were chosen on all of its folds), so a candidate run
    on a few folds compares with the paper model without training it again."""
    cv = json.loads(Path(path).read_text())
    keys = sorted(cv["per_fold"], key=int) if folds is None else [str(k) for k in folds]
    rows = [cv["per_fold"][k] for k in keys]
    out = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
    out.update({f"{k}_std": float(np.std([r[k] for r in rows])) for k in KEYS})
    return {**out, "threshold": cv["threshold"], "postprocess": cv["postprocess"], "folds": len(rows),
            "source": str(path), "cv_seconds": float("nan")}


def test_mode(base, manifest, split, models: dict, work) -> dict:
    """Score models and the Otsu baselines on the test images; return ``{method: scores}``."""
    from nanoseg.config import resolve
    from nanoseg.evaluation.scoring import score
    from nanoseg.postprocess.decode import DEFAULT_POST, min_area_px, segment
    from nanoseg.measure.particles import particle_table
    from nanoseg.model.network import load_model
    from nanoseg.postprocess.decode import baseline_instances, foreground_probability
    from nanoseg.inference.predictor import Predictor
    from nanoseg.data.heldout import load_test

    test = load_test(base, manifest, split)
    stems, images, masks, class_masks = test.stems, test.images, test.masks, test.class_masks
    px = float(np.nanmedian(manifest["pixel_size_nm"])) if manifest["pixel_size_nm"].notna().any() else None
    p = base["predict"]
    out = {}
    for name, folder in models.items():
        model, meta = load_model(resolve(base, folder))
        predictor = Predictor(model, tile=int(p["tile"]), overlap=int(p["overlap"]), batch=int(p["batch"]))
        predictor.probability(images[0])  # trace once, outside the timing
        threshold, post = float(meta["threshold"]), meta.get("postprocess", {})
        probs, labels, start = [], [], time.perf_counter()
        for im in images:  # timed like `nanoseg predict`: probability -> mask -> instances -> particle table
            prob = predictor.probability(im)
            probs.append(prob)
            labels.append(segment(prob, threshold, post, px)[1])
            particle_table(labels[-1].astype(np.int32), px, foreground_probability(prob))
        seconds = (time.perf_counter() - start) / len(images)
        out[name] = {**score(masks, probs, labels, px, class_masks, threshold=threshold), "s_per_image": seconds,
                     "variant": meta.get("variant"), "decoder": post.get("decoder"), "model": str(folder)}
    area = max(min_area_px(DEFAULT_POST, px), 1)
    for name, ws in (("otsu", False), ("otsu_watershed", True)):
        start = time.perf_counter()
        labels = [baseline_instances(im, watershed=ws, min_area_px=area) for im in images]
        for lab in labels:
            particle_table(lab.astype(np.int32), px)
        seconds = (time.perf_counter() - start) / len(images)
        out[name] = {**score(masks, [lab > 0 for lab in labels], labels, px, class_masks), "s_per_image": seconds}
    return {"n_images": len(stems), "pixel_size_nm": px, "methods": out}


def _fmt(v, spec=".3f"):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def write_results(result: dict, stem: Path) -> None:
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, float)):
            return None if not np.isfinite(v) else float(v)
        return v.item() if isinstance(v, np.generic) else v

    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(clean(result), indent=2) + "\n")
    lines = [f"# Instance variants ({result.get('profile')} profile{', SMOKE: tiny data, numbers mean nothing' if result.get('smoke') else ''})",
             "", f"{result.get('date')}, {result.get('machine')}. Written by `bench/instance_variants.py`.", ""]
    if result.get("cv"):
        lines += ["## Cross-validation (validation folds; threshold and decoder chosen there)", "",
                  "| candidate | Dice | F1@0.5 | F1@0.75 | PQ | median ECD err | ECD W1 (nm) | n gt | n pred | decoder | CV min |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in result["cv"].items():
            post = r.get("postprocess") or {}
            dec = (f"{post['decoder']} m≥{post['marker_threshold']:g}, {post['min_marker_px']} px" if post.get("decoder")
                   else f"split={post.get('split')}, d={post.get('min_distance_px')}")
            lines.append(f"| {name} | {_fmt(r['dice'])} | {_fmt(r['f1_50'])} | {_fmt(r['f1_75'])} | {_fmt(r['pq'])} | "
                         f"{_fmt(r['median_ecd_rel_error'], '+.1%')} | {_fmt(r['ecd_wasserstein'], '.1f')} | "
                         f"{_fmt(r['n_gt'], '.0f')} | {_fmt(r['n_pred'], '.0f')} | {dec} | {_fmt(r['cv_seconds'] / 60 if r.get('cv_seconds') is not None else None, '.1f')} |")
        folds = sorted({r.get("folds") for r in result["cv"].values()})
        lines += ["", f"Means over {', '.join(map(str, folds))} validation fold(s) per row."]
        for name, r in result["cv"].items():
            if r.get("source"):
                lines.append(f"`{name}`: not trained again — its per-fold scores on the same folds from `{r['source']}` "
                             "(an earlier pipeline CV; its threshold and post-processing were chosen on all of its folds).")
        lines.append("")
    if result.get("test"):
        t = result["test"]
        lines += [f"## Test images ({t['n_images']})", "",
                  "| method | Dice | F1@0.5 | F1@0.75 | PQ | median ECD err | ECD W1 (nm) | n gt | n pred | s/image |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in t["methods"].items():
            lines.append(f"| {name} | {_fmt(r['dice'])} | {_fmt(r['f1_50'])} | {_fmt(r['f1_75'])} | {_fmt(r['pq'])} | "
                         f"{_fmt(r['median_ecd_rel_error'], '+.1%')} | {_fmt(r['ecd_wasserstein'], '.1f')} | "
                         f"{_fmt(r['n_gt'], '.0f')} | {_fmt(r['n_pred'], '.0f')} | {_fmt(r['s_per_image'], '.2f')} |")
        lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from nanoseg.config import load_params, resolve
    from nanoseg.data.manifest import read_prepared

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("cv", "test", "all"))
    ap.add_argument("--candidates", default="paper,classes3,fg_distance")
    ap.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    ap.add_argument("--minutes-per-fold", type=float, default=None)
    ap.add_argument("--final-minutes", type=float, default=None)
    ap.add_argument("--reference-cv", default=None,
                    help="a paper-variant metrics/cv.json: its per-fold scores on --folds become the row 'paper'")
    ap.add_argument("--model", action="append", default=[], help="NAME=FOLDER: score this model in test mode")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny data, smoke profile, throw-away MLflow store")
    args = ap.parse_args(argv)

    base = load_params(ROOT / "params.yaml", profile="smoke" if args.smoke else args.profile)
    work = WORK / ("smoke" if args.smoke else base["profile"])
    stem = RESULTS / ("instance_variants_smoke" if args.smoke else "instance_variants")
    if args.smoke:
        work.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='mlruns-', dir=work)}/mlflow.db"
        prepared, data_root = smoke_dataset(base, work), work
    else:
        prepared, data_root = resolve(base, "prepared"), Path(base["_root"])
    manifest, split = read_prepared(prepared)
    manifest = absolute_manifest(manifest, data_root)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    result = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else {}
    result.update(date=str(date.today()), profile=base["profile"], smoke=args.smoke,
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    if args.mode in ("cv", "all"):
        result["cv"] = {**(result.get("cv") or {}), **cv_mode(base, manifest, split, names, args, work)}
        if args.reference_cv:
            folds = None if args.folds is None else [int(k) for k in args.folds.split(",")]
            result["cv"]["paper"] = reference_row(Path(args.reference_cv), folds)
        write_results(result, stem)
    if args.mode in ("test", "all"):
        models = dict(m.split("=", 1) for m in args.model) or {
            n: str(work / n / "model") for n in names if (work / n / "model").is_dir()}
        result["test"] = test_mode(base, manifest, split, models, work)
        write_results(result, stem)
    print(f"-> {stem.with_suffix('.json').relative_to(ROOT)}, {stem.with_suffix('.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
