"""Per-particle measurements from an instance label image.

:func:`particle_table` returns one row per particle (a pandas DataFrame).
Size columns carry their unit in the name: with a pixel size they are
``area_nm2, ecd_nm, feret_max_nm, feret_min_nm``; without one they are
``area_px2, ecd_px, feret_max_px, feret_min_px``, and ``table.attrs["unit"]``
is ``"nm"`` or ``"px"``, so code can use ``f"ecd_{table.attrs['unit']}"``
(or :func:`size_column`). ``area_px`` (the pixel count) is always present, so
without a pixel size ``area_px2`` repeats it as a float -- kept for the
uniform naming.

Definitions
-----------
* ECD: area-equivalent circle diameter, ``sqrt(4 A / pi)``.
* Feret diameters: caliper widths of the particle's convex outline through the
  pixel edges (the contour :func:`skimage.measure.regionprops` uses for
  ``feret_diameter_max``); the minimum is found by rotating calipers (the
  minimum width of a convex polygon is attained with one side flush to a hull
  edge). Because the outline runs along pixel edges, Feret diameters are about
  1 px (up to ~1.4 px for oblique edges) larger than the width of the pixel
  centres, e.g. a disc's Feret diameters exceed its ECD by about 1 px.
* circularity: ``4 pi A / P**2`` with the Crofton perimeter estimate (close to 1
  for discs at all sizes; may slightly exceed 1 for tiny particles).
* solidity: area / convex-hull area.
* measurable: not touching the image border nor the data bar, or, if a
  ``measurable_mask`` (e.g. BAM ``*_cm.tif``) is given, most (> 50 %) of the
  particle's pixels lie in that mask.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull, QhullError
from skimage import measure

from nanoseg.errors import NanosegError

_SIZE = ("area", "ecd", "feret_max", "feret_min")


def size_column(quantity, unit="nm"):
    """Column name of a size quantity (``area``, ``ecd``, ``feret_max``, ``feret_min``)."""
    if quantity not in _SIZE:
        raise ValueError(f"unknown size quantity {quantity!r}; use one of {_SIZE}")
    return f"area_{unit}2" if quantity == "area" else f"{quantity}_{unit}"


def table_columns(unit="nm"):
    """The columns of :func:`particle_table` for ``unit`` ``"nm"`` or ``"px"``."""
    return ["image", "id", "centroid_row_px", "centroid_col_px", "area_px",
            *(size_column(q, unit) for q in _SIZE), "aspect_ratio", "circularity",
            "solidity", "touches_border", "touches_databar", "measurable", "mean_probability"]


def feret_diameter_min(image_convex):
    """Minimum Feret (caliper) diameter in px of a convex bool image (rotating calipers)."""
    padded = np.pad(np.asarray(image_convex, dtype=float), 2)
    points = np.vstack(measure.find_contours(padded, 0.5, fully_connected="high"))
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:  # degenerate outline
        return 0.0
    edges = np.roll(points, -1, axis=0) - points
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    proj = points @ normals.T  # (vertex, edge direction)
    return float((proj.max(axis=0) - proj.min(axis=0)).min())


def majority_inside(labels, mask):
    """For every label id, whether more than half of its pixels are in ``mask``.

    Returns a bool array indexed by label id (length ``labels.max() + 1``).
    ``mask`` must have the width of ``labels``; missing rows at the bottom count
    as outside and extra rows are ignored (the BAM ``*_cm.tif`` masks have 704
    rows, the images 768).
    """
    labels, mask = np.asarray(labels), np.asarray(mask) != 0
    if mask.ndim != 2 or mask.shape[1] != labels.shape[1]:
        raise NanosegError(
            f"measurable mask has shape {mask.shape} but the labels have shape {labels.shape}; "
            "use the mask that belongs to this image (same width).")
    aligned = np.zeros(labels.shape, dtype=bool)
    rows = min(mask.shape[0], labels.shape[0])
    aligned[:rows] = mask[:rows]
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max()) + 1 if flat.size else 1
    inside = np.bincount(flat[aligned.ravel()], minlength=n)
    return 2 * inside > np.bincount(flat, minlength=n)


def particle_table(labels, pixel_size_nm=None, probability=None, image_name="", databar_row=None,
                   measurable_mask=None):
    """Measure every particle of a label image.

    Parameters
    ----------
    labels : (M, N) int array
        Instance labels, 0 = background (a bool mask is labelled 4-connected).
    pixel_size_nm : float, optional
        Pixel size; without it sizes are in px (see the module docstring).
    probability : (M, N) float array, optional
        Foreground probabilities; gives ``mean_probability`` (else ``nan``).
    image_name : str
        Written to the ``image`` column.
    databar_row : int, optional
        First row of the microscope's data bar in ``labels`` coordinates. A
        particle touches the data bar if it has a pixel in the row just above
        it (or below). A bar starting below the image (``databar_row`` > number
        of rows, e.g. images already cropped above it) is never touched; the
        cut is then the image border.
    measurable_mask : (M', N) array, optional
        Overrides the measurable rule (see :func:`majority_inside`).

    Returns
    -------
    pandas.DataFrame
        Columns :func:`table_columns`; ``attrs["unit"]`` is ``"nm"`` or ``"px"``.
        Empty labels give an empty table with the same columns.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = measure.label(labels, connectivity=1)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise NanosegError(f"{image_name or 'labels'}: expected a 2-D integer label image, "
                           f"got shape {labels.shape} and dtype {labels.dtype}.")
    if probability is not None and np.shape(probability) != labels.shape:
        raise NanosegError(f"{image_name or 'labels'}: probability map has shape "
                           f"{np.shape(probability)} but the labels have shape {labels.shape}.")
    unit = "px" if pixel_size_nm is None else "nm"
    scale = 1.0 if pixel_size_nm is None else float(pixel_size_nm)
    inside = None if measurable_mask is None else majority_inside(labels, measurable_mask)
    rows = []
    for r in measure.regionprops(labels, intensity_image=probability):
        (r0, c0, r1, c1), area = r.bbox, float(r.area)
        border = r0 == 0 or c0 == 0 or r1 == labels.shape[0] or c1 == labels.shape[1]
        databar = databar_row is not None and databar_row <= labels.shape[0] and r1 >= databar_row
        fmax, fmin = r.feret_diameter_max, feret_diameter_min(r.image_convex)
        perimeter = r.perimeter_crofton
        rows.append({
            "image": image_name, "id": int(r.label),
            "centroid_row_px": r.centroid[0], "centroid_col_px": r.centroid[1],
            "area_px": int(r.area), size_column("area", unit): area * scale**2,
            size_column("ecd", unit): np.sqrt(4 * area / np.pi) * scale,
            size_column("feret_max", unit): fmax * scale,
            size_column("feret_min", unit): fmin * scale,
            "aspect_ratio": fmax / fmin if fmin > 0 else np.nan,
            "circularity": 4 * np.pi * area / perimeter**2 if perimeter > 0 else np.nan,
            "solidity": r.solidity, "touches_border": bool(border),
            "touches_databar": bool(databar),
            "measurable": bool(inside[r.label]) if inside is not None else not (border or databar),
            "mean_probability": float(r.intensity_mean) if probability is not None else np.nan,
        })
    table = pd.DataFrame(rows, columns=table_columns(unit))
    if not rows:
        flags = ("touches_border", "touches_databar", "measurable")
        table = table.astype({c: (object if c == "image" else np.int64 if c in ("id", "area_px")
                                  else bool if c in flags else float) for c in table.columns})
    table.attrs["unit"] = unit
    return table
