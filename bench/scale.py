"""Any magnification (issue 15): a model scored on rescaled copies of held-out images.

Each image is resampled by a zoom factor (0.5x = half the magnification, pixel size x 2; anti-aliased when
shrinking, bilinear) and its manual instances with it (nearest neighbour, touching instances re-separated by
1-px lines: :func:`nanoseg.model.targets.zoom_mask`); the pixel size is divided by the factor. The model runs as
``nanoseg predict`` runs it (:func:`nanoseg.evaluation.model_scores.score_model`) with ``--scale auto`` (resampled to the
model's training pixel size) and ``--scale off`` (native resolution: what a model without the rescaling
would see), and is scored by evaluate's code: clean F1@0.5, PQ, median ECD error (clean), pixel Dice. The
``clean`` subset keeps the same particles at every zoom: at least ``20 z**2`` px instead of 20 (at 2x a
20 px threshold would let in the 5-19 px specks of the manual masks that nobody segments).

    python bench/scale.py [--models ensemble=models/final] [--images test | --images fold:0]
                          [--factors 0.5,0.75,1,1.5,2] [--modes auto,off] [--inverted 1] [--name scale]

``--images fold:K`` scores on fold K's validation images (for fold models, which never trained on them).

Two references beside the models. The ``oracle`` rows (``--oracle 1``, the default) score the manual instances
at the native magnification, mapped to each zoomed grid as ``--scale auto`` maps a model's labels back
(:func:`nanoseg.inference.rescale.resize_labels`): a model that is perfect at its own pixel size scores this at
that zoom, so the oracle's gap to 1.0 (and to 0 % size error) is what the zoomed ground truth itself costs
(1-px separating lines that are 2 native px wide at 0.5x, particles a few pixels across). And every row gives its
median ECD against the native manual particles in nm (``vs native``), the sizes a microscopist is after,
besides the error against the zoomed manual instances (``median ECD error``).
Writes bench/results/<name>.json and <name>.md (machine and date in the file).
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
KEYS = ("f1_50_clean", "pq_clean", "median_ecd_rel_error_clean", "dice", "median_ecd_gt_clean", "median_ecd_pred_clean")
ORACLE = "oracle"


def inverted(test):
    """A copy of a :class:`nanoseg.data.heldout.HeldOut` with dark particles on a bright background."""
    from nanoseg.data.heldout import HeldOut

    return HeldOut(test.stems, [1.0 - im for im in test.images], test.masks, test.class_masks, test.pixel_sizes)


def rescaled(test, factor: float):
    """A copy of a :class:`nanoseg.data.heldout.HeldOut` zoomed by ``factor`` (pixel sizes divided by it)."""
    from skimage.transform import resize

    from nanoseg.inference.rescale import resample_image
    from nanoseg.model.targets import zoom_mask
    from nanoseg.data.heldout import HeldOut

    if factor == 1.0:
        return test
    images = [np.clip(resample_image(im, factor), 0.0, 1.0) for im in test.images]
    masks = [zoom_mask(m, im.shape) for m, im in zip(test.masks, images)]
    class_masks = None if test.class_masks is None else [
        resize(c, im.shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True).astype(c.dtype)
        for c, im in zip(test.class_masks, images)]
    return HeldOut(test.stems, images, masks, class_masks, [px / factor if px else px for px in test.pixel_sizes])


def oracle_scores(native, test, factor: float) -> dict:
    """Scores of the native manual instances mapped to ``test``'s (zoomed) grid, as --scale auto maps labels."""
    from nanoseg.evaluation.scoring import score, truth_labels
    from nanoseg.inference.rescale import resize_labels

    labels = [resize_labels(truth_labels(m), z.shape) for m, z in zip(native.masks, test.masks)]
    return score(test.masks, [lab > 0 for lab in labels], labels, test.pixel_sizes, test.class_masks,
                 clean_min_px=round(20 * factor**2))


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from nanoseg.config import load_params, resolve
    from nanoseg.data.manifest import read_prepared
    from nanoseg.data.heldout import load_test
    from nanoseg.evaluation.model_scores import score_model
    from nanoseg.machine import cpu_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ensemble=models/final", help="NAME=FOLDER,... (model folders; '': the oracle alone)")
    ap.add_argument("--images", default="test", help="test, or fold:K (fold K's validation images)")
    ap.add_argument("--factors", default="0.5,0.75,1,1.5,2")
    ap.add_argument("--modes", default="auto,off")
    ap.add_argument("--inverted", default="1", help="zooms at which inverted copies are scored too ('' = none)")
    ap.add_argument("--oracle", type=int, default=1, help="score the oracle rows (1) or not (0)")
    ap.add_argument("--tta", type=int, default=0, help="1: the models run with --tta (rows named MODEL+tta)")
    ap.add_argument("--name", default="scale")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    manifest, split = read_prepared(resolve(params, "prepared"))
    stems = None if args.images == "test" else split["folds"][int(args.images.split(":")[1])]["val"]
    native = load_test(params, manifest, split, stems)
    factors = [float(f) for f in args.factors.split(",")]
    models = dict(item.split("=", 1) for item in args.models.split(",") if item.strip())
    out_json = ROOT / f"bench/results/{args.name}.json"
    earlier = json.loads(out_json.read_text()) if out_json.is_file() else {}
    rows = {r["key"]: r for r in earlier.get("rows", []) if earlier.get("images") == args.images}
    inverted_at = [float(f) for f in args.inverted.split(",") if f.strip()]
    runs = [(f, False) for f in factors] + [(f, True) for f in inverted_at]
    for factor, invert in runs:
        test = inverted(rescaled(native, factor)) if invert else rescaled(native, factor)
        contrast = "inverted" if invert else "original"
        jobs = [(name, folder, mode) for name, folder in models.items()
                for mode in (args.modes.split(",") if not invert else ["auto"])]
        if args.oracle and not invert:
            jobs.insert(0, (ORACLE, "", "auto"))
        for name, folder, mode in jobs:
            if name == ORACLE:
                res = {"scores": oracle_scores(native, test, factor), "seconds_per_image": 0.0}
            else:
                res = score_model(resolve(params, folder), test, scale=mode, clean_min_px=round(20 * factor**2),
                                  tta=bool(args.tta))
                name = f"{name}+tta" if args.tta else name
            s = res["scores"]
            row = {"key": f"{name}|{mode}|{factor:g}|{contrast}", "model": name, "folder": folder, "scale": mode,
                   "factor": factor, "contrast": contrast, **{k: float(s[k]) for k in KEYS},
                   "n_gt_clean": float(s.get("n_gt_clean", np.nan)), "s_per_image": res["seconds_per_image"]}
            rows[row["key"]] = row
            print(f"{name} x{factor:g} {contrast} --scale {mode}: clean F1@0.5 {row['f1_50_clean']:.3f}, PQ "
                  f"{row['pq_clean']:.3f}, median ECD {row['median_ecd_rel_error_clean']:+.1%}, "
                  f"Dice {row['dice']:.3f}", flush=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    date = datetime.date.today().isoformat()
    record = {"date": date, "machine": machine, "images": args.images, "stems": native.stems,
              "rows": sorted(rows.values(), key=lambda r: (r["model"], r["contrast"] != "original", r["scale"],
                                                        r["factor"]))}
    truth = next((r["median_ecd_gt_clean"] for r in record["rows"] if r["factor"] == 1.0), None)
    for r in record["rows"]:  # the median ECD against the native manual particles (nm)
        r["median_ecd_vs_native"] = r["median_ecd_pred_clean"] / truth - 1.0 if truth else float("nan")
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"### Magnification: rescaled copies of the {args.images} images ({len(native.stems)} images; {date}, "
             f"{machine})", "",
             "Zoom 0.5 = half the magnification (pixel size x 2). `auto`: resampled to the model's training pixel "
             "size before inference (the default); `off`: native resolution; `inverted`: dark particles on a bright "
             "background (`--polarity auto` inverts them back). Scores by evaluate's code. `oracle`: the manual "
             "instances at native magnification mapped to the zoomed grid as `--scale auto` maps a model's labels "
             "back (what a model perfect at its own pixel size scores). Median ECD error: against the zoomed manual "
             "instances (clean); vs native: against the native manual particles in nm.", "",
             "| model | contrast | --scale | zoom | clean F1@0.5 | PQ clean | median ECD error | vs native | pixel Dice "
             "| s/image |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['model']} | {r['contrast']} | {r['scale']} | {r['factor']:g} | {r['f1_50_clean']:.3f} | {r['pq_clean']:.3f} "
                     f"| {r['median_ecd_rel_error_clean']:+.1%} | {r.get('median_ecd_vs_native', float('nan')):+.1%} "
                     f"| {r['dice']:.3f} | {r['s_per_image']:.2f} |")
    (ROOT / f"bench/results/{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
