"""Training targets of the instance variant, derived from the manual masks.

The BAM manual masks draw touching particles as 4-connected components kept
apart by 1-px background lines. The paper model (Dice loss on the mask) fills
those lines and merges the particles; the instance variant learns targets that
make the separations explicit. Targets are computed from the masks when the
data is loaded (:func:`training_targets`, called by
:func:`nanoseg.model.training.fit`); nothing is stored beside the dataset.

Definitions (``labels`` = 4-connected components of the mask, ids 1..n):

separating line
    Background pixels whose 3x3 neighbourhood (8-neighbours) holds pixels of at
    least two different instances: exactly the 1-px lines (straight or
    diagonal steps) between touching particles. Wider gaps (2 px or more) are
    not lines: no background pixel there sees both particles.
touching ring
    Foreground pixels 8-adjacent to a separating-line pixel, plus foreground
    pixels 8-adjacent to a pixel of another instance (particles that touch
    only diagonally): the outermost ring of an instance where it touches another.
boundary
    separating lines + touching rings: a band ~3 px wide along every contact.

Heads (``instance.head`` in params.yaml):

``classes3``
    (H, W, 3) one-hot: 0 background (background minus lines), 1 interior
    (foreground minus rings), 2 separating boundary. The line pixels are
    *boundary*, not background, so ``1 - p(background)`` is the particle mask
    with the lines filled; the decoder (:func:`nanoseg.postprocess.decode.decode_instances`)
    cuts the lines back in.
``fg_distance``
    (H, W, 2): 0 foreground (the manual mask, lines are background), 1 the
    Euclidean distance of each foreground pixel to the nearest background
    pixel divided by the largest such distance in its instance (1 at the
    centre of every particle, small at its outline, 0 on background).
``classes3_hv``
    (H, W, 5): the ``classes3`` one-hot and HoVer-Net's horizontal and
    vertical maps (Graham et al. 2019, :func:`hv_maps`): each foreground
    pixel's column and row offset from its instance's centre of mass, scaled
    to -1..1 on each side of the centre, stored as ``(offset + 1) / 2`` in
    [0, 1] (0.5 on background and lines). Where two particles touch, the maps
    jump from +1 to -1 across the line, which the decoder reads as a boundary
    even where the boundary class is weak. The maps are vectors: flips and
    rotations must turn them too (:func:`dihedral`).

:func:`training_targets` appends a per-pixel loss weight as a last channel
(``class_weights`` of the pixel's class: background / interior / boundary,
the same three classes for both heads; with ``border_w0 > 0`` plus the U-Net
border term :func:`border_weights`).
"""

from __future__ import annotations

import math
import typing

import numpy as np
from scipy import ndimage as ndi
from skimage import measure

from nanoseg.config import InstanceSettings, check
from nanoseg.errors import NanosegError

HEADS = typing.get_args(InstanceSettings.model_fields["head"].annotation)  # classes3, fg_distance, classes3_hv
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
#: Channels of a head's output that hold the (horizontal, vertical) vector maps, encoded (v + 1) / 2.
VECTORS = {"classes3_hv": (3, 4)}


def output_vectors(pred):
    """The vector channels of a model output, known by its channel count (5: ``classes3_hv``), or None."""
    pred = np.asarray(pred)
    return VECTORS["classes3_hv"] if pred.ndim == 3 and pred.shape[-1] == 5 else None


def instance_settings(params: dict) -> dict:
    """The ``instance:`` settings, checked, with the defaults of :class:`nanoseg.config.InstanceSettings`
    filled in (``params`` may hold a partial section or none).

    Raises
    ------
    NanosegError
        An unknown key, head or loss, or ``class_weights`` not 3 non-negative numbers.
    """
    return check(InstanceSettings, params.get("instance"), "instance")


def instance_labels(mask) -> np.ndarray:
    """Ground-truth instances: 4-connected components of a mask (``np.int32``)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise NanosegError(f"expected a 2-D mask, got shape {mask.shape}.")
    return measure.label(mask != 0, connectivity=1).astype(np.int32)


def _neighbour_range(labels):
    """Largest and smallest non-zero label in each pixel's 3x3 window (0 where none)."""
    big = np.iinfo(np.int32).max
    hi = ndi.maximum_filter(labels, size=3, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(labels > 0, labels, big), size=3, mode="constant", cval=big)
    return hi, np.where(lo == big, 0, lo)


