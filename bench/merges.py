"""Attacking merged particles (issue 14): training settings cross-validated against the default.

Every candidate is the default settings (params.yaml, cpu profile) with a few overrides, trained by
:func:`nanoseg.pipeline.crossval.run_cv` on the same folds with the same time budget per fold. Each fold model
gets its own threshold and post-processing tuned on its validation images (``per_fold_own``: what a
published fold model carries), and is scored there: clean F1@0.5, PQ, the error classes of
:mod:`nanoseg.evaluation.error_analysis` (merged / split / missed / outline) and the matched pairs' ECD bias.
The reference row ``default`` is the last ``dvc repro``'s CV (``metrics/cv.json``, same folds, not
trained again when its resume key matches). Run after ``dvc repro cv``:

    python bench/merges.py [--candidates boundary_w10,border_loss] [--folds 0,1]
    python bench/merges.py --candidates none,scale_aug,invert_aug --epochs 16 --name augment

A wall-clock budget gives a candidate more steps on a quieter machine (the border-loss row below got
575-600 steps against the reference's 425). ``--epochs N`` trains every candidate, ``none`` (the
defaults) included, for exactly N epochs (no time limit, the cosine schedule over N epochs): the
same budget in steps; the reference row from ``metrics/cv.json`` is then left out.

Writes bench/results/<name>.json and <name>.md (default name ``merges``; machine and date in the
file); fold outputs go to bench/.work/<name>/<candidate>/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench/.work/merges"
CANDIDATES = {
    "none": {},
    "boundary_w10": {"instance": {"class_weights": [1.0, 1.0, 10.0]}},
    "border_loss": {"instance": {"loss": "border_wcce_dice"}},
    "boundary_w2": {"instance": {"class_weights": [1.0, 1.0, 2.0]}},
    # issue 15: augmentation, cross-validated against none (scored on native validation images here;
    # bench/scale.py scores the same fold models on rescaled copies)
    "scale_aug": {"train": {"augment": {"scale": [0.8, 1.25], "scale_p": 0.5}}},
    "invert_aug": {"train": {"augment": {"invert": 0.5}}},
    # issue 15: images of a lower magnification are enlarged by --scale auto, so the model sees them blurred
    "lowres_aug": {"train": {"augment": {"lowres": 2.0, "lowres_p": 0.5}}},
    "lowres_p25": {"train": {"augment": {"lowres": 2.0, "lowres_p": 0.25}}},  # half the share: keep native?
    # issue 14: HoVer-Net horizontal/vertical maps beside the 3 classes; the decoder cuts seeds where they jump
    "hover": {"instance": {"head": "classes3_hv"}},
}
KEYS = ("dice", "f1_50_clean", "f1_75_clean", "pq_clean", "median_ecd_rel_error_clean", "matched_ecd_bias")
ERRORS = ("err_merged", "err_split", "err_missed", "err_outline", "err_pred_spurious")


def fold_rows(cv: dict, folds: list[int]) -> dict:
    """Mean of the per-fold own scores over ``folds``; error counts summed."""
    rows = [cv["per_fold_own"][str(k)]["scores"] for k in folds]
    out = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
    out.update({k: float(np.sum([r[k] for r in rows])) for k in ERRORS})
    out["decoders"] = [cv["per_fold_own"][str(k)]["postprocess"] for k in folds]
    out["thresholds"] = [cv["per_fold_own"][str(k)]["threshold"] for k in folds]
    out["steps_done"] = [cv["steps_done"][k] for k in folds] if len(cv.get("steps_done", [])) > max(folds) else None
    return out


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from nanoseg.config import merge_params, load_params, resolve
    from nanoseg.pipeline.crossval import run_cv
    from nanoseg.data.manifest import read_prepared
    from nanoseg.machine import cpu_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", default="boundary_w10,border_loss")
    ap.add_argument("--folds", default="0,1")
    ap.add_argument("--epochs", type=int, default=None, help="a budget in epochs instead of minutes")
    ap.add_argument("--name", default="merges")
    args = ap.parse_args()
    work = WORK.parent / args.name
    folds = [int(k) for k in args.folds.split(",")]
    base = load_params(ROOT / "params.yaml")
    manifest, split = read_prepared(resolve(base, "prepared"))
    for col in ("image_path", "mask_path", "class_mask_path"):  # candidates work in their own folders
        manifest[col] = [str((ROOT / p).resolve()) if isinstance(p, str) and p else p for p in manifest[col]]
    if args.epochs:
        base = merge_params(base, {"train": {"epochs": args.epochs, "max_minutes_per_fold": None}})
    out_json = ROOT / f"bench/results/{args.name}.json"
    earlier = json.loads(out_json.read_text()) if out_json.is_file() else {}
    same = earlier.get("folds") == folds and earlier.get("epochs") == args.epochs
    results = earlier.get("results", {}) if same else {}  # rows of earlier runs stay
    if not args.epochs:
        ref = json.loads(resolve(base, "metrics/cv.json").read_text())
        results["default"] = {**fold_rows(ref, folds), "overrides": {}}
    for name in [n.strip() for n in args.candidates.split(",") if n.strip()]:
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r}; choose from {sorted(CANDIDATES)}")
        params = merge_params(base, CANDIDATES[name])
        weights = params["model"].get("weights")
        if weights not in (None, "imagenet"):
            params["model"]["weights"] = str((ROOT / weights).resolve())
        params["_root"] = str(work / name)
        Path(params["_root"]).mkdir(parents=True, exist_ok=True)
        cv = run_cv(params, manifest, {**split, "folds": [split["folds"][k] for k in folds]}, work / name / "cv")
        results[name] = {**fold_rows(cv, list(range(len(folds)))), "overrides": CANDIDATES[name]}
        r = results[name]
        print(f"{name}: clean F1@0.5 {r['f1_50_clean']:.3f}, PQ {r['pq_clean']:.3f}, merged {r['err_merged']:.0f}",
              flush=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    date = datetime.date.today().isoformat()
    record = {"date": date, "machine": machine, "folds": folds, "profile": base["profile"], "epochs": args.epochs,
              "max_minutes_per_fold": base["train"].get("max_minutes_per_fold"), "results": results}
    out_json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    budget = f"{args.epochs} epochs per fold" if args.epochs else f"{base['train'].get('max_minutes_per_fold')} min per fold"
    lines = [f"### {args.name}: training settings on CV folds {args.folds} ({date}, {machine}, {base['profile']} profile, "
             f"{budget})", "",
             "Each fold model with its own threshold and decoder tuned on its validation images; means over the "
             "folds, error counts (unmatched clean manual particles) summed.", "",
             "| candidate | " + " | ".join(KEYS + ERRORS) + " | steps |", "|" + "---|" * (len(KEYS) + len(ERRORS) + 2)]
    for name, r in results.items():
        cells = [f"{r[k]:+.1%}" if "ecd" in k else f"{r[k]:.3f}" for k in KEYS] + [f"{r[k]:.0f}" for k in ERRORS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('steps_done')} |")
    (ROOT / f"bench/results/{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
