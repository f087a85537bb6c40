"""Particle outlines as polygons and as a Fiji/ImageJ ROI set (``<stem>_rois.zip``).

:func:`outline` traces a particle's outer boundary along the pixel edges: the vertices are pixel
corners (``x`` = column, ``y`` = row, the top-left corner of pixel ``(r, c)`` is ``(c, r)``), so the
polygon encloses exactly the particle's pixels (a hole-free particle's polygon area equals its
``area_px``; ImageJ, which fills the pixels whose centres lie inside a polygon, measures the same
pixels). Pixels that touch only at a corner stay in one outline (8-connected, like the labels of
a watershed split). :func:`write_rois` writes one polygon ROI per particle, named by the particle's
``id`` (the ``id`` column of ``particles.csv``), with the `roifile <https://pypi.org/project/roifile/>`_
package; Fiji opens the zip in its ROI Manager (File > Open, or drag it onto Fiji). Measurable
particles are stroked yellow, excluded ones (touching the border or the data bar) cyan, as on the
``nanoseg app`` page.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MEASURABLE_RGB = (255, 220, 0)   # the overlay colour of nanoseg.report.overlays.overlay_image
EXCLUDED_RGB = (0, 200, 255)

# unit steps (drow, dcol) of the four edge directions, counter-clockwise order as seen on screen
_STEPS = ((0, 1), (-1, 0), (0, -1), (1, 0))  # right, up, left, down


def _boundary_edges(mask: np.ndarray) -> dict:
    """Directed pixel-edge segments around ``mask``, inside on the right of the walk (y down).

    Returns {start corner (row, col): [direction index, ...]}.
    """
    m = np.pad(np.asarray(mask, bool), 1)
    out: dict = {}
    # top edges (pixel above outside) run right, bottom edges left, left edges up, right edges down
    for d, (dr, dc), corner in ((0, (-1, 0), (0, 0)), (2, (1, 0), (1, 1)), (1, (0, -1), (1, 0)),
                                (3, (0, 1), (0, 1))):
        neighbour = np.roll(m, (-dr, -dc), axis=(0, 1))
        rows, cols = np.nonzero(m & ~neighbour)
        for r, c in zip((rows - 1 + corner[0]).tolist(), (cols - 1 + corner[1]).tolist()):
            out.setdefault((r, c), []).append(d)
    return out


def _loops(edges: dict) -> list[list[tuple[int, int]]]:
    """Chain the edges into closed loops of corners; at a corner where two pixels touch diagonally
    the walk turns left, which keeps the two pixels in one loop."""
    loops = []
    while edges:
        start = next(iter(edges))
        corner, heading, loop = start, None, []
        while True:
            choices = edges.get(corner)
            if not choices:
                break
            d = choices[0] if len(choices) == 1 or heading is None else \
                min(choices, key=lambda x: (x - heading) % 4 != 1)  # prefer the left turn
            choices.remove(d)
            if not choices:
                del edges[corner]
            loop.append(corner)
            corner, heading = (corner[0] + _STEPS[d][0], corner[1] + _STEPS[d][1]), d
            if corner == start and start not in edges:
                break
        loops.append(loop)
    return loops


def _corners_only(loop: list[tuple[int, int]]) -> np.ndarray:
    """The loop's vertices where the direction changes, as (x, y) = (col, row)."""
    pts = np.asarray(loop, dtype=np.int64)
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    turn = np.any((pts - prev) != (nxt - pts), axis=1)
    return pts[turn][:, ::-1]


def polygon_area(xy: np.ndarray) -> float:
    """Area enclosed by a closed polygon (shoelace formula), always >= 0."""
    x, y = np.asarray(xy, float).T
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def outline(mask: np.ndarray) -> np.ndarray:
    """The outer boundary of the pixels of ``mask`` (one particle) as polygon vertices.

    Parameters
    ----------
    mask : (M, N) bool array
        The particle's pixels (in the coordinates of the image, not cropped).

    Returns
    -------
    (K, 2) int64 ndarray
        ``(x, y)`` pixel-corner coordinates, one vertex per corner of the outline, not closed
        (the last vertex connects to the first). Holes are not traced; of pieces that do not touch
        each other, the largest is. Empty for an empty mask.
    """
    loops = _loops(_boundary_edges(mask))
    if not loops:
        return np.zeros((0, 2), np.int64)
    return max((_corners_only(loop) for loop in loops), key=polygon_area)


def particle_outlines(labels: np.ndarray, ids=None) -> dict[int, np.ndarray]:
    """{particle id: :func:`outline`} for ``ids`` (default: every label > 0 in ``labels``)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    boxes = ndimage.find_objects(labels)
    ids = [i + 1 for i, box in enumerate(boxes) if box is not None] if ids is None else [int(i) for i in ids]
    result = {}
    for pid in ids:
        box = boxes[pid - 1] if 0 < pid <= len(boxes) else None
        if box is None:
            result[pid] = np.zeros((0, 2), np.int64)
            continue
        poly = outline(labels[box] == pid)
        result[pid] = poly + [box[1].start, box[0].start]
    return result


def _argb(rgb) -> bytes:
    return bytes((255, *rgb))


def make_rois(labels: np.ndarray, table) -> list:
    """One ``roifile.ImagejRoi`` polygon per row of ``table`` (a :func:`nanoseg.measure.particles.particle_table`
    of ``labels``), named by its ``id``, stroked by ``measurable``."""
    from roifile import ROI_TYPE, ImagejRoi

    outlines = particle_outlines(labels, table["id"].tolist() if len(table) else [])
    rois = []
    for pid, measurable in zip(table["id"].tolist() if len(table) else [],
                               table["measurable"].tolist() if len(table) else []):
        roi = ImagejRoi.frompoints(outlines[int(pid)], name=str(int(pid)))
        roi.roitype = ROI_TYPE.POLYGON
        roi.stroke_color = _argb(MEASURABLE_RGB if measurable else EXCLUDED_RGB)
        rois.append(roi)
    return rois


def write_rois(path, labels: np.ndarray, table) -> Path:
    """Write the particles of ``labels`` listed in ``table`` as a Fiji ROI set (zip) to ``path``.

    Parameters
    ----------
    path : path-like
        The ``.zip`` to write (replaced if it exists); with no particles, an empty zip.
    labels : (M, N) int array
        Instance labels of the whole image, 0 = background.
    table : pandas.DataFrame
        The particle table of ``labels`` (columns ``id`` and ``measurable``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import zipfile

    from roifile import roiwrite

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        rois = make_rois(labels, table)
        if rois:
            roiwrite(tmp, rois, mode="w")
        else:
            zipfile.ZipFile(tmp, "w").close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
