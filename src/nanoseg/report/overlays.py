"""Pictures of results: a micrograph with its particle contours and a scale bar."""

from __future__ import annotations

import math

import numpy as np


def _nice_length(target: float) -> float:
    """The largest 1-2-5 x 10^k value not above ``target``."""
    exp = 10 ** math.floor(math.log10(target))
    return max(m * exp for m in (1, 2, 5) if m * exp <= target)


def overlay_image(image, labels, pixel_size_nm=None, databar_row=None) -> np.ndarray:
    """RGB uint8 picture: the image with particle contours (yellow) and a scale bar.

    The bar (about a fifth of the width, a 1-2-5 length in nm, or in px without
    a pixel size) sits at the bottom left of the sample area, above the data bar.
    """
    from PIL import Image, ImageDraw, ImageFont
    from skimage.segmentation import find_boundaries

    gray = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[find_boundaries(labels, mode="inner")] = (255, 220, 0)
    height, width = gray.shape
    bottom = min(int(databar_row or height), height)
    scale = float(pixel_size_nm) if pixel_size_nm else 1.0
    unit = "nm" if pixel_size_nm else "px"
    length = _nice_length(max(width / 5 * scale, 1e-9))
    bar_px = max(1, int(round(length / scale)))
    text = f"{length:g} {unit}"
    pic = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pic)
    size = max(10, min(height, width) // 40)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    pad = max(2, size // 3)
    x0, y1 = pad * 2, bottom - pad * 2
    thick = max(2, size // 4)
    box = draw.textbbox((0, 0), text, font=font)
    text_h = box[3] - box[1]
    y0 = y1 - thick - pad - text_h
    draw.rectangle((x0 - pad, y0 - pad, x0 + max(bar_px, box[2]) + pad, y1 + pad), fill=(0, 0, 0))
    draw.text((x0, y0 - box[1]), text, fill=(255, 255, 255), font=font)
    draw.rectangle((x0, y1 - thick, x0 + bar_px - 1, y1), fill=(255, 255, 255))
    return np.asarray(pic)
