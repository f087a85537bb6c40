"""Which model to publish: the three candidates of one cross-validation on the same test images.

(a) ``ensemble`` — the k fold models averaged (post-processing from the pooled out-of-fold predictions);
(b) ``best_fold`` — the fold model with the best own-validation clean F1@0.5 (its own settings);
(c) ``final`` — trained on the training images less one fold's validation images, best weights restored,
settings tuned on those images (``train.final_max_minutes`` of training: skip with ``--no-final``).

Each is scored by ``evaluate``'s code as users get it (:func:`nanoseg.evaluation.model_scores.score_model`), beside its
CV estimate. Run after ``dvc repro cv`` (it uses ``cv/`` and ``metrics/cv.json``):

    python bench/candidates.py [--no-final]

Writes bench/results/candidates.json and candidates.md (machine and date in the file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from results_table import fmt  # noqa: E402  (one number format for the bench tables)

KEYS = ("dice", "f1_50", "f1_50_clean", "f1_75_clean", "pq_clean", "median_ecd_rel_error_clean",
        "ecd_wasserstein_clean", "n_gt_clean", "n_pred_clean")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-final", action="store_true", help="skip training candidate (c)")
    args = ap.parse_args()

    from nanoseg import tracking
    from nanoseg.model.candidates import make_best_fold, make_ensemble
    from nanoseg.config import load_params, resolve
    from nanoseg.data.manifest import read_prepared
    from nanoseg.pipeline.stages.train import check_cv, train_final
    from nanoseg.data.heldout import load_test
    from nanoseg.evaluation.model_scores import numeric, score_model
    from nanoseg.machine import cpu_model

    params = load_params()
    manifest, split = read_prepared(resolve(params, "prepared"))
    cv = json.loads(resolve(params, "metrics/cv.json").read_text())
    check_cv(params, cv, "metrics/cv.json", manifest, split)
    test = load_test(params, manifest, split)
    batch = int(params["predict"]["batch"])
    results = {}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        tmp = Path(tmp)
        builders = {"ensemble": lambda out: make_ensemble(resolve(params, "cv"), cv, out),
                    "best_fold": lambda out: make_best_fold(resolve(params, "cv"), cv, out)}
        if not args.no_final:
            def final(out):
                tracking.setup(params=params)
                with tracking.start_run(f"bench-final-{params['profile']}", tags={"stage": "bench"}) as run:
                    return out, train_final(params, manifest, split, cv, out, run.info.run_id)
            builders["final"] = final
        for name, build in builders.items():
            print(f"candidate {name}: building", flush=True)
            folder, meta = build(tmp / name)
            score_model(folder, load_test(params, manifest, split, stems=test.stems[:1]), batch=batch)  # warm up
            res = score_model(folder, test, batch=batch)
            results[name] = {"scores": numeric(res["scores"]), "seconds_per_image": res["seconds_per_image"],
                             "threshold": res["settings"]["threshold"], "postprocess": res["settings"]["postprocess"],
                             "fold": meta.get("fold"), "tuned_on": meta.get("tuned_on"),
                             "members": (meta.get("ensemble") or {}).get("members"),
                             "shared_encoder": (meta.get("ensemble") or {}).get("shared_encoder"),
                             "best_epoch": meta.get("best_epoch"), "steps_done": meta.get("steps_done")}
            s = results[name]["scores"]
            print(f"  {name}: Dice {s['dice']:.3f}, clean F1@0.5 {s['f1_50_clean']:.3f}, PQ {s['pq_clean']:.3f}, "
                  f"{res['seconds_per_image']:.2f} s/image", flush=True)
    machine = f"{cpu_model()}, {platform.machine()}, 2 cores"
    date = datetime.date.today().isoformat()
    record = {"date": date, "machine": machine, "profile": params["profile"], "variant": params["model"]["variant"],
              "cv": {k: cv.get(k) for k in ("dice_mean", "dice_std", "f1_50_clean_mean", "f1_50_clean_std",
                                            "pq_clean_mean", "steps_done")},
              "n_test_images": len(test.stems), "candidates": results}
    out = ROOT / "bench/results/candidates.json"
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [f"### Publishing candidates on the test images ({date}, {machine}, {params['profile']} profile)", "",
             f"{len(test.stems)} test images; CV estimate (mean ± std over {cv['folds']} folds): Dice "
             f"{cv['dice_mean']:.3f} ± {cv['dice_std']:.3f}, clean F1@0.5 {cv['f1_50_clean_mean']:.3f} ± "
             f"{cv['f1_50_clean_std']:.3f}. s/image: probability map + decoding, after a warm-up image.", "",
             "| candidate | " + " | ".join(KEYS) + " | s/image |", "|" + "---|" * (len(KEYS) + 2)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r["scores"].get(k), pct="rel_error" in k) for k in KEYS)
                     + f" | {r['seconds_per_image']:.2f} |")
    (ROOT / "bench/results/candidates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
