"""Pictures for people: learning curves, error overlays, metric bar charts.

All functions write a PNG (atomically, :mod:`nanoseg.atomic`) and return its path
(matplotlib's Agg backend, no display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nanoseg.atomic import atomic_path  # noqa: E402

COLORS = {"tp": (0.1, 0.8, 0.1), "fp": (0.95, 0.15, 0.1), "fn": (0.15, 0.35, 1.0), "merged": (0.85, 0.1, 0.85)}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)


def _out(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def learning_curves(history: dict, path, title: str = "") -> Path:
    """Loss and Dice per epoch, training and validation."""
    path = _out(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "loss", "Dice loss"), (axes[1], "dice_coefficient", "Dice")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, style, label=("validation " if prefix else "training ") + label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, path, title: str = "",
                  merged: np.ndarray | None = None) -> Path:
    """Image with true positives green, false positives red, false negatives blue, the manual particles
    that came out merged with a neighbour magenta (``merged``: bool mask, optional), and the contours of
    ground truth (white) and prediction (yellow)."""
    from skimage.segmentation import find_boundaries

    path = _out(path)
    gray = np.clip(image.astype(np.float32), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    truth, pred = truth.astype(bool), pred.astype(bool)
    for key, sel in (("tp", truth & pred), ("fp", ~truth & pred), ("fn", truth & ~pred)):
        rgb[sel] = 0.55 * rgb[sel] + 0.45 * np.array(COLORS[key])
    if merged is not None and merged.any():
        rgb[merged] = 0.45 * rgb[merged] + 0.55 * np.array(COLORS["merged"])
    rgb[find_boundaries(truth, mode="inner")] = (1.0, 1.0, 1.0)
    rgb[find_boundaries(pred, mode="inner")] = (1.0, 0.9, 0.0)
    h, w = gray.shape
    fig = plt.figure(figsize=(w / 100, h / 100 + 0.4), dpi=100)
    ax = fig.add_axes([0, 0, 1, h / (h + 40)])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    legend = "TP green · FP red · FN blue · " + ("merged magenta · " if merged is not None else "")
    fig.text(0.01, 0.99, title + "   " + legend + "truth white · prediction yellow",
             va="top", fontsize=9)
    _save(fig, path)
    plt.close(fig)
    return path


def error_bars(summary: dict, path, title: str = "") -> Path:
    """Bar chart of the error classes (:func:`nanoseg.evaluation.error_analysis.error_summary`): unmatched manual
    particles (merged / split / missed / outline) and unmatched predictions, in counts."""
    from nanoseg.evaluation.error_analysis import PRED_CLASSES, TRUTH_CLASSES

    path = _out(path)
    names = [f"manual: {c}" for c in TRUTH_CLASSES] + [f"predicted: {c}" for c in PRED_CLASSES]
    vals = [summary.get(f"err_{c}", 0) for c in TRUTH_CLASSES] + [summary.get(f"err_pred_{c}", 0) for c in PRED_CLASSES]
    colors = ["#C44E52"] * len(TRUTH_CLASSES) + ["#8172B2"] * len(PRED_CLASSES)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    y = np.arange(len(names))
    ax.barh(y, vals, color=colors)
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:.0f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("unmatched clean instances at IoU 0.5")
    bias = summary.get("matched_ecd_bias", float("nan"))
    ax.set_title(f"{title}  (matched pairs: median ECD {bias:+.1%})" if bias == bias else title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def metric_bars(summary: dict, path, metrics, title: str = "", reference: dict | None = None) -> Path:
    """Bar chart of mean ± std per metric (``summary[m] = {"mean", "std"}``), with optional reference values."""
    path = _out(path)
    means = [summary[m]["mean"] for m in metrics]
    stds = [summary[m]["std"] for m in metrics]
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(x, means, yerr=stds, capsize=4, color="#4C72B0", label="nanoseg (mean ± std over folds)")
    if reference:
        ref = [reference.get(m, np.nan) for m in metrics]
        ax.scatter(x, ref, color="#DD8452", zorder=3, marker="D", label="paper")
    for xi, m in zip(x, means):
        ax.text(xi, min(m + 0.02, 1.02), f"{m:.3f}", ha="center", fontsize=8)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.08)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
