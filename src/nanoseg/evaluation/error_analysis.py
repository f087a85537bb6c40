"""Why particles are missed: every unmatched particle classified, on the ``clean`` subset.

After one-to-one matching at IoU 0.5 (:func:`nanoseg.evaluation.metrics.match_instances`) each *clean* manual
particle (:func:`nanoseg.evaluation.metrics.clean_ids`) that found no partner is one of

``merged``
    the prediction covering most of it also covers most of another manual particle: touching
    particles came out as one region (measured as one large particle);
``split``
    two or more predictions each hold a real part of it;
``missed``
    predictions cover less than half of it;
``outline``
    one prediction covers it but the outline is off by so much that IoU <= 0.5.

Each unmatched clean prediction is a ``merge`` (covers most of two or more manual particles), an
``outline`` (covers most of one manual particle, but with IoU <= 0.5), a ``fragment`` (lies mostly on
manual particles: a piece of a split or of a particle) or ``spurious`` (lies mostly on background). ``matched_ecd_bias`` is the median of
ECD(pred) / ECD(truth) - 1 over the matched clean pairs: the size error left once merges are set aside.

Arrays in, arrays (or dicts of numbers) out; lists of label images are pooled.
"""

from __future__ import annotations

import numpy as np

from nanoseg.evaluation.metrics import CLEAN_MIN_PX, clean_ids, match_overlaps, overlap_table

#: A prediction "holds" a manual particle when it covers at least this fraction of it.
COVER = 0.5
#: A piece of a split covers at least this fraction of the manual particle.
PIECE = 0.2
TRUTH_CLASSES = ("merged", "split", "missed", "outline")
PRED_CLASSES = ("merge", "outline", "fragment", "spurious")


def classify_errors(gt_labels, pred_labels, clean_min_px: int = CLEAN_MIN_PX) -> dict:
    """Classify the unmatched clean particles of one image.

    Parameters
    ----------
    gt_labels, pred_labels : (M, N) int arrays
        Manual and predicted instance labels (0 = background).
    clean_min_px : int
        Minimum area of the ``clean`` subset.

    Returns
    -------
    dict
        ``truth``: {gt id: class} for unmatched clean manual particles (:data:`TRUTH_CLASSES`);
        ``pred``: {pred id: class} for unmatched clean predictions (:data:`PRED_CLASSES`);
        ``matched``: list of (gt id, pred id, ecd ratio) for the matched clean pairs.
    """
    g, p = np.asarray(gt_labels), np.asarray(pred_labels)
    if g.shape != p.shape:
        raise ValueError(f"classify_errors: truth {g.shape} and prediction {p.shape} differ in shape")
    table = overlap_table(g, p)
    gi, pi, inter, area_g, area_p = table
    m = match_overlaps(table, 0.5)["matches"]
    matched_g, matched_p = {a for a, _, _ in m}, {b for _, b, _ in m}
    cg, cp = set(clean_ids(g, clean_min_px).tolist()), set(clean_ids(p, clean_min_px).tolist())
    cover_g = inter / area_g[gi]  # fraction of the manual particle this prediction covers
    # predictions that hold (cover >= COVER of) at least two manual particles
    held = pi[cover_g >= COVER]
    ids, n_held = np.unique(held, return_counts=True)
    merging = set(ids[n_held >= 2].tolist())
    holding = set(ids.tolist())
    truth = {}
    for a in sorted(cg - matched_g):
        sel = gi == a
        preds, cov = pi[sel], cover_g[sel]
        if any(int(b) in merging and c >= COVER for b, c in zip(preds, cov)):
            truth[a] = "merged"
        elif np.count_nonzero(cov >= PIECE) >= 2:
            truth[a] = "split"
        elif cov.sum() < COVER:
            truth[a] = "missed"
        else:
            truth[a] = "outline"
    on_truth = np.bincount(pi, weights=inter, minlength=area_p.size)[: area_p.size]
    pred = {}
    for b in sorted(cp - matched_p):
        if b in merging:
            pred[b] = "merge"
        elif b in holding:
            pred[b] = "outline"
        elif on_truth[b] >= COVER * area_p[b]:
            pred[b] = "fragment"
        else:
            pred[b] = "spurious"
    ratio = [(a, b, float(np.sqrt(area_p[b] / area_g[a]))) for a, b, _ in m if a in cg]
    return {"truth": truth, "pred": pred, "matched": ratio}


def error_summary(gt_labels, pred_labels, clean_min_px: int = CLEAN_MIN_PX) -> dict:
    """Counts of each error class pooled over images, shares and the matched-pair ECD bias.

    Parameters
    ----------
    gt_labels, pred_labels : (M, N) int array, or lists of them

    Returns
    -------
    dict of float
        ``err_<class>`` counts for :data:`TRUTH_CLASSES` (unmatched clean manual particles),
        ``err_pred_<class>`` for :data:`PRED_CLASSES` (unmatched clean predictions),
        ``err_merged_share`` (merged / all unmatched clean manual particles), ``n_matched_clean`` and
        ``matched_ecd_bias`` (median ECD ratio - 1 of the matched clean pairs).
    """
    gts = gt_labels if isinstance(gt_labels, (list, tuple)) else [gt_labels]
    preds = pred_labels if isinstance(pred_labels, (list, tuple)) else [pred_labels]
    if len(gts) != len(preds):
        raise ValueError(f"error_summary: {len(gts)} truth images but {len(preds)} predictions")
    return summarize_errors([classify_errors(g, p, clean_min_px) for g, p in zip(gts, preds)])


def summarize_errors(classified: list[dict]) -> dict:
    """:func:`error_summary` from :func:`classify_errors` results (one per image), pooled."""
    counts = {f"err_{c}": 0 for c in TRUTH_CLASSES} | {f"err_pred_{c}": 0 for c in PRED_CLASSES}
    ratios = []
    for res in classified:
        for c in res["truth"].values():
            counts[f"err_{c}"] += 1
        for c in res["pred"].values():
            counts[f"err_pred_{c}"] += 1
        ratios += [r for _, _, r in res["matched"]]
    out = {k: float(v) for k, v in counts.items()}
    missed = sum(counts[f"err_{c}"] for c in TRUTH_CLASSES)
    out["err_merged_share"] = counts["err_merged"] / missed if missed else float("nan")
    out["n_matched_clean"] = float(len(ratios))
    out["matched_ecd_bias"] = float(np.median(ratios) - 1.0) if ratios else float("nan")
    return out


def merged_mask(gt_labels, pred_labels=None, clean_min_px: int = CLEAN_MIN_PX, classified: dict | None = None):
    """Bool mask of the manual particles classified ``merged`` (for overlays); pass ``classified`` (the
    :func:`classify_errors` result of this image) instead of ``pred_labels`` to reuse it."""
    g = np.asarray(gt_labels)
    res = classified if classified is not None else classify_errors(g, pred_labels, clean_min_px)
    ids = [a for a, c in res["truth"].items() if c == "merged"]
    return np.isin(g, ids) if ids else np.zeros(g.shape, bool)
