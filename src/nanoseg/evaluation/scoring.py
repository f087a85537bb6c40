"""Scoring segmentations the way users need them: pixels, instances, sizes.

Probability map -> binary mask -> instances (:mod:`nanoseg.postprocess.decode`) ->
pixel metrics (the paper's seven) and instance/size metrics against the
manual masks, whose 4-connected components are the ground-truth particles
(measurable particles: the BAM ``*_cm.tif`` masks). The classical baselines
(Otsu + morphology, with and without a distance-transform watershed) run
through the same scoring code. Instance-variant outputs (H, W, C) are decoded
by :func:`nanoseg.postprocess.decode.decode_instances`; their pixel metrics use the
foreground probability (:func:`nanoseg.postprocess.decode.foreground_probability`).
"""

from __future__ import annotations

import numpy as np

from nanoseg.config import CHOSEN
from nanoseg.evaluation.error_analysis import error_summary
from nanoseg.evaluation.metrics import instance_metrics, pixel_metrics
from nanoseg.postprocess.decode import DEFAULT_POST, baseline_instances, foreground_probability, min_area_px


def training_scale(masks, pixel_sizes_nm) -> dict:
    """The scale a model was trained at: median pixel size of its training images and the size range of
    the manual particles it saw (clean subset: not cut by the border, >= 20 px).

    Parameters
    ----------
    masks : list of bool arrays
        The training images' manual masks.
    pixel_sizes_nm : list of float or None
        One per mask.

    Returns
    -------
    dict
        ``pixel_size_nm`` (median, None without pixel sizes), ``ecd_nm`` ({``p05``, ``median``, ``p95``}, None
        without pixel sizes) and ``ecd_px`` (the same in pixels).
    """
    from nanoseg.evaluation.metrics import clean_ids, ecd_values

    ecd_px, ecd_nm = [], []
    for m, px in zip(masks, pixel_sizes_nm):
        lab = truth_labels(m)
        d = ecd_values(lab, clean_ids(lab), None)
        ecd_px.append(d)
        if px:
            ecd_nm.append(d * float(px))

    def q(v):
        v = np.concatenate(v) if v else np.zeros(0)
        return {k: float(np.percentile(v, p)) for k, p in (("p05", 5), ("median", 50), ("p95", 95))} if v.size else None

    known = [float(p) for p in pixel_sizes_nm if p]
    return {"pixel_size_nm": float(np.median(known)) if known else None,
            "ecd_nm": q(ecd_nm) if len(ecd_nm) == len(masks) else None, "ecd_px": q(ecd_px)}


def truth_labels(mask: np.ndarray) -> np.ndarray:
    """Ground-truth instances: 4-connected components of the manual mask."""
    from skimage.measure import label

    return label(np.asarray(mask, bool), connectivity=1).astype(np.int32)


def score(truths, probs, labels_list, pixel_size_nm=None, class_masks=None, threshold=0.5,
          clean_min_px: int | None = None) -> dict:
    """Pixel and instance metrics pooled over images, with the error classes of :mod:`nanoseg.evaluation.error_analysis`.

    Parameters
    ----------
    truths : list of bool arrays (manual masks, cropped to the sample area)
    probs : list of float arrays (probability maps or bool masks; instance-variant
        outputs (H, W, C) are scored by their foreground probability)
    labels_list : list of int arrays (predicted instances)
    pixel_size_nm : float, list of float (one per image) or None
    class_masks : list of arrays or None
        Ground-truth measurable particles; predicted measurable = not touching the border.
    clean_min_px : int, optional
        Smallest instance of the ``clean`` subset (default :data:`nanoseg.evaluation.metrics.CLEAN_MIN_PX`; an image
        zoomed by ``z`` keeps the same particles with ``20 z**2``).
    """
    from nanoseg.evaluation.metrics import CLEAN_MIN_PX

    clean_min_px = CLEAN_MIN_PX if clean_min_px is None else int(clean_min_px)
    out = pixel_metrics(truths, [foreground_probability(p) for p in probs], threshold=threshold)
    gts = [truth_labels(t) for t in truths]
    gm = [cm for cm in class_masks] if class_masks is not None else None
    pm = ["border"] * len(gts) if class_masks is not None else None
    inst = instance_metrics(gts, labels_list, pixel_size_nm=pixel_size_nm, gt_measurable=gm, pred_measurable=pm,
                            clean_min_px=clean_min_px)
    out.update(inst)
    out.update(error_summary(gts, list(labels_list), clean_min_px))
    return out


def baselines(images, truths, pixel_size_nm=None, class_masks=None, min_distance_px=CHOSEN.min_distance_px) -> dict:
    """Scores of the classical baselines through the same code: ``otsu`` and ``otsu_watershed``.
    ``pixel_size_nm``: one value, one per image, or None."""
    pxs = list(pixel_size_nm) if isinstance(pixel_size_nm, (list, tuple)) else [pixel_size_nm] * len(images)
    res = {}
    for name, ws in (("otsu", False), ("otsu_watershed", True)):
        labels = [baseline_instances(im, watershed=ws, min_area_px=max(min_area_px(DEFAULT_POST, px), 1),
                                     min_distance_px=min_distance_px) for im, px in zip(images, pxs)]
        res[name] = score(truths, [lab > 0 for lab in labels], labels, pixel_size_nm, class_masks)
    return res
