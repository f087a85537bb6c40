"""Stage ``cv``: K-fold cross-validation of the model, every fold a nested MLflow run."""

import sys

from nanoseg.atomic import write_json
from nanoseg.config import load_params, resolve
from nanoseg.pipeline.crossval import run_cv
from nanoseg.data.manifest import read_prepared
from nanoseg.errors import report_errors


def command(args=None) -> int:
    params = load_params()
    manifest, split = read_prepared(resolve(params, "prepared"))
    cv = run_cv(params, manifest, split, resolve(params, "cv"))
    out = resolve(params, "metrics/cv.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, cv)
    print(f"cv: Dice {cv['dice_mean']:.3f} ± {cv['dice_std']:.3f}, IoU {cv['iou_mean']:.3f} ± {cv['iou_std']:.3f}, "
          f"threshold {cv['threshold']:.2f} -> metrics/cv.json")
    for warning in cv["warnings"]:
        print(f"WARNING {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
