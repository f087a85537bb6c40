"""Choosing post-processing settings on validation data: the grid searches.

Each candidate decodes the validation maps with :mod:`nanoseg.postprocess.decode` and is scored with
:func:`nanoseg.evaluation.metrics.instance_metrics`; the best by :data:`OBJECTIVE` wins. Run them on
validation folds only, never on the test images.
"""

from __future__ import annotations

import itertools

import numpy as np

from nanoseg.config import CHOSEN, InstanceSettings, PostprocessSettings, PredictSettings
from nanoseg.errors import NanosegError
from nanoseg.evaluation.metrics import instance_metrics
from nanoseg.io.masks import binarize
from nanoseg.postprocess.decode import (DECODERS, clean_mask, foreground_probability, label_instances,
                                        marker_map, remove_small_instances, watershed_markers)


#: Default search grid for :func:`tune_split_params` (``postprocess.min_distance_grid`` of params.yaml).
SPLIT_GRID = {"split": [False, True], "min_distance_px": PostprocessSettings().min_distance_grid}


#: Default search grid for :func:`tune_instance_params` (``instance.marker_grid``, ``instance.min_marker_grid``).
INSTANCE_GRID = {"marker_threshold": InstanceSettings().marker_grid,
                 "min_marker_px": InstanceSettings().min_marker_grid}

#: Values of the keys a grid leaves out.
_FIXED = {"threshold": PredictSettings().threshold, "opening_radius": PostprocessSettings().opening_radius,
          "min_area_px": 0}


def _grid_search_inputs(name, what, inputs, gt_labels_list, grid, defaults):
    """Check a grid search's inputs: as many predictions as ground truths (at least one), known grid keys."""
    inputs, gts = [np.asarray(x) for x in inputs], list(gt_labels_list)
    if len(inputs) != len(gts) or not inputs:
        raise NanosegError(
            f"{name}: got {len(inputs)} {what} and {len(gts)} ground-truth images; "
            "pass the same non-zero number of each.")
    grid = dict(grid)
    unknown = set(grid) - set(defaults)
    if unknown:
        raise NanosegError(f"{name}: unknown grid keys {sorted(unknown)}; use some of {sorted(defaults)}.")
    return inputs, gts, grid


#: What the grid searches maximise: instance F1 at IoU 0.5 on the ``clean`` subset (the models' ranking metric).
OBJECTIVE = "f1_50_clean"


def _score_entry(metrics: dict) -> dict:
    return {"f1_50": float(metrics["f1_50"]), OBJECTIVE: float(metrics[OBJECTIVE])}


def _best_score(scores):
    """The candidate with the highest :data:`OBJECTIVE` (nan ranks last; the first one on ties)."""
    return max(scores, key=lambda s: -np.inf if np.isnan(s[OBJECTIVE]) else s[OBJECTIVE])


