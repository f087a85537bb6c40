"""Stage ``evaluate``: the candidate model AND the current champion on the held-out test images.

Both are opened as users get them (:func:`nanoseg.evaluation.model_scores.score_model`: ``nanoseg predict``'s
settings, threshold and post-processing from each model's own metadata; the champion downloaded
from the MLflow registry, ``models:/nanoseg@champion``, whatever run it came from) and scored by the
same code: the paper's 7 pixel metrics, instance and size metrics on ``all`` and ``clean`` particles,
each image with its own pixel size, beside the Otsu baselines. Writes ``metrics/test.json``
(``model``: the candidate; ``champion``: its version, provenance tags and scores, or null) and
overlays to ``plots/test/``; logs an MLflow run ``evaluate-<label>-<profile>``.
"""

from nanoseg.atomic import write_json
from nanoseg.config import load_params, resolve
from nanoseg.data.manifest import read_prepared
from nanoseg.errors import report_errors

MODEL = "models/final"


def command(args=None) -> int:
    from nanoseg import tracking
    from nanoseg.evaluation.error_analysis import merged_mask
    from nanoseg.evaluation.scoring import baselines, truth_labels
    from nanoseg.report.plots import error_bars, error_overlay
    from nanoseg.data.heldout import load_test
    from nanoseg.evaluation.model_scores import model_fingerprint, numeric, score_champion, score_model, split_fingerprint
    from nanoseg.machine import cpu_model

    params = load_params()
    manifest, split = read_prepared(resolve(params, "prepared"))
    test = load_test(params, manifest, split)
    batch = int(params["predict"]["batch"])
    cand = score_model(resolve(params, MODEL), test, batch=batch)
    meta, settings = cand["meta"], cand["settings"]
    post = settings["postprocess"]
    base = baselines(test.images, test.masks, test.pixel_sizes, test.class_masks,
                     min_distance_px=int(post["min_distance_px"]))
    champion = score_champion(params, test, batch=batch)
    head = (meta.get("instance") or {}).get("head")
    result = {"model": numeric(cand["scores"]), "candidate": meta.get("candidate"),
              "seconds_per_image": cand["seconds_per_image"], "threshold": settings["threshold"],
              "postprocess": post, "champion": champion, "baselines": {k: numeric(v) for k, v in base.items()},
              "n_images": len(test.stems), "images": test.stems, "variant": meta.get("variant"),
              "instance_head": head, "pixel_sizes_nm": dict(zip(test.stems, test.pixel_sizes)),
              "cv_key": meta.get("cv_key"), "model_fingerprint": model_fingerprint(resolve(params, MODEL)),
              "split_fingerprint": split_fingerprint(split)}
    out = resolve(params, "metrics/test.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    tracking.setup(params=params)
    variant = meta.get("variant", params["model"]["variant"])
    label = f"{variant}-{head}" if head else variant
    with tracking.start_run(f"evaluate-{label}-{params['profile']}",
                            tags={"stage": "evaluate", "variant": variant, "profile": params["profile"],
                                  "candidate": str(meta.get("candidate")), **({"instance_head": head} if head else {}),
                                  "model_run_id": str(meta.get("mlflow_run_id", "")),
                                  "champion_version": champion["version"] if champion else "none"}):
        tracking.log_metrics({f"test_{k}": v for k, v in result["model"].items()})
        tracking.log_metrics({"seconds_per_image": cand["seconds_per_image"],
                              **tracking.compare_metrics(result["model"], "test_")})
        tracking.log_params(tracking.compare_params(params, cpu_model()))
        if champion:
            tracking.log_metrics({f"champion_{k}": v for k, v in champion["scores"].items()})
        for name, sc in result["baselines"].items():
            tracking.log_metrics({f"{name}_{k}": v for k, v in sc.items()})
        for s, im, tr, (pred, lab) in zip(test.stems, test.images, test.masks, cand["segs"]):
            png = error_overlay(im, tr, pred, resolve(params, f"plots/test/overlay_{s}.png"),
                                title=f"test · {s} · threshold {settings['threshold']:.2f}",
                                merged=merged_mask(truth_labels(tr), lab))
            tracking.log_artifact(png, "overlays")
        tracking.log_artifact(error_bars(result["model"], resolve(params, "plots/test/errors.png"),
                                         title=f"test, {len(test.stems)} images"), "plots")
        tracking.log_artifact(out)
    m = result["model"]
    print(f"test ({len(test.stems)} images, candidate {meta.get('candidate')}): Dice {m['dice']:.3f}, "
          f"F1@0.5 {m['f1_50']:.3f} (clean {m['f1_50_clean']:.3f}), PQ clean {m['pq_clean']:.3f}, "
          f"median ECD error {m['median_ecd_rel_error']:+.1%}, {cand['seconds_per_image']:.2f} s/image")
    if champion:
        c = champion["scores"]
        print(f"champion (version {champion['version']}) on the same images: Dice {c['dice']:.3f}, "
              f"F1@0.5 clean {c['f1_50_clean']:.3f}")
    print(f"errors (clean manual particles unmatched): {m['err_merged']:.0f} merged, {m['err_split']:.0f} split, "
          f"{m['err_missed']:.0f} missed, {m['err_outline']:.0f} outline; matched pairs' median ECD "
          f"{m['matched_ecd_bias']:+.1%}")
    print("-> metrics/test.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
