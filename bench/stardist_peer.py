"""A peer row (issue 14): StarDist trained here from scratch, scored by evaluate's own code on the test images.

StarDist (PyPI ``stardist``, its own U-Net from scratch, star-convex polygons with 32 rays, non-maximum
suppression) is trained on nanoseg's training images less the last CV fold's validation images (as nanoseg's
``final`` candidate), with a wall-clock budget on this CPU (``--minutes``; ``make run`` gives nanoseg's five
folds 8 minutes each), its probability and NMS thresholds optimised on the held-back validation images
(``optimize_thresholds``), and scored on the held-out test images by
:func:`nanoseg.evaluation.scoring.score` — the same pixel, instance (``all`` and ``clean``) and size metrics,
each image with its own pixel size — beside nanoseg's champion when one is given (``--model``).

    pip install -e '.[peers]'            # make peers: stardist + csbdeep (Keras 3 native), numba
    python bench/stardist_peer.py [--minutes 40] [--model models/final]
    python bench/stardist_peer.py --table          # the .md again from the .json

Writes bench/results/stardist_peer.json and .md (machine and date in the file); the StarDist model goes to
bench/.work/stardist/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench/.work/stardist"
KEYS = ("dice", "f1_50", "f1_50_clean", "f1_75_clean", "pq_clean", "median_ecd_rel_error_clean",
        "ecd_wasserstein_clean", "n_gt_clean", "n_pred_clean")


def normalized(image):
    from csbdeep.utils import normalize

    return normalize(np.asarray(image, np.float32), 1, 99.8, axis=(0, 1)).astype(np.float32)


def augment(x, y):
    """Flips, 90-degree rotations and brightness/contrast jitter (nanoseg's own crop augmentation)."""
    rng = np.random.default_rng()
    k = int(rng.integers(4))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y)


def train(train_x, train_y, val_x, val_y, minutes: float, seed: int):
    """A StarDist2D (32 rays, grid 2) trained for ``minutes`` of wall time, thresholds optimised on val."""
    import keras
    from stardist.models import Config2D, StarDist2D

    keras.utils.set_random_seed(seed)
    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(256, 256), train_batch_size=4,
                    train_epochs=10_000, train_steps_per_epoch=25, train_tensorboard=False)
    WORK.mkdir(parents=True, exist_ok=True)
    model = StarDist2D(conf, name="model", basedir=str(WORK))
    model.prepare_for_training()
    deadline = time.monotonic() + 60.0 * minutes

    class WallClock(keras.callbacks.Callback):
        """Stop at the budget (the cpu profile's max_minutes_per_fold does the same for nanoseg)."""

        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() > deadline:
                self.model.stop_training = True

    model.callbacks.append(WallClock())
    start = time.monotonic()
    history = model.train(train_x, train_y, validation_data=(val_x, val_y), augmenter=augment)
    seconds = time.monotonic() - start
    epochs = len(history.history.get("loss", []))
    model.optimize_thresholds(val_x, val_y)
    return model, {"train_minutes": round(seconds / 60, 1), "epochs": epochs,
                   "thresholds": {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)}}


def write_table(record: dict, name: str) -> None:
    """bench/results/<name>.md from the record that main writes to <name>.json."""
    sys.path.insert(0, str(ROOT / "bench"))
    from results_table import fmt  # one number format for the bench tables

    info, n_test = record["rows"]["stardist"], len(record["test_images"])
    lines = [f"### StarDist peer on the test images ({n_test} images; {record['date']}, {record['machine']})", "",
             f"StarDist2D (32 rays, grid 2, from scratch) trained {info['train_minutes']} min ({info['epochs']} epochs "
             f"of 25 steps, batch 4, 256² patches) on {record['train_images']} training images, thresholds "
             f"{info['thresholds']} optimised on the {len(record['val_images'])} validation images of the last fold; "
             "scored by evaluate's code (`clean`: instances >= 20 px not touching the border, dropped on both sides).",
             "", "| method | " + " | ".join(KEYS) + " | s/image |", "|" + "---|" * (len(KEYS) + 2)]
    for method, r in record["rows"].items():
        cells = [fmt(r[k], pct="rel_error" in k) for k in KEYS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {r['s_per_image']:.2f} |")
    (ROOT / f"bench/results/{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from nanoseg.config import load_params, resolve
    from nanoseg.data.heldout import load_test
    from nanoseg.data.manifest import load_rows, read_prepared
    from nanoseg.evaluation.model_scores import numeric, score_model
    from nanoseg.evaluation.scoring import score, truth_labels
    from nanoseg.machine import cpu_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=40.0, help="StarDist's training budget (wall clock)")
    ap.add_argument("--model", default=None, help="a nanoseg model folder scored beside it (e.g. models/final)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--name", default="stardist_peer")
    ap.add_argument("--table", action="store_true", help="only write the .md again from the .json")
    args = ap.parse_args()
    out_json = ROOT / f"bench/results/{args.name}.json"
    if args.table:
        write_table(json.loads(out_json.read_text()), args.name)
        return 0
    params = load_params(ROOT / "params.yaml")
    manifest, split = read_prepared(resolve(params, "prepared"))
    val = list(split["folds"][-1]["val"])
    train_stems = [s for s in split["train"] if s not in val]
    tx, ty = load_rows(manifest, train_stems, params["_root"])
    vx, vy = load_rows(manifest, val, params["_root"])
    model, info = train([normalized(x) for x in tx], [truth_labels(m) for m in ty],
                        [normalized(x) for x in vx], [truth_labels(m) for m in vy], args.minutes, args.seed)
    test = load_test(params, manifest, split)
    model.predict_instances(normalized(test.images[0]))  # warm-up
    start = time.perf_counter()
    labels = [model.predict_instances(normalized(x))[0].astype(np.int32) for x in test.images]
    seconds = (time.perf_counter() - start) / len(test.images)
    rows = {"stardist": {**numeric(score(test.masks, [lab > 0 for lab in labels], labels, test.pixel_sizes,
                                         test.class_masks)), "s_per_image": round(seconds, 2), **info}}
    if args.model:
        res = score_model(resolve(params, args.model), test)
        rows["nanoseg"] = {**numeric(res["scores"]), "s_per_image": res["seconds_per_image"], "folder": args.model}
    record = {"date": datetime.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} cores",
              "train_images": len(train_stems), "val_images": val, "test_images": test.stems, "rows": rows}
    out_json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_table(record, args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