def tune_split_params(masks, gt_labels_list, grid=None):
    """Choose post-processing settings that maximise pooled instance F1 at IoU 0.5
    on the ``clean`` subset (:data:`OBJECTIVE`).

    Run this on validation folds only (never on the test images).

    Parameters
    ----------
    masks : list of (M, N) arrays
        Bool foreground masks, or float probability maps (then ``threshold``
        can be tuned as well).
    gt_labels_list : list of (M, N) int arrays
        Ground-truth instance labels (bool masks are labelled 4-connected).
    grid : dict of lists, optional
        Candidate values; keys among ``threshold`` (default 0.5),
        ``opening_radius`` (1), ``min_area_px`` (0), ``split`` (True),
        ``min_distance_px`` (5), ``compactness`` (0.0). Default
        :data:`SPLIT_GRID`. Each candidate runs :func:`binarize` (float maps
        only) -> :func:`clean_mask` -> :func:`label_instances` ->
        :func:`remove_small_instances`.

    Returns
    -------
    dict
        The best value of every key in the grid, ``f1_50`` (its score) and
        ``scores`` (a list of ``{**params, "f1_50": f1}`` for every candidate).
    """
    defaults = {**_FIXED, "split": True, "min_distance_px": CHOSEN.min_distance_px, "compactness": 0.0}
    masks, gts, grid = _grid_search_inputs("tune_split_params", "masks", masks, gt_labels_list,
                                           SPLIT_GRID if grid is None else grid, defaults)
    keys = list(grid)
    scores, seen, cleaned = [], set(), {}
    for values in itertools.product(*(grid[k] for k in keys)):
        p = {**defaults, **dict(zip(keys, values))}
        effective = tuple((k, v) for k, v in p.items()
                          if p["split"] or k not in ("min_distance_px", "compactness"))
        if effective in seen:
            continue  # without splitting, the seed settings do not matter
        seen.add(effective)
        ckey = (p["threshold"], p["opening_radius"], p["min_area_px"])
        if ckey not in cleaned:
            cleaned[ckey] = [clean_mask(m if m.dtype == bool else binarize(m, p["threshold"]),
                                        p["min_area_px"], p["opening_radius"]) for m in masks]
        preds = [remove_small_instances(
            label_instances(m, p["split"], p["min_distance_px"], compactness=p["compactness"]),
            p["min_area_px"]) for m in cleaned[ckey]]
        scores.append({**{k: p[k] for k in keys}, **_score_entry(instance_metrics(gts, preds))})
    best = _best_score(scores)
    out = {**best, "scores": scores}
    return out


def tune_instance_params(probs, gt_labels_list, grid=None, decoder=None):
    """Choose :func:`decode_instances` settings that maximise pooled instance F1 at IoU 0.5
    on the ``clean`` subset (:data:`OBJECTIVE`).

    Run this on validation folds only (never on the test images).

    Parameters
    ----------
    probs : list of (H, W, C) arrays
        Instance-variant outputs.
    gt_labels_list : list of (H, W) int arrays
        Ground-truth instance labels (bool masks are labelled 4-connected).
    grid : dict of lists, optional
        Candidate values; keys among ``threshold`` (default 0.5),
        ``opening_radius`` (1), ``min_area_px`` (0), ``marker_threshold``
        (0.5), ``min_marker_px`` (0). Default :data:`INSTANCE_GRID`.
    decoder : str, optional
        Passed to :func:`decode_instances`.

    Returns
    -------
    dict
        The best value of every grid key, ``f1_50`` and ``scores`` (every candidate).
    """
    defaults = {**_FIXED, "marker_threshold": CHOSEN.marker_threshold, "min_marker_px": CHOSEN.min_marker_px}
    probs, gts, grid = _grid_search_inputs("tune_instance_params", "probability maps", probs, gt_labels_list,
                                           INSTANCE_GRID if grid is None else grid, defaults)
    for pr in probs:
        if pr.ndim != 3 or pr.shape[-1] not in DECODERS or (decoder and DECODERS[pr.shape[-1]] != decoder):
            raise NanosegError(f"tune_instance_params: expected {decoder or 'instance-variant'} outputs "
                               f"(H, W, 2, 3 or 5), got shape {pr.shape}.")
    keys = list(grid)
    markers = [marker_map(pr) for pr in probs]
    scores, cleaned = [], {}
    for values in itertools.product(*(grid[k] for k in keys)):
        p = {**defaults, **dict(zip(keys, values))}
        ckey = (p["threshold"], p["opening_radius"])
        if ckey not in cleaned:
            cleaned[ckey] = [clean_mask(binarize(foreground_probability(pr), p["threshold"]), 0, p["opening_radius"])
                             for pr in probs]
        preds = [watershed_markers(mk, fg, p["marker_threshold"], p["min_marker_px"], p["min_area_px"])
                 for mk, fg in zip(markers, cleaned[ckey])]
        scores.append({**{k: p[k] for k in keys}, **_score_entry(instance_metrics(gts, preds))})
    best = _best_score(scores)
    return {**best, "scores": scores}
