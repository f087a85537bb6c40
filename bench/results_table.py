"""Markdown tables of a finished `dvc repro`: CV and test metrics beside the paper, instances and sizes
beside the Otsu baselines. Reads metrics/cv.json and metrics/test.json; writes bench/results/pipeline.md.

    python bench/results_table.py [--label "cpu profile, 2026-11-27"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"accuracy": (0.993, None), "dice": (0.940, 0.946), "iou": (0.887, 0.897)}  # mean, best (Sanan & Isaac)
PIXEL = ("accuracy", "precision", "recall", "f1", "dice", "iou", "auc")
INST = ("dice", "f1_50", "f1_75", "pq", "n_gt", "n_pred", "median_ecd_gt", "median_ecd_pred", "median_ecd_rel_error",
        "median_ecd_rel_error_measurable", "ecd_wasserstein", "ecd_ks")


def fmt(v, pct=False):
    if v is None or v != v:
        return "–"
    if pct:
        return f"{v:+.1%}"
    return f"{v:.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    cv = json.loads((ROOT / "metrics/cv.json").read_text())
    test = json.loads((ROOT / "metrics/test.json").read_text())
    lines = [f"### Pixel metrics ({args.label})", "",
             f"| metric | CV mean ± std ({cv['folds']} folds) | test (held-out images) | paper mean (best) |", "|---|---|---|---|"]
    for m in PIXEL:
        ref = PAPER.get(m)
        paper = "–" if not ref else (f"{ref[0]:.3f}" + (f" ({ref[1]:.3f})" if ref[1] else ""))
        lines.append(f"| {m} | {fmt(cv[f'{m}_mean'])} ± {fmt(cv[f'{m}_std'])} | {fmt(test['model'][m])} | {paper} |")
    lines += ["", f"Threshold {cv['threshold']:.2f} (chosen on the validation folds), post-processing "
              f"{json.dumps({k: v for k, v in cv['postprocess'].items() if k != 'val_f1_50'})}.", "",
              "### Instances and sizes on the test images (ground truth: 4-connected components of the manual masks)", "",
              "| method | " + " | ".join(INST) + " |", "|" + "---|" * (len(INST) + 1)]
    rows = {"nanoseg (" + str(test.get("variant")) + ")": test["model"], **test["baselines"]}
    for name, sc in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(sc.get(k), pct="rel_error" in k) for k in INST) + " |")
    lines += ["", "ECDs in nm; `_measurable`: ground truth from the `*_cm.tif` masks, predictions not touching the border."]
    out = ROOT / "bench/results/pipeline.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
