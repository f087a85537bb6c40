"""Segmentation metrics: pixel level, instance level and size distributions.

* :func:`pixel_metrics` -- accuracy, precision, recall, F1/Dice, IoU, AUC-ROC of a
  probability map (pooled over all pixels of all images).
* :func:`choose_threshold` -- the probability threshold with the best pooled Dice.
* :func:`match_instances` / :func:`instance_metrics` -- one-to-one instance
  matching by IoU, detection F1, panoptic quality and how well the predicted
  particle-size (ECD) distribution matches the ground truth.
* :func:`summarize_folds` -- mean and standard deviation over cross-validation folds.

Ratios whose denominator is zero (e.g. precision with no predicted pixels) are
``nan``, never an exception; all returned values are plain Python floats.
Foreground in ``y_true`` is any non-zero pixel; predicted foreground is
``prob >= threshold`` (:func:`nanoseg.io.masks.binarize`). Label images use 0
for background; bool masks passed as labels are labelled 4-connected first.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import roc_auc_score
from skimage import measure as skmeasure

from nanoseg.errors import NanosegError
from nanoseg.measure.particles import majority_inside
from nanoseg.io.masks import binarize

PIXEL_METRICS = ("accuracy", "precision", "recall", "f1", "dice", "iou", "auc")


def _as_list(x):
    return [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]


def _pairs(a, b, what):
    a, b = _as_list(a), _as_list(b)
    if len(a) != len(b):
        raise NanosegError(f"{what}: got {len(a)} ground-truth and {len(b)} predicted images; "
                           "pass one prediction per ground-truth image.")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise NanosegError(f"{what}: image {i}: ground truth has shape {x.shape} but the "
                               f"prediction has shape {y.shape}; crop both to the same size.")
    return a, b


def _div(num, den):
    return float(num) / float(den) if den else float("nan")


def pixel_metrics(y_true, prob, threshold=0.5, max_auc_pixels=2_000_000, seed=0):
    """Pixel-level metrics of a probability map against a ground-truth mask.

    Parameters
    ----------
    y_true : array or list of arrays
        Ground-truth masks (bool, 0/1 or 0/255: non-zero is foreground).
    prob : array or list of arrays
        Foreground probabilities in [0, 1] (a bool mask works too), same shapes.
        Lists are pooled over all pixels of all images.
    threshold : float
        Foreground is ``prob >= threshold``.
    max_auc_pixels : int
        AUC-ROC is computed on a seeded random subsample of at most this many pixels.
    seed : int

    Returns
    -------
    dict
        Keys :data:`PIXEL_METRICS`: ``accuracy``, ``precision``, ``recall``,
        ``f1``, ``dice`` (equal to ``f1`` for binary masks; both are reported),
        ``iou`` and ``auc`` (``nan`` when the ground truth has a single class).
    """
    ys, ps = _pairs(y_true, prob, "pixel_metrics")
    tp, fp, fn, n = _counts(ys, ps, threshold)
    out = {
        "accuracy": _div(n - fp - fn, n),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "iou": _div(tp, tp + fp + fn),
    }
    out["dice"] = out["f1"]
    out["auc"] = _auc(ys, ps, n, max_auc_pixels, seed)
    return {k: out[k] for k in PIXEL_METRICS}


def _counts(ys, ps, threshold):
    tp = fp = fn = n = 0
    for y, p in zip(ys, ps):
        y, b = y != 0, binarize(p, threshold)
        tp += int(np.count_nonzero(y & b))
        fp += int(np.count_nonzero(~y & b))
        fn += int(np.count_nonzero(y & ~b))
        n += y.size
    return tp, fp, fn, n


def _auc(ys, ps, n, max_pixels, seed):
    rng = np.random.default_rng(seed)
    y_parts, p_parts = [], []
    for y, p in zip(ys, ps):
        y, p = y.ravel() != 0, p.ravel().astype(np.float32)
        if n > max_pixels:  # proportional seeded subsample of every image
            k = min(y.size, int(round(max_pixels * y.size / n)))
            idx = rng.choice(y.size, size=k, replace=False)
            y, p = y[idx], p[idx]
        y_parts.append(y)
        p_parts.append(p)
    y, p = np.concatenate(y_parts), np.concatenate(p_parts)
    if y.size == 0 or y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, p))


def choose_threshold(y_true_list, prob_list, candidates=np.linspace(0.1, 0.9, 17)):
    """Return the candidate threshold with the highest pooled Dice (first one on ties)."""
    ys, ps = _pairs(y_true_list, prob_list, "choose_threshold")
    dice = []
    for t in candidates:
        tp, fp, fn, _ = _counts(ys, ps, t)
        dice.append(_div(2 * tp, 2 * tp + fp + fn))
    if np.all(np.isnan(dice)):
        return float(candidates[len(candidates) // 2])
    return float(candidates[int(np.nanargmax(dice))])


def _labels(x):
    x = np.asarray(x)
    if x.dtype == bool:
        return skmeasure.label(x, connectivity=1)
    if not np.issubdtype(x.dtype, np.integer):
        raise NanosegError(f"expected an integer label image or a bool mask, got dtype {x.dtype}.")
    if x.size and x.min() < 0:
        raise NanosegError("label images must not hold negative ids; 0 is background.")
    return x


def match_instances(gt_labels, pred_labels, iou_threshold=0.5):
    """Match ground-truth and predicted instances one to one by IoU.

    A pair matches when its IoU is greater than ``iou_threshold``. For
    thresholds >= 0.5 such matches are unique; below 0.5 the matching maximises
    the total IoU (:func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    gt_labels, pred_labels : (M, N) int arrays
        Label images (0 = background); bool masks are labelled 4-connected.
    iou_threshold : float

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``n_gt``, ``n_pred`` (ints) and ``matches``: a
        list of ``(gt_id, pred_id, iou)`` tuples.
    """
    (g,), (p,) = _pairs(_labels(gt_labels), _labels(pred_labels), "match_instances")
    return match_overlaps(overlap_table(g, p), iou_threshold)


def overlap_table(gt_labels, pred_labels):
    """Sparse overlap of two label images (same shape).

    Returns
    -------
    gi, pi, inter, area_g, area_p : int arrays
        For every overlapping (truth id, prediction id) pair its intersection in pixels, and the
        areas of every id (``np.bincount`` of each label image, index = id).
    """
    g, p = np.asarray(gt_labels).ravel().astype(np.int64), np.asarray(pred_labels).ravel().astype(np.int64)
    area_g, area_p = np.bincount(g, minlength=1), np.bincount(p, minlength=1)
    both = (g > 0) & (p > 0)
    base = int(p.max(initial=0)) + 1
    codes, inter = np.unique(g[both] * base + p[both], return_counts=True)
    gi, pi = np.divmod(codes, base)
    return gi, pi, inter, area_g, area_p


def match_overlaps(table, iou_threshold=0.5):
    """:func:`match_instances` on an :func:`overlap_table` (to reuse one table for other statistics)."""
    gi, pi, inter, area_g, area_p = table
    n_gt, n_pred = int(np.count_nonzero(area_g[1:])), int(np.count_nonzero(area_p[1:]))
    iou = inter / (area_g[gi] + area_p[pi] - inter)
    keep = iou > iou_threshold
    gi, pi, iou = gi[keep], pi[keep], iou[keep]
    if iou_threshold < 0.5 and len(iou):
        ug, gk = np.unique(gi, return_inverse=True)
        up, pk = np.unique(pi, return_inverse=True)
        cost = np.zeros((len(ug), len(up)))
        cost[gk, pk] = iou
        rows, cols = optimize.linear_sum_assignment(cost, maximize=True)
        ok = cost[rows, cols] > iou_threshold
        gi, pi, iou = ug[rows[ok]], up[cols[ok]], cost[rows[ok], cols[ok]]
    matches = [(int(a), int(b), float(c)) for a, b, c in zip(gi, pi, iou)]
    tp = len(matches)
    return {"tp": tp, "fp": n_pred - tp, "fn": n_gt - tp, "n_gt": n_gt, "n_pred": n_pred,
            "matches": matches}


def _measurable_ids(labels, spec):
    """Ids (sorted) of the labels selected by a measurable spec."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if spec is None:
        return ids
    if isinstance(spec, str):
        if spec != "border":
            raise NanosegError(f"measurable: unknown rule {spec!r}; use 'border' or a mask.")
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        return ids[~np.isin(ids, edge)]
    spec = np.asarray(spec)
    if spec.ndim == 2:
        return ids[majority_inside(labels, spec)[ids]]
    if spec.shape != ids.shape:
        raise NanosegError(f"measurable: got {spec.size} flags for {ids.size} instances; "
                           "pass one flag per instance (ascending ids) or a mask image.")
    return ids[spec.astype(bool)]


def ecd_values(labels, ids, pixel_size_nm):
    """Equivalent-circle diameters of the instances ``ids`` of ``labels`` (nm with a pixel size, else px)."""
    areas = np.bincount(labels.ravel())[ids] if len(ids) else np.zeros(0)
    return np.sqrt(4.0 * areas / np.pi) * (1.0 if pixel_size_nm is None else pixel_size_nm)


def _size_stats(gt_ecd, pred_ecd, suffix=""):
    nan = float("nan")
    both = len(gt_ecd) > 0 and len(pred_ecd) > 0
    mg = float(np.median(gt_ecd)) if len(gt_ecd) else nan
    mp = float(np.median(pred_ecd)) if len(pred_ecd) else nan
    out = {
        "n_gt": len(gt_ecd), "n_pred": len(pred_ecd),
        "median_ecd_gt": mg, "median_ecd_pred": mp,
        "median_ecd_rel_error": mp / mg - 1.0 if both else nan,
        "ecd_wasserstein": stats.wasserstein_distance(gt_ecd, pred_ecd) if both else nan,
        "ecd_ks": stats.ks_2samp(gt_ecd, pred_ecd).statistic if both else nan,
    }
    return {k + suffix: float(v) for k, v in out.items()}


#: ``clean`` subset: instances of at least this many pixels that do not touch the crop border.
CLEAN_MIN_PX = 20


def clean_ids(labels, min_px: int = CLEAN_MIN_PX) -> np.ndarray:
    """Ids (sorted) of the instances that count in the ``clean`` subset: at least ``min_px`` pixels and
    not touching the image (crop) border. About 10 % of the BAM manual instances are 1-19 px specks
    left over from the separating lines; cut particles at the border cannot be judged either."""
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())
    ids = np.flatnonzero(areas >= max(1, int(min_px)))
    ids = ids[ids > 0]
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return ids[~np.isin(ids, edge)]


