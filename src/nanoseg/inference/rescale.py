"""Inference at the model's pixel size: another magnification is resampled, not guessed.

A network trained at ~7.3 nm/px sees particles of a certain size in pixels; an image taken at another
magnification shows them larger or smaller. Like Cellpose (``diameter``) and StarDist (``scale``),
nanoseg resamples the image to the model's training pixel size before inference and maps the
instance labels back to the input grid; sizes are always measured with the input's own pixel size.

``factor`` is the zoom applied to the input image: ``image_px_nm / model_px_nm`` (an image at twice
the magnification, 3.67 nm/px, is shrunk by 0.5 for a model trained at 7.34 nm/px).
"""

from __future__ import annotations

import numpy as np

from nanoseg.errors import NanosegError

#: ``auto`` leaves images alone whose pixel size is within this fraction of the model's.
TOLERANCE = 0.10
#: zooms outside this range are refused (an image would be smaller than a tile, or enormous)
LIMITS = (0.1, 10.0)


def parse_scale(value) -> str | float:
    """``auto`` | ``off`` | a positive zoom factor (e.g. ``0.5``), from the command line or a request."""
    if value is None:
        return "auto"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        factor = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("auto", "off"):
            return text
        try:
            factor = float(text.rstrip("x"))
        except ValueError:
            raise NanosegError(f"--scale {value!r}: use auto, off or a zoom factor such as 0.5 or 2.") from None
    if not LIMITS[0] <= factor <= LIMITS[1]:
        raise NanosegError(f"--scale {value!r}: a zoom factor must lie in {LIMITS[0]}..{LIMITS[1]}.")
    return factor


def scale_factor(image_px_nm, model_px_nm, scale="auto", tolerance: float = TOLERANCE) -> tuple[float, str]:
    """The zoom to apply to an image before inference, and a sentence saying why.

    Parameters
    ----------
    image_px_nm : float or None
        The image's pixel size (nm).
    model_px_nm : float or None
        The model's training pixel size (``nanoseg.json`` ``training_scale.pixel_size_nm``).
    scale : "auto", "off" or float
        ``auto``: ``image_px_nm / model_px_nm`` when both are known and differ by more than
        ``tolerance``; ``off``: 1; a number: that zoom.

    Returns
    -------
    (float, str)
    """
    scale = parse_scale(scale)
    if scale == "off":
        return 1.0, "scale off: native resolution"
    if isinstance(scale, float):
        return scale, f"zoom {scale:g} (--scale)"
    if not image_px_nm:
        return 1.0, ("no pixel size: inference at native resolution (the model was trained at "
                     f"{model_px_nm:.3g} nm/px; give --pixel-size, or --scale FACTOR)" if model_px_nm else
                     "no pixel size: inference at native resolution")
    if not model_px_nm:
        return 1.0, "the model records no training pixel size: inference at native resolution"
    factor = float(image_px_nm) / float(model_px_nm)
    if abs(factor - 1.0) <= tolerance:
        return 1.0, f"pixel size {image_px_nm:.3g} nm within {tolerance:.0%} of the model's {model_px_nm:.3g} nm"
    if not LIMITS[0] <= factor <= LIMITS[1]:
        raise NanosegError(f"pixel size {image_px_nm:g} nm is {factor:.3g} x the model's {model_px_nm:g} nm: outside "
                           f"{LIMITS[0]}..{LIMITS[1]}; check the pixel size, or pass --scale off.")
    return factor, f"resampled x{factor:.3g} to the model's {model_px_nm:.3g} nm/px (image {image_px_nm:.3g} nm/px)"


def resample_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Zoom a grey image (float, H x W) by ``factor``: anti-aliased when shrinking, bilinear."""
    from skimage.transform import rescale

    if factor == 1.0:
        return image
    out = rescale(np.asarray(image, np.float32), factor, order=1, mode="reflect", anti_aliasing=factor < 1.0,
                  preserve_range=True)
    return out.astype(np.float32)


def resize_map(values: np.ndarray, shape) -> np.ndarray:
    """A probability (or uncertainty) map, H x W or H x W x C, back to ``shape`` (bilinear)."""
    from skimage.transform import resize

    values = np.asarray(values)
    if values.shape[:2] == tuple(shape):
        return values
    target = tuple(shape) + values.shape[2:]
    return resize(values, target, order=1, mode="edge", anti_aliasing=False, preserve_range=True).astype(values.dtype)


def resize_labels(labels: np.ndarray, shape) -> np.ndarray:
    """Instance labels back to ``shape`` (nearest neighbour; ids kept, instances lost by shrinking dropped)."""
    from skimage.transform import resize

    labels = np.asarray(labels)
    if labels.shape == tuple(shape):
        return labels
    out = resize(labels, tuple(shape), order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return out.astype(labels.dtype)
