"""From probability maps to particle instances.

Pipeline: :func:`binarize` -> :func:`clean_mask` -> :func:`label_instances`
(optionally splitting touching particles with a distance-transform watershed)
-> :func:`remove_small_instances`. The classical baseline (:func:`otsu_mask`,
:func:`baseline_instances`) uses the same steps on an Otsu-thresholded image.

Instance-variant outputs (multi-channel maps, :mod:`nanoseg.model.targets`) are
decoded by :func:`decode_instances`: markers from the interior probability
(``classes3``), the normalised distance (``fg_distance``) or the interior
probability less the HoVer maps' edges (``classes3_hv``, :func:`marker_map`), a marker-controlled
watershed restricted to the foreground, then 1-px lines cut between touching
instances (:func:`separate_touching`); :func:`segment` applies a model's stored settings. The grid
searches that choose those settings on validation data are :mod:`nanoseg.evaluation.selection`'s.

Conventions: foreground is ``prob >= threshold``; instances are the
**4-connected** components of the foreground, as in the BAM manual masks, where
touching particles are separated by 1-px background lines (which may be only
diagonally connected; they still cut the particles apart in 4-connectivity).
Label images are ``np.int32`` with 0 as background and ids ``1..n``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage import color, feature, filters, measure, morphology, segmentation

from nanoseg.config import CHOSEN, PostprocessSettings
from nanoseg.errors import NanosegError
from nanoseg.io.masks import binarize

#: Instance decoders by the channel count of the model output.
DECODERS = {3: "classes3", 2: "fg_distance", 5: "classes3_hv"}


def remove_small_instances(labels, min_area_px=0):
    """Set instances with fewer than ``min_area_px`` pixels to 0 and relabel 1..n.

    Returns ``np.int32`` labels; works for label images and bool masks
    (a bool mask is labelled 4-connected first). scikit-image's ``remove_small_objects``
    (objects of at most ``ceil(min_area_px) - 1`` pixels) and ``relabel_sequential``.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = measure.label(labels, connectivity=1)
    labels = labels.astype(np.int32, copy=True)
    if min_area_px > 1 and labels.max() > 1:
        labels = morphology.remove_small_objects(labels, max_size=math.ceil(min_area_px) - 1)
    elif min_area_px > 1 and np.count_nonzero(labels) < min_area_px:  # one instance (skimage warns on one label)
        labels[:] = 0
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