def instance_metrics(gt_labels, pred_labels, pixel_size_nm=None, gt_measurable=None,
                     pred_measurable=None, clean_min_px: int = CLEAN_MIN_PX):
    """Instance detection, panoptic quality and particle-size agreement.

    Parameters
    ----------
    gt_labels, pred_labels : (M, N) int array, or lists of them
        Label images (0 = background; bool masks are labelled 4-connected).
        Lists are pooled: counts are summed and ECDs concatenated over images.
    pixel_size_nm : float or list of float, optional
        ECDs are in nm when given (one value for all images, or one per image), else in px.
    gt_measurable, pred_measurable : optional
        Which particles count for the ``*_measurable`` size statistics: a mask
        image (e.g. BAM ``*_cm.tif``; a particle counts when most of its pixels
        are in the mask), one bool flag per instance (ascending ids), or
        ``"border"`` (particles not touching the image border); a list of such
        per image for list inputs. If only one side is given, the other side
        uses all its particles. If both are None, no ``*_measurable`` keys.

    Returns
    -------
    dict of float
        ``tp``, ``fp``, ``fn`` (at IoU 0.5), ``precision_50``, ``recall_50``,
        ``f1_50``, ``f1_75`` (F1 at IoU 0.75), ``sq`` (mean IoU of the matches at
        0.5), ``rq`` (= ``f1_50``), ``pq`` (= ``sq * rq``), ``n_gt``, ``n_pred``,
        ``median_ecd_gt``, ``median_ecd_pred``, ``median_ecd_rel_error``
        (pred / gt - 1), ``ecd_wasserstein`` (in the ECD unit) and ``ecd_ks``
        (two-sample KS statistic); the same detection and size keys with the suffix ``_clean``
        for the ``clean`` subset (:func:`clean_ids`, dropped on both sides: a clean ground-truth
        particle unmatched is a false negative, a clean prediction unmatched a false positive, and
        matches of a clean particle count as true positives; ground truth scored as a prediction
        gives 1.0 in every subset); with a measurable selection also
        ``n_gt_measurable``, ``n_pred_measurable``, ``median_ecd_gt_measurable``,
        ``median_ecd_pred_measurable``, ``median_ecd_rel_error_measurable``,
        ``ecd_wasserstein_measurable`` and ``ecd_ks_measurable``.
    """
    gts = [_labels(g) for g in _as_list(gt_labels)]
    preds = [_labels(p) for p in _as_list(pred_labels)]
    gts, preds = _pairs(gts, preds, "instance_metrics")
    if not gts:
        raise NanosegError("instance_metrics: got no images; pass at least one label image.")

    def per_image(spec):
        return list(spec) if isinstance(spec, (list, tuple)) else [spec] * len(gts)

    gm, pm = per_image(gt_measurable), per_image(pred_measurable)
    if len(gm) != len(gts) or len(pm) != len(gts):
        raise NanosegError("instance_metrics: pass one measurable selection per image.")
    pxs = list(pixel_size_nm) if isinstance(pixel_size_nm, (list, tuple, np.ndarray)) else [pixel_size_nm] * len(gts)
    if len(pxs) != len(gts):
        raise NanosegError(f"instance_metrics: got {len(pxs)} pixel sizes for {len(gts)} images; pass one per image.")
    if any(v is None or not np.isfinite(v) for v in pxs) and not all(v is None for v in pxs):
        pxs = [None] * len(gts)  # sizes of all images in one unit: px unless every image has a pixel size
    tp = fp = fn = tp75 = 0
    iou_sum = 0.0
    c = {"tp": 0, "fp": 0, "fn": 0, "tp75": 0, "iou": 0.0}
    ecd = {"gt": [], "pred": [], "gt_m": [], "pred_m": [], "gt_c": [], "pred_c": []}
    for g, p, sg, sp, px in zip(gts, preds, gm, pm, pxs):
        m50, m75 = match_instances(g, p, 0.5), match_instances(g, p, 0.75)
        tp, fp, fn, tp75 = tp + m50["tp"], fp + m50["fp"], fn + m50["fn"], tp75 + m75["tp"]
        iou_sum += sum(m[2] for m in m50["matches"])
        cg, cp = clean_ids(g, clean_min_px), clean_ids(p, clean_min_px)
        set_g, set_p = set(cg.tolist()), set(cp.tolist())
        hit_g = {a for a, _, _ in m50["matches"] if a in set_g}
        hit_p = {b for a, b, _ in m50["matches"] if a in set_g or b in set_p}  # matched: never a clean FP
        c["tp"] += len(hit_g)
        c["iou"] += sum(v for a, _, v in m50["matches"] if a in set_g)
        c["fn"] += len(set_g) - len(hit_g)
        c["fp"] += len(set_p - hit_p)
        c["tp75"] += sum(1 for a, _, _ in m75["matches"] if a in set_g)
        ecd["gt"].append(ecd_values(g, _measurable_ids(g, None), px))
        ecd["pred"].append(ecd_values(p, _measurable_ids(p, None), px))
        ecd["gt_m"].append(ecd_values(g, _measurable_ids(g, sg), px))
        ecd["pred_m"].append(ecd_values(p, _measurable_ids(p, sp), px))
        ecd["gt_c"].append(ecd_values(g, cg, px))
        ecd["pred_c"].append(ecd_values(p, cp, px))
    ecd = {k: np.concatenate(v) for k, v in ecd.items()}
    out = _detection(tp, fp, fn, tp75, iou_sum)
    out.update(_size_stats(ecd["gt"], ecd["pred"]))
    clean = _detection(c["tp"], c["fp"], c["fn"], c["tp75"], c["iou"])
    clean.update(_size_stats(ecd["gt_c"], ecd["pred_c"]))
    out.update({f"{k}_clean": v for k, v in clean.items()})
    if gt_measurable is not None or pred_measurable is not None:
        out.update(_size_stats(ecd["gt_m"], ecd["pred_m"], "_measurable"))
    return {k: float(v) for k, v in out.items()}


