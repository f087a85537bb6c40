"""Binary masks: reading manual masks, and thresholding probability maps into masks.

Foreground is ``prob >= threshold`` (:func:`binarize`) everywhere: in decoding
(:mod:`nanoseg.postprocess.decode`), in the metrics (:mod:`nanoseg.evaluation.metrics`) and in predict.
"""

from __future__ import annotations

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io.micrograph import read_image_array


def read_mask(path, shape=None) -> np.ndarray:
    """Read a binary mask (values 0/255 or 0/1) as a bool array.

    Parameters
    ----------
    path : str or Path
        Mask image.
    shape : tuple of int, optional
        Expected (rows, columns), e.g. the image's shape.

    Raises
    ------
    NanosegError
        When the values are not a subset of {0, 255} or {0, 1}, or the shape differs.
    """
    array = read_image_array(path)
    if array.dtype != bool:
        values = np.unique(array)
        if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
            shown = ", ".join(f"{v:g}" for v in values[:10]) + (", ..." if values.size > 10 else "")
            raise NanosegError(
                f"{path}: not a binary mask: found values {{{shown}}} ({values.size} distinct), expected "
                "only 0 and 255 (or 0 and 1). Save the mask with 0 = background and 255 = particle."
            )
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise NanosegError(
            f"{path}: the mask is {array.shape[0]} x {array.shape[1]} (rows x columns) but "
            f"{tuple(shape)[0]} x {tuple(shape)[1]} was expected; the mask must cover its image pixel for pixel."
        )
    return array > 0


def binarize(prob, threshold=0.5):
    """Return the foreground mask ``prob >= threshold`` (bool array)."""
    return np.asarray(prob) >= threshold