def clean_mask(mask, min_area_px=0, opening_radius=1, fill_holes=True):
    """Smooth a foreground mask without merging separated particles.

    Steps: binary opening with a disk of ``opening_radius`` (0 skips it),
    filling holes inside each 4-connected object separately, then removing
    objects smaller than ``min_area_px`` pixels.

    Effect on separating lines: an opening only ever removes foreground, so the
    1-px background lines between touching particles are kept (at most widened
    where the line meets the outline); it also deletes foreground structures
    narrower than ``2 * opening_radius + 1`` px -- thin necks, so an opening can
    cut a particle in two, and particles smaller than the disk vanish.
    Holes are filled per object (8-connected background, the dual of
    4-connected objects), so background enclosed by *several* touching
    particles, such as the gap between a ring of particles, stays background.

    Parameters
    ----------
    mask : (M, N) array of bool
    min_area_px : int
        Objects with fewer pixels are removed (after opening and filling).
    opening_radius : int
        Radius of the disk used for the opening; 0 disables it.
    fill_holes : bool

    Returns
    -------
    (M, N) array of bool
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise NanosegError(f"clean_mask: expected a 2-D mask, got shape {mask.shape}.")
    if opening_radius and opening_radius > 0:
        mask = morphology.opening(mask, morphology.disk(int(opening_radius)), mode="ignore")
    if fill_holes:
        labels = measure.label(mask, connectivity=1)
        out = mask.copy()
        for region in measure.regionprops(labels):
            out[region.slice] |= region.image_filled
        mask = out
    if min_area_px > 1:
        mask = remove_small_instances(mask, min_area_px) > 0
    return mask


def label_instances(mask, split=False, min_distance_px=5, footprint=None, compactness=0.0):
    """Label particle instances in a foreground mask.

    Parameters
    ----------
    mask : (M, N) array of bool
    split : bool
        If False, instances are the 4-connected components. If True, each
        component is further split by a watershed on the negated Euclidean
        distance transform, seeded at its local maxima
        (:func:`skimage.feature.peak_local_max` per component), which separates
        merged touching particles. A component without a seed stays whole.
    min_distance_px : int
        Minimum distance between seeds; larger values split less.
    footprint : array of bool, optional
        Neighbourhood for the peak search (overrides ``min_distance_px``).
    compactness : float
        Compact watershed parameter (0 = classical watershed).

    Returns
    -------
    (M, N) array of np.int32, 0 = background, ids 1..n.
    """
    mask = np.asarray(mask, dtype=bool)
    components = measure.label(mask, connectivity=1)
    if not split or not mask.any():
        return components.astype(np.int32)
    distance = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(
        distance, min_distance=int(min_distance_px), footprint=footprint,
        labels=components, exclude_border=False,
    )
    seeds = np.zeros(mask.shape, dtype=bool)
    seeds[tuple(peaks.T)] = True
    markers = measure.label(seeds, connectivity=2)  # plateau maxima -> one seed
    labels = segmentation.watershed(-distance, markers, mask=mask, compactness=compactness)
    # components that got no seed (or pieces cut off from their seed) keep their own id
    orphan = mask & (labels == 0)
    if orphan.any():
        labels[orphan] = measure.label(orphan, connectivity=1)[orphan] + labels.max()
    # watershed regions may be 4-disconnected; make every instance one 4-connected piece
    labels = measure.label(labels, connectivity=1, background=0)
    return labels.astype(np.int32)


def _gray(image):
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = color.rgb2gray(image[..., :3])
    if image.ndim != 2:
        raise NanosegError(f"otsu_mask: expected a 2-D grayscale image, got shape {image.shape}.")
    return image


def otsu_mask(image, sample_rows=None, *, opening_radius=1, fill_holes=True, min_area_px=0):
    """Classical foreground mask: Otsu threshold, then :func:`clean_mask`.

    In the BAM TiO2 SEM images the particles are brighter than the background
    (checked on the shared data: foreground mean luminance ~3x the background),
    so foreground is ``image > otsu``.

    Parameters
    ----------
    image : (M, N) array
        Grayscale image (RGB is converted to luminance).
    sample_rows : int or slice, optional
        Rows used to compute the threshold, e.g. ``704`` (the first 704 rows) to
        ignore the microscope's data bar; the mask covers the whole image.
    opening_radius, fill_holes, min_area_px
        Passed to :func:`clean_mask`.

    Returns
    -------
    (M, N) array of bool
    """
    image = _gray(image)
    rows = slice(None) if sample_rows is None else (
        sample_rows if isinstance(sample_rows, slice) else slice(0, int(sample_rows)))
    sample = image[rows]
    if sample.size == 0 or sample.min() == sample.max():
        return np.zeros(image.shape, dtype=bool)
    mask = image > filters.threshold_otsu(sample)
    return clean_mask(mask, min_area_px=min_area_px, opening_radius=opening_radius,
                      fill_holes=fill_holes)


def baseline_instances(image, watershed=False, min_area_px=20, min_distance_px=5):
    """Classical instance baseline: Otsu + morphology [+ distance watershed].

    Returns ``np.int32`` labels; instances under ``min_area_px`` pixels (also
    watershed fragments) are removed.
    """
    mask = otsu_mask(image, min_area_px=min_area_px)
    labels = label_instances(mask, split=watershed, min_distance_px=min_distance_px)
    return remove_small_instances(labels, min_area_px)


# ----------------------------------------------------------------------------- instance variant


def foreground_probability(prob):
    """The particle probability of a model output.

    (H, W) maps are returned as they are; (H, W, 1) -> channel 0; ``classes3``
    (H, W, 3: background, interior, boundary) -> ``1 - background`` (the
    separating lines count as foreground there; likewise ``classes3_hv``, H, W, 5);
    ``fg_distance`` (H, W, 2) -> channel 0.
    """
    prob = np.asarray(prob)
    if prob.ndim == 2:
        return prob
    if prob.ndim == 3 and prob.shape[-1] in (1, 2):
        return prob[..., 0]
    if prob.ndim == 3 and prob.shape[-1] in (3, 5):
        return 1.0 - prob[..., 0]
    raise NanosegError(f"expected a probability map (H, W) or (H, W, C) with C in 1, 2, 3 or 5, got shape {prob.shape}.")


def hv_energy(prob) -> np.ndarray:
    """Where the HoVer maps of a ``classes3_hv`` output say a particle ends, in [0, 1] (HoVer-Net's step).

    The horizontal map h rises from -1 to +1 across each particle from left to right, and the vertical
    map v from top to bottom (channels 3, 4, encoded (v + 1) / 2), so inside a particle their slopes
    dh/dx and dv/dy are positive; across a contact between two particles (and at an outline) they fall.
    The energy is ``max(-dh/dx, -dv/dy, 0)`` (Sobel derivatives), divided by its maximum over the image
    as HoVer-Net does (a network's maps are soft ramps where the targets jump; their scale varies).
    """
    prob = np.asarray(prob, dtype=np.float32)
    h, v = 2.0 * prob[..., 3] - 1.0, 2.0 * prob[..., 4] - 1.0
    energy = np.maximum(np.maximum(-ndi.sobel(h, axis=1), -ndi.sobel(v, axis=0)), 0.0)
    top = float(energy.max())
    return energy / top if top > 0 else energy


def marker_map(prob):
    """The map the decoder seeds and floods: channel 1 (interior probability, or the normalised
    distance of ``fg_distance``); for ``classes3_hv`` the interior probability less :func:`hv_energy`,
    which cuts a seed where the maps fall across a contact even where the class map alone would join
    two particles.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape[-1] != 5:
        return prob[..., 1]
    return prob[..., 1] - hv_energy(prob)


def separate_touching(labels):
    """Cut a 1-px background line between touching instances, as in the BAM manual masks.

    A pixel is set to 0 when one of its 4-neighbours belongs to an instance
    with a larger id, so two instances never stay 4-adjacent (only the side
    with the smaller id loses pixels). Returns a new ``np.int32`` array; pieces
    cut off an instance keep its id.
    """
    labels = np.asarray(labels, dtype=np.int32)
    cut = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = labels.swapaxes(0, axis)
        c = cut.swapaxes(0, axis)
        lo, hi = a[:-1], a[1:]
        c[:-1] |= (lo > 0) & (hi > lo)
        c[1:] |= (hi > 0) & (lo > hi)
    out = labels.copy()
    out[cut] = 0
    return out


def decode_instances(prob, threshold=0.5, decoder=None, marker_threshold=0.5, min_marker_px=0,
                     opening_radius=1, min_area_px=0):
    """Instance labels from an instance-variant output.

    Steps: foreground = :func:`foreground_probability` ``>= threshold``, then
    :func:`clean_mask` (opening, holes); markers = the 4-connected components
    of ``marker >= marker_threshold`` inside the foreground with at least
    ``min_marker_px`` pixels, where ``marker`` is :func:`marker_map` (interior
    probability for ``classes3``, normalised distance for ``fg_distance``,
    interior less :func:`hv_energy` for ``classes3_hv``);
    watershed of ``-marker`` from the markers, restricted to the foreground
    (foreground components without a marker stay whole);
    :func:`separate_touching`; 4-connected relabelling and
    :func:`remove_small_instances`.

    Parameters
    ----------
    prob : (H, W, C) array
        Model output, C = 3 (``classes3``), 2 (``fg_distance``) or 5 (``classes3_hv``).
    threshold : float
        Foreground threshold.
    decoder : {"classes3", "fg_distance", "classes3_hv"}, optional
        Default from the channel count (:data:`DECODERS`).
    marker_threshold : float
    min_marker_px : int
    opening_radius : int
    min_area_px : int

    Returns
    -------
    (H, W) np.int32 labels, 0 = background, ids 1..n; touching instances are
    separated by background lines (4-connected instances).
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3 or prob.shape[-1] not in DECODERS:
        raise NanosegError(f"decode_instances: expected an instance-variant output (H, W, 2, 3 or 5), "
                           f"got shape {prob.shape}.")
    decoder = decoder or DECODERS[prob.shape[-1]]
    if DECODERS.get(prob.shape[-1]) != decoder:
        raise NanosegError(f"decoder {decoder!r} does not fit a model output with {prob.shape[-1]} channels; "
                           "check postprocess.decoder in the model's nanoseg.json.")
    fg = clean_mask(binarize(foreground_probability(prob), threshold), 0, opening_radius)
    return watershed_markers(marker_map(prob), fg, marker_threshold, min_marker_px, min_area_px)


def watershed_markers(marker, fg, marker_threshold, min_marker_px, min_area_px):
    seeds = remove_small_instances(measure.label((marker >= marker_threshold) & fg, connectivity=1),
                                   int(min_marker_px))
    labels = segmentation.watershed(-marker, seeds, mask=fg)
    orphan = fg & (labels == 0)
    if orphan.any():
        labels[orphan] = measure.label(orphan, connectivity=1)[orphan] + labels.max()
    labels = measure.label(separate_touching(labels), connectivity=1, background=0)
    return remove_small_instances(labels, int(min_area_px))


#: Post-processing of a model that carries none of its own (params.yaml's defaults and :data:`nanoseg.config.CHOSEN`).
DEFAULT_POST = {"opening_radius": PostprocessSettings().opening_radius, "min_area_nm2": PostprocessSettings().min_area_nm2,
                "split": CHOSEN.split, "min_distance_px": CHOSEN.min_distance_px}


#: Decoder settings of an instance-variant model that carries none of its own.
INSTANCE_POST = {"marker_threshold": CHOSEN.marker_threshold, "min_marker_px": CHOSEN.min_marker_px}


def min_area_px(post: dict, pixel_size_nm: float | None) -> int:
    """The minimum particle area in pixels (``min_area_nm2`` converted; 0 without a pixel size)."""
    if not pixel_size_nm:
        return int(post.get("min_area_px", 0))
    return int(round(float(post["min_area_nm2"]) / float(pixel_size_nm) ** 2))


def segment(prob: np.ndarray, threshold: float, post: dict, pixel_size_nm: float | None = None):
    """Probability map -> (mask, instance labels) with the stored post-processing settings.

    A paper-variant map (H, W) is thresholded, cleaned and labelled (optionally
    split by a distance watershed); an instance-variant output
    (H, W, 2, 3 or 5) is decoded with ``post["decoder"]`` (default: by its channel count),
    ``marker_threshold`` and ``min_marker_px``.
    """
    post = {**DEFAULT_POST, **(post or {})}
    area = min_area_px(post, pixel_size_nm)
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[-1] in DECODERS:
        post = {**INSTANCE_POST, **post}
        labels = decode_instances(prob, threshold, post.get("decoder"), float(post["marker_threshold"]),
                                  int(post["min_marker_px"]), int(post["opening_radius"]), area)
        return labels > 0, labels
    prob = foreground_probability(prob)
    mask = clean_mask(binarize(prob, threshold), min_area_px=area, opening_radius=int(post["opening_radius"]))
    labels = label_instances(mask, split=bool(post["split"]), min_distance_px=int(post["min_distance_px"]))
    labels = remove_small_instances(labels, area)
    return labels > 0, labels
