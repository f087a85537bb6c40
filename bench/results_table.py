"""Markdown tables of a finished `dvc repro`: CV and test metrics beside the paper, instances and sizes
beside the Otsu baselines, and the publish gate's decision. Reads metrics/cv.json, metrics/test.json and
reports/publish.json; writes bench/results/pipeline.md.

    python bench/results_table.py [--label "cpu profile, 2026-11-27"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"accuracy": (0.993, None), "dice": (0.940, 0.946), "iou": (0.887, 0.897)}  # mean, best (Sanan & Isaac)
PIXEL = ("accuracy", "precision", "recall", "f1", "dice", "iou", "auc")
INST = ("dice", "f1_50", "f1_50_clean", "f1_75_clean", "pq_clean", "n_gt_clean", "n_pred_clean", "median_ecd_gt",
        "median_ecd_pred", "median_ecd_rel_error", "median_ecd_rel_error_measurable", "ecd_wasserstein", "ecd_ks")
GATE = ("dice", "f1_50_clean", "f1_50", "pq_clean")


def fmt(v, pct=False):
    if v is None or v != v:
        return "–"
    if pct:
        return f"{v:+.1%}"
    return f"{v:.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3f}"


ERRORS = ("err_merged", "err_split", "err_missed", "err_outline", "err_pred_merge", "err_pred_outline",
          "err_pred_fragment", "err_pred_spurious", "err_merged_share", "matched_ecd_bias")


def error_lines(cv: dict, test: dict) -> list[str]:
    """Why particles are missed (nanoseg.evaluation.error_analysis): CV validation images pooled, and the test images."""
    rows = {"CV (all validation images)": cv.get("errors") or {}, "test": test["model"]}
    lines = ["", "### Unmatched clean particles by cause (IoU 0.5)", "",
             "| images | " + " | ".join(e.removeprefix("err_") for e in ERRORS) + " |", "|" + "---|" * (len(ERRORS) + 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(k), pct=k in ("err_merged_share", "matched_ecd_bias"))
                                              for k in ERRORS) + " |")
    return lines


def gate_lines(cv: dict, test: dict) -> list[str]:
    """The candidate's test scores beside its CV estimate (and the champion's), and what publish decided."""
    pub_file = ROOT / "reports/publish.json"
    pub = json.loads(pub_file.read_text()) if pub_file.is_file() else {}
    champ = test.get("champion") or {}
    head = "| metric | CV mean ± std | candidate test |" + (f" champion v{champ['version']} test |" if champ else "")
    lines = ["", f"### Publish gate (candidate `{test.get('candidate')}`, "
             f"{test.get('seconds_per_image', float('nan')):.2f} s/image)", "", head,
             "|---|---|---|" + ("---|" if champ else "")]
    for m in GATE:
        row = f"| {m} | {fmt(cv.get(f'{m}_mean'))} ± {fmt(cv.get(f'{m}_std'))} | {fmt(test['model'].get(m))} |"
        if champ:
            row += f" {fmt((champ.get('scores') or {}).get(m))} |"
        lines.append(row)
    if pub:
        lines += ["", f"Decision: **{pub.get('decision')}** (version {pub.get('version')}; @{pub.get('alias')} -> "
                  f"version {pub.get('champion_version')}). Checks:", ""]
        lines += [f"- {'pass' if c['passed'] else 'FAIL'} {c['check']}: {c['detail']}" for c in pub.get("checks", [])]
    return lines


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
    lines += ["", "ECDs in nm; `_measurable`: ground truth from the `*_cm.tif` masks, predictions not touching the border; "
              "`_clean`: instances touching the crop border or under 20 px dropped on both sides."]
    lines += error_lines(cv, test)
    lines += gate_lines(cv, test)
    out = ROOT / "bench/results/pipeline.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
