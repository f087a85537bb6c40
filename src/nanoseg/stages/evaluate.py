"""Stage ``evaluate``: the final model on the held-out test images.

Pixel metrics (the paper's seven) and instance/size metrics at the threshold and
post-processing chosen in cross-validation, beside the classical baselines run
through the same scoring code. Writes ``metrics/test.json`` and overlays to
``plots/test/``; logs everything to MLflow (run ``evaluate-<label>-<profile>``, label
``paper`` or ``instance-<head>``).
"""

import json

import numpy as np

from nanoseg.config import load_params, resolve
from nanoseg.dataset import load_rows, read_prepared
from nanoseg.errors import report_errors

MODEL = "models/final"


def _class_masks(manifest, stems, root, rows):
    from nanoseg.micrograph import read_mask

    by = manifest.set_index("stem")
    out = []
    for s in stems:
        path = by.loc[s, "class_mask_path"]
        if not isinstance(path, str) or not path:
            return None
        out.append(read_mask(resolve({"_root": root}, path))[:rows[s]])
    return out


def command(args=None) -> int:
    from nanoseg import tracking
    from nanoseg.crossval import predict_images
    from nanoseg.evaluation import baselines, score, segment
    from nanoseg.model import load_model
    from nanoseg.plots import error_overlay

    params = load_params()
    root = params["_root"]
    manifest, split = read_prepared(resolve(params, "prepared"))
    model, meta = load_model(resolve(params, MODEL))
    stems = split["test"]
    images, masks = load_rows(manifest, stems, root)
    rows = dict(zip(manifest["stem"], manifest["crop_rows"].astype(int)))
    class_masks = _class_masks(manifest, stems, root, rows)
    px = float(np.nanmedian(manifest["pixel_size_nm"])) if manifest["pixel_size_nm"].notna().any() else None
    probs = predict_images(model, images, params)
    threshold, post = float(meta["threshold"]), meta.get("postprocess", {})
    segs = [segment(p, threshold, post, px) for p in probs]
    model_scores = score(masks, probs, [lab for _, lab in segs], px, class_masks, threshold=threshold)
    base = baselines(images, masks, px, class_masks, min_distance_px=int(post.get("min_distance_px", 5)))
    head = (meta.get("instance") or {}).get("head")
    result = {"model": model_scores, "baselines": base, "threshold": threshold, "postprocess": post,
              "n_images": len(stems), "variant": meta.get("variant"), "instance_head": head, "pixel_size_nm": px}
    out = resolve(params, "metrics/test.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    tracking.setup(params=params)
    variant = meta.get("variant", params["model"]["variant"])
    label = f"{variant}-{head}" if head else variant
    with tracking.start_run(f"evaluate-{label}-{params['profile']}",
                            tags={"stage": "evaluate", "variant": variant, "profile": params["profile"],
                                  **({"instance_head": head} if head else {}),
                                  "model_run_id": str(meta.get("mlflow_run_id", ""))}):
        tracking.log_metrics({f"test_{k}": v for k, v in model_scores.items()})
        for name, sc in base.items():
            tracking.log_metrics({f"{name}_{k}": v for k, v in sc.items()})
        for s, im, tr, (pred, _) in zip(stems, images, masks, segs):
            png = error_overlay(im, tr, pred, resolve(params, f"plots/test/overlay_{s}.png"),
                                title=f"test · {s} · threshold {threshold:.2f}")
            tracking.log_artifact(png, "overlays")
        tracking.log_artifact(out)
    m = model_scores
    print(f"test ({len(stems)} images): Dice {m['dice']:.3f}, IoU {m['iou']:.3f}, F1@0.5 {m['f1_50']:.3f}, "
          f"PQ {m['pq']:.3f}, median ECD error {m['median_ecd_rel_error']:+.1%} -> metrics/test.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