def _detection(tp, fp, fn, tp75, iou_sum) -> dict:
    n_gt, n_pred = tp + fn, tp + fp
    f1 = _div(2 * tp, n_gt + n_pred)
    out = {"tp": tp, "fp": fp, "fn": fn,
           "precision_50": _div(tp, n_pred), "recall_50": _div(tp, n_gt), "f1_50": f1,
           "f1_75": _div(2 * tp75, n_gt + n_pred), "sq": _div(iou_sum, tp), "rq": f1}
    out["pq"] = out["sq"] * f1 if tp else (0.0 if n_gt + n_pred else float("nan"))
    return out


def summarize_folds(per_fold):
    """Mean and sample standard deviation (ddof=1) of every numeric metric over folds.

    Parameters
    ----------
    per_fold : list of dict
        One metrics dict per fold; non-numeric values (and bools) are ignored,
        ``nan`` values are skipped.

    Returns
    -------
    dict
        ``{metric: {"mean": m, "std": s}}`` plus the same numbers flat as
        ``"<metric>_mean"`` and ``"<metric>_std"`` (``std`` is ``nan`` with
        fewer than two finite values).
    """
    import pandas as pd

    table = pd.DataFrame([{k: float(v) for k, v in fold.items() if _is_number(v)} for fold in per_fold])
    stats = table.replace([np.inf, -np.inf], np.nan).agg(["mean", "std"])  # skips nan; std with ddof=1
    out = {name: {"mean": float(stats.at["mean", name]), "std": float(stats.at["std", name])}
           for name in table.columns}
    flat = {f"{name}_{s}": v for name, ms in out.items() for s, v in ms.items()}
    return {**out, **flat}


def _is_number(v):
    number = isinstance(v, (int, float, np.integer, np.floating))
    return number and not isinstance(v, (bool, np.bool_))

