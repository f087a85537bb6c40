"""Flip/rotation TTA of the separation map (issue 14): does averaging the views split more merges?

For each fold model of a cross-validation (``cv/fold_<k>/model``) the validation images are predicted once
per dihedral view (rot90 x horizontal flip) through ``nanoseg predict``'s :class:`Predictor`, and the
views are averaged in four sets: 1 (no TTA), 2 (+ horizontal flip), 4 (the four flips, no transposition)
and 8 (all, what ``--tta`` runs). Each set gets its own threshold and decoder tuned on the fold's
validation images (as CV tunes a fold model's ``per_fold_own`` settings) and is scored there by
evaluate's code: clean F1@0.5/0.75, PQ, the error classes and the median ECD error. The held-out test
images are then scored by :func:`nanoseg.evaluation.model_scores.score_model` (``nanoseg predict``'s own
path) with and without ``--tta``, each with the settings tuned on validation for that set.

    python bench/tta.py --cv bench/.work/lowres/none/cv --name tta

Writes bench/results/<name>.json and <name>.md (machine and date in the file; ``--table`` writes the .md again
from the .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VIEWS = [(k, flip) for k in range(4) for flip in (False, True)]  # the order Predictor's TTA runs them
SETS = {"1": [(0, False)], "2": [(0, False), (0, True)], "4": [(0, False), (0, True), (2, False), (2, True)],
        "8": VIEWS}
KEYS = ("dice", "f1_50_clean", "f1_75_clean", "pq_clean", "median_ecd_rel_error_clean", "matched_ecd_bias",
        "err_merged", "err_split", "err_missed", "err_outline", "err_pred_spurious", "err_pred_fragment")


def views(predictor, image) -> dict:
    """The un-transformed prediction of every dihedral view of ``image`` (Predictor's TTA, kept apart)."""
    from nanoseg.model.targets import dihedral, output_vectors

    out = {}
    for k, flip in VIEWS:
        pred = predictor.probability(np.ascontiguousarray(dihedral(image, k, flip)))
        out[(k, flip)] = dihedral(pred, k, flip, output_vectors(pred), invert=True)
    return out


def own_folder(model_dir: Path, dest: Path, threshold: float, post: dict) -> Path:
    """A model folder that shares ``model_dir``'s weights and carries ``threshold`` and ``post``."""
    dest.mkdir(parents=True, exist_ok=True)
    meta = json.loads((model_dir / "nanoseg.json").read_text())
    meta.update(threshold=threshold, postprocess={k: v for k, v in post.items() if not k.startswith("val_")})
    (dest / "nanoseg.json").write_text(json.dumps(meta, indent=2, default=str))
    link = dest / "model.keras"
    if not link.exists():
        link.symlink_to((model_dir / "model.keras").resolve())
    return dest


def render(record: dict) -> str:
    """The Markdown table of a run (bench/results/<name>.md) from its JSON record."""
    lines = [f"### Flip/rotation TTA of the separation map ({record['date']}, {record['machine']}; fold models of "
             f"`{record['cv']}`)", "",
             "Views averaged: 1 = no TTA, 2 = + horizontal flip, 4 = the four flips, 8 = the dihedral group "
             "(`--tta`). Threshold and decoder tuned per fold and view set on the fold's validation images; "
             "test rows: `nanoseg predict`'s path with those settings (marker threshold / smallest marker in px). Error counts: unmatched clean manual "
             "particles (merged / split / missed / outline) and unmatched predictions (spurious / fragment).", "",
             "| fold | images | views | clean F1@0.5 | F1@0.75 | PQ | median ECD | matched bias | Dice | merged | split "
             "| missed | outline | spurious | fragment | marker thr. / min px | s/image |",
             "|" + "---|" * 17]
    for r in record['rows']:
        lines.append(
            f"| {r['fold']} | {r['images']} | {r['views']} | {r['f1_50_clean']:.3f} | {r['f1_75_clean']:.3f} "
            f"| {r['pq_clean']:.3f} | {r['median_ecd_rel_error_clean']:+.1%} | {r['matched_ecd_bias']:+.1%} "
            f"| {r['dice']:.3f} | " + " | ".join(f"{r[e]:.0f}" for e in KEYS[6:])
            + f" | {r['decoder'].get('marker_threshold', '')} / {r['decoder'].get('min_marker_px', '')} "
            f"| {r['s_per_image']:.1f} |")
    for images in ("validation", "test"):
        for name in SETS:
            sel = [r for r in record['rows'] if r["images"] == images and r["views"] == int(name)]
            if sel:
                lines.append(f"| mean | {images} | {name} | " + f"{np.mean([r['f1_50_clean'] for r in sel]):.3f} | "
                             f"{np.mean([r['f1_75_clean'] for r in sel]):.3f} | {np.mean([r['pq_clean'] for r in sel]):.3f} | "
                             f"{np.mean([r['median_ecd_rel_error_clean'] for r in sel]):+.1%} | "
                             f"{np.mean([r['matched_ecd_bias'] for r in sel]):+.1%} | "
                             f"{np.mean([r['dice'] for r in sel]):.3f} | "
                             + " | ".join(f"{np.sum([r[e] for r in sel]):.0f}" for e in KEYS[6:]) + " | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from nanoseg.config import load_params, resolve
    from nanoseg.data.heldout import load_test
    from nanoseg.data.manifest import load_rows, median_pixel_size, pixel_sizes, read_prepared
    from nanoseg.evaluation.model_scores import score_model
    from nanoseg.inference.loading import load_predictor
    from nanoseg.machine import cpu_model
    from nanoseg.pipeline.crossval import tune_own

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv", default="cv", help="a cross-validation folder with fold_<k>/model and result.json")
    ap.add_argument("--test", type=int, default=1, help="score the test images too (1) or not (0)")
    ap.add_argument("--name", default="tta")
    ap.add_argument("--table", action="store_true", help="only write <name>.md again from <name>.json")
    args = ap.parse_args()
    if args.table:
        record = json.loads((ROOT / f"bench/results/{args.name}.json").read_text())
        (ROOT / f"bench/results/{args.name}.md").write_text(render(record))
        return 0
    params = load_params(ROOT / "params.yaml")
    manifest, split = read_prepared(resolve(params, "prepared"))
    cv = (ROOT / args.cv).resolve()
    px = median_pixel_size(manifest)
    test = load_test(params, manifest, split) if args.test else None
    work = ROOT / "bench/.work" / args.name
    rows = []
    for fold_dir in sorted(cv.glob("fold_*")):
        k = int(fold_dir.name.split("_")[1])
        stems = json.loads((fold_dir / "result.json").read_text())["val"]
        images, masks = load_rows(manifest, stems, ROOT)
        pxs = pixel_sizes(manifest, stems)
        predictor, _ = load_predictor(fold_dir / "model", tta=False)
        start = time.perf_counter()
        maps = [views(predictor, im) for im in images]
        view_s = (time.perf_counter() - start) / (len(images) * len(VIEWS))
        print(f"fold {k}: {len(images)} validation images x {len(VIEWS)} views, {view_s:.2f} s per view", flush=True)
        for name, chosen in SETS.items():
            probs = [np.mean([m[v] for v in chosen], axis=0) for m in maps]
            own = tune_own(masks, probs, pxs, params, px)
            t, post, s = own["threshold"], own["postprocess"], own["scores"]
            row = {"fold": k, "views": int(name), "images": "validation", "threshold": t,
                   "decoder": {kk: post[kk] for kk in ("marker_threshold", "min_marker_px") if kk in post},
                   "s_per_image": view_s * len(chosen), **{kk: float(s[kk]) for kk in KEYS}}
            rows.append(row)
            print(f"  val, {name} views: clean F1@0.5 {row['f1_50_clean']:.3f}, PQ {row['pq_clean']:.3f}, "
                  f"merged {row['err_merged']:.0f}", flush=True)
            if test is not None and name in ("1", "8"):
                folder = own_folder(fold_dir / "model", work / f"fold_{k}_views_{name}", t, post)
                res = score_model(folder, test, tta=name == "8")
                rows.append({**row, "images": "test", "s_per_image": res["seconds_per_image"],
                             **{kk: float(res["scores"][kk]) for kk in KEYS}})
                r = rows[-1]
                print(f"  test, {name} views: clean F1@0.5 {r['f1_50_clean']:.3f}, PQ {r['pq_clean']:.3f}, "
                      f"merged {r['err_merged']:.0f}", flush=True)
        del maps
    shutil.rmtree(work, ignore_errors=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    date = datetime.date.today().isoformat()
    record = {"date": date, "machine": machine, "cv": args.cv, "rows": rows}
    (ROOT / f"bench/results/{args.name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (ROOT / f"bench/results/{args.name}.md").write_text(render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