def separating_lines(labels) -> np.ndarray:
    """Background pixels with at least two different instances in their 3x3 neighbourhood (bool)."""
    labels = np.asarray(labels)
    hi, lo = _neighbour_range(labels)
    return (labels == 0) & (lo > 0) & (hi != lo)


def separate_touching(labels) -> np.ndarray:
    """Cut 1-px background lines between 4-adjacent pixels of different instances (the larger id yields).

    After a nearest-neighbour zoom, two manual instances can touch (their
    separating line was dropped); this restores a line so that the mask's
    4-connected components are the instances again.
    """
    labels = np.array(labels, copy=True)
    for axis in (0, 1):
        for shift in (1, -1):
            other = np.roll(labels, shift, axis=axis)
            edge = [slice(None)] * 2
            edge[axis] = 0 if shift == 1 else -1
            other[tuple(edge)] = 0  # no wrap-around
            labels[(labels > 0) & (other > 0) & (other < labels)] = 0
    return labels


def zoom_mask(mask, shape) -> np.ndarray:
    """A manual mask resampled to ``shape``: instances by nearest neighbour, separations kept (bool)."""
    from skimage.transform import resize

    labels = instance_labels(mask)
    zoomed = resize(labels, tuple(shape), order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return separate_touching(zoomed.astype(np.int32)) > 0


def zoom_targets(mask, shape, params: dict) -> np.ndarray:
    """:func:`training_targets` of a mask window zoomed to ``shape`` (scale augmentation)."""
    return training_targets(zoom_mask(mask, shape), params)


def boundary_classes(mask) -> np.ndarray:
    """Per-pixel class (uint8): 0 background, 1 interior, 2 separating boundary (see the module notes)."""
    labels = instance_labels(mask)
    lines = separating_lines(labels)
    hi, lo = _neighbour_range(labels)
    fg = labels > 0
    contact = fg & ((hi != labels) | (lo != labels))
    ring = fg & (ndi.binary_dilation(lines, structure=np.ones((3, 3), bool)) | contact)
    classes = np.where(fg, INTERIOR, BACKGROUND).astype(np.uint8)
    classes[lines | ring] = BOUNDARY
    return classes


def normalized_distance(mask) -> np.ndarray:
    """Distance of each foreground pixel to the background, divided by its instance's maximum (float32)."""
    labels = instance_labels(mask)
    dist = ndi.distance_transform_edt(labels > 0)
    n = int(labels.max())
    if n == 0:
        return np.zeros(labels.shape, np.float32)
    peak = np.zeros(n + 1)
    peak[1:] = ndi.maximum(dist, labels, index=np.arange(1, n + 1))
    peak[0] = 1.0
    return (dist / peak[labels]).astype(np.float32)


def hv_maps(mask) -> np.ndarray:
    """HoVer-Net's horizontal and vertical maps of the instances of a mask, (H, W, 2) float32 in -1..1.

    For each foreground pixel: its column (channel 0) and row (channel 1)
    offset from its instance's centre of mass, divided by the largest offset
    on the same side of the centre within the instance (so -1 at the
    instance's leftmost/topmost pixel, +1 at its rightmost/bottommost, 0 at
    the centre and on background).
    """
    labels = instance_labels(mask)
    out = np.zeros(labels.shape + (2,), np.float32)
    n = int(labels.max())
    if n == 0:
        return out
    fg = labels > 0
    idx = np.arange(1, n + 1)
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    for ch, coord in enumerate((cols, rows)):
        centre = np.zeros(n + 1)
        centre[1:] = ndi.mean(coord, labels, idx)
        off = np.where(fg, coord - centre[labels], 0.0)
        neg, pos = np.ones(n + 1), np.ones(n + 1)
        neg[1:] = -np.minimum(ndi.minimum(off, labels, idx), 0.0)
        pos[1:] = np.maximum(ndi.maximum(off, labels, idx), 0.0)
        neg[neg == 0], pos[pos == 0] = 1.0, 1.0
        out[..., ch] = np.where(off < 0, off / neg[labels], off / pos[labels])
    return out


def dihedral(y, k: int = 0, flip: bool = False, vectors=None, invert: bool = False) -> np.ndarray:
    """A map turned like an image: ``np.rot90(y, k)`` then a left-right flip, vector channels turned too.

    ``vectors`` = (h, v): the channels of a vector map encoded ``(value + 1) / 2``
    (:data:`VECTORS`; None: a plain map, only the pixels move). A left-right
    flip negates the horizontal component; a counter-clockwise quarter turn
    maps (h, v) to (v, -h). ``invert=True`` undoes ``dihedral(y, k, flip)``:
    flip first, then ``-k`` quarter turns.
    """
    y = np.asarray(y)

    def turn(y, times):
        y = np.rot90(y, times)
        if vectors is not None:
            y = np.array(y)
            h, v = vectors
            for _ in range(times % 4):
                y[..., h], y[..., v] = y[..., v].copy(), 1.0 - y[..., h]
        return y

    def mirror(y):
        y = np.array(y[:, ::-1])
        if vectors is not None:
            y[..., vectors[0]] = 1.0 - y[..., vectors[0]]
        return y

    if invert:
        return turn(mirror(y) if flip else y, -k)
    y = turn(y, k)
    return mirror(y) if flip else y


def make_targets(mask, head: str = "classes3") -> np.ndarray:
    """Training targets of an instance head from a manual mask.

    Parameters
    ----------
    mask : (H, W) array
        Manual mask; non-zero is foreground, instances are 4-connected components.
    head : {"classes3", "fg_distance", "classes3_hv"}

    Returns
    -------
    (H, W, C) float32
        ``classes3``: one-hot background / interior / boundary (C = 3);
        ``fg_distance``: foreground and normalised distance (C = 2);
        ``classes3_hv``: the ``classes3`` one-hot and :func:`hv_maps` encoded ``(v + 1) / 2`` (C = 5).
    """
    if head == "classes3":
        return np.eye(3, dtype=np.float32)[boundary_classes(mask)]
    if head == "classes3_hv":
        return np.concatenate([make_targets(mask), (hv_maps(mask) + 1.0) / 2.0], axis=-1)
    if head == "fg_distance":
        fg = (np.asarray(mask) != 0).astype(np.float32)
        return np.stack([fg, normalized_distance(mask)], axis=-1)
    raise NanosegError(f"instance head {head!r} is unknown; use one of {HEADS} (params.yaml instance.head).")


def border_weights(mask, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The U-Net border term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on background pixels (float32).

    ``d1`` and ``d2`` are the distances to the nearest and second-nearest
    instance (Ronneberger et al. 2015). The term is 0 on foreground pixels and
    where the second instance is farther than ``4 sigma`` (there it is below
    ``w0 * exp(-8)``); on a 1-px line between two particles it is
    ``w0 * exp(-2 / sigma**2)``.
    """
    labels = instance_labels(mask)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    reach = int(math.ceil(4 * sigma)) + 1
    for region in measure.regionprops(labels):
        r0, c0, r1, c1 = region.bbox
        r0, c0 = max(r0 - reach, 0), max(c0 - reach, 0)
        r1, c1 = min(r1 + reach, labels.shape[0]), min(c1 + reach, labels.shape[1])
        d = ndi.distance_transform_edt(labels[r0:r1, c0:c1] != region.label)
        a, b = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
        b[...] = np.minimum(b, np.maximum(a, d))
        a[...] = np.minimum(a, d)
    with np.errstate(invalid="ignore", over="ignore"):
        term = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    term[~np.isfinite(term) | (labels > 0)] = 0.0
    return term.astype(np.float32)


def pixel_weights(mask, settings: dict) -> np.ndarray:
    """Per-pixel loss weight: ``class_weights`` of the pixel's class (+ the border term for ``border_wcce_dice``)."""
    weights = np.asarray(settings["class_weights"], np.float32)[boundary_classes(mask)]
    if settings["loss"] == "border_wcce_dice" and float(settings["border_w0"]) > 0:
        weights = weights + border_weights(mask, float(settings["border_w0"]), float(settings["border_sigma"]))
    return weights.astype(np.float32)


def training_targets(mask, params: dict) -> np.ndarray:
    """What the network trains on for a manual mask, by ``model.variant``.

    ``paper``: the mask as (H, W) float32 0/1 (as always). ``instance``:
    :func:`make_targets` for ``instance.head`` with :func:`pixel_weights` as
    an extra last channel, (H, W, C + 1) float32.
    """
    if params["model"]["variant"] == "paper":
        return (np.asarray(mask) != 0).astype(np.float32)
    s = instance_settings(params)
    return np.concatenate([make_targets(mask, s["head"]), pixel_weights(mask, s)[..., None]], axis=-1)
