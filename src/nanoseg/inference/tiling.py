"""Predict large images in overlapping tiles and blend the tiles smoothly.

The image is mirror-padded (``np.pad(mode="reflect")``) by ``overlap // 2`` on
every side, and further at the bottom/right when it is smaller than one tile,
so every pixel, border pixels included, is predicted with image context. Tiles
of ``tile x tile`` (or ``rows x cols`` for a tuple) cover the padded image with at least ``overlap`` pixels
shared between neighbours; their predictions are averaged with a smooth
window (raised cosine ramps over ``overlap`` pixels at each edge) that hides
seams. Pure numpy: the network is passed in as a ``predict_batch`` callable.

Memory: the weighted sums are float32 (float64 accumulators doubled the memory of large images:
about 10 GB for a 20000 x 20000 image); a prediction with C channels needs about 2 C + 2 float32
copies of the image at its peak (padded image, sums, weights, result).
"""

from __future__ import annotations

import math

import numpy as np

from nanoseg.config import PredictSettings


def _origins(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    n = math.ceil((size - tile) / stride) + 1
    return sorted({round(i * (size - tile) / (n - 1)) for i in range(n)})


def _pair(tile) -> tuple[int, int]:
    rows, cols = (tile, tile) if np.isscalar(tile) else tile
    return int(rows), int(cols)


def tile_grid(shape, tile, overlap) -> list[tuple[int, int]]:
    """Origins of the tiles that cover an (already padded) image.

    Tiles are spread evenly; neighbours share at least ``overlap`` pixels, the
    first tile starts at 0 and the last one ends at the image edge.

    Parameters
    ----------
    shape : tuple
        (rows, cols, ...) of the padded image; each at least ``tile``, or the
        single tile origin 0 is returned for that axis.
    tile : int or (int, int)
        Tile side in pixels, or (rows, cols).
    overlap : int
        Minimum overlap between neighbouring tiles, ``0 <= overlap < tile``.

    Returns
    -------
    list of (row, col)
        Tile origins, row-major.
    """
    t_rows, t_cols = _pair(tile)
    if not 0 <= overlap < min(t_rows, t_cols):
        raise ValueError(f"need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    rows = _origins(int(shape[0]), t_rows, overlap)
    cols = _origins(int(shape[1]), t_cols, overlap)
    return [(r, c) for r in rows for c in cols]


def blend_weights(tile, overlap) -> np.ndarray:
    """Separable raised-cosine window for blending overlapping tiles.

    Parameters
    ----------
    tile : int or (int, int)
        Tile side, or (rows, cols).
    overlap : int
        Width of the ramp at each edge (clipped to half the side).

    Returns
    -------
    ndarray
        float32 (tile, tile), 1 in the centre, rising smoothly from near 0 at
        the edges; strictly positive everywhere.
    """
    return np.outer(*(_window(n, overlap) for n in _pair(tile))).astype(np.float32)


def _window(size, overlap):
    ramp_width = min(int(overlap), size // 2)
    window = np.ones(size, dtype=np.float64)
    if ramp_width > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_width) + 0.5) / ramp_width)
        window[:ramp_width] = ramp
        window[size - ramp_width:] = ramp[::-1]
    return window


def pad_widths(shape, tile, overlap) -> list[tuple[int, int]]:
    """Mirror padding (before, after) per axis used by :func:`predict_tiled`."""
    margin = overlap // 2
    return [(margin, margin + max(0, t - (int(n) + 2 * margin))) for n, t in zip(shape[:2], _pair(tile))]


def predict_tiled(predict_batch, image, tile=PredictSettings().tile, overlap=PredictSettings().overlap,
                  batch=PredictSettings().batch) -> np.ndarray:
    """Predict an image of any size tile by tile and blend the tiles.

    Parameters
    ----------
    predict_batch : callable
        Maps a float32 array (N, tile, tile, 1) to an array (N, tile, tile, C).
    image : ndarray
        (H, W) or (H, W, 1) image, any size (also smaller than one tile).
    tile : int or (int, int)
        Tile side given to ``predict_batch``, or (rows, cols).
    overlap : int
        Overlap between tiles (and twice the mirror margin at the borders).
    batch : int
        Tiles per ``predict_batch`` call.

    Returns
    -------
    ndarray
        float32 blended prediction: (H, W) for a 2-D image and C == 1, else
        (H, W, C).
    """
    image = np.asarray(image, dtype=np.float32)
    squeeze = image.ndim == 2
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"expected a (H, W) or (H, W, 1) image, got shape {image.shape}")
    height, width = image.shape
    padded = np.pad(image, pad_widths(image.shape, tile, overlap), mode="reflect")
    weights = blend_weights(tile, overlap)
    t_rows, t_cols = _pair(tile)
    origins = tile_grid(padded.shape, tile, overlap)
    total = weight_sum = None
    for start in range(0, len(origins), max(int(batch), 1)):
        group = origins[start:start + batch]
        tiles = np.stack([padded[r:r + t_rows, c:c + t_cols] for r, c in group])[..., None]
        pred = np.asarray(predict_batch(tiles), dtype=np.float32)
        if pred.ndim == 3:
            pred = pred[..., None]
        if pred.shape[:3] != (len(group), t_rows, t_cols):
            raise ValueError(f"predict_batch returned shape {pred.shape} for input {tiles.shape}")
        if total is None:
            total = np.zeros((*padded.shape, pred.shape[3]), dtype=np.float32)
            weight_sum = np.zeros(padded.shape, dtype=np.float32)
        for (r, c), p in zip(group, pred):
            total[r:r + t_rows, c:c + t_cols] += weights[..., None] * p
            weight_sum[r:r + t_rows, c:c + t_cols] += weights
    del padded
    top, left = overlap // 2, overlap // 2
    crop = (slice(top, top + height), slice(left, left + width))
    out = np.divide(total[crop], weight_sum[crop][..., None], dtype=np.float32)
    return out[..., 0] if squeeze and out.shape[2] == 1 else out
