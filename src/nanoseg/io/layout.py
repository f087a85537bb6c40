"""What an image file holds, read from its header before any pixel is decoded: size limits and stacks.

:func:`image_layout` reports the real layout of a TIFF, PNG, JPEG (or any format Pillow opens):
rows and columns of one image, samples per pixel and the number of image planes, whatever the
storage order (planar RGB ``3 x H x W`` TIFF pages, ImageJ hyperstacks, multi-page stacks, volumes,
animated PNG). :func:`check_layout` refuses, with a message naming the file, the limit and what to
do:

* images with more than ``max_pixels`` pixels (rows x columns of one plane): decoding them would need
  more memory than is sensible (default :data:`DEFAULT_MAX_PIXELS`, raised with ``--max-pixels`` or
  the environment variable :data:`MAX_PIXELS_ENV`; the server has its own, smaller limit);
* stacks (more than one full-size plane): nanoseg analyses one 2-D micrograph per file and refuses a
  stack rather than silently analysing its first plane (reduced-resolution pages, thumbnails, are
  not planes and are ignored).

Decompression bombs (a small file whose header declares an enormous image) are caught here, before
Pillow or tifffile allocate anything: a PNG's size is read from its ``IHDR`` chunk, and Pillow's own
:class:`PIL.Image.DecompressionBombError` is turned into a message that says what it is.

This module imports nothing from nanoseg but :mod:`nanoseg.errors`.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from nanoseg.errors import NanosegError

__all__ = ["ImageLayout", "image_layout", "check_layout", "max_pixels_limit", "parse_max_pixels",
           "DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV"]

#: the largest image (pixels of one plane) the command line decodes unless told otherwise: 8192 x 8192
DEFAULT_MAX_PIXELS = 8192 * 8192
#: environment variable that sets the command line's limit (``--max-pixels`` wins over it)
MAX_PIXELS_ENV = "NANOSEG_MAX_PIXELS"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# a file this many times smaller than its pixel count (bytes per pixel) is called a decompression bomb
_BOMB_BYTES_PER_PIXEL = 0.01


@dataclass(frozen=True)
class ImageLayout:
    """The layout of an image file, from its header.

    Attributes
    ----------
    format : str
        "TIFF", "PNG", "JPEG", ... (Pillow's format name for the others).
    rows, cols : int
        Size of one image plane.
    samples : int
        Values per pixel (1 gray or palette, 3 RGB, 4 RGBA ...), however they are stored.
    planes : int
        Full-size image planes in the file (pages, z slices, time points, frames): 1 for a micrograph.
    file_bytes : int or None
        Size of the encoded file, when known.
    """

    format: str
    rows: int
    cols: int
    samples: int = 1
    planes: int = 1
    file_bytes: int | None = None

    @property
    def pixels(self) -> int:
        """Pixels of one plane (rows x columns)."""
        return int(self.rows) * int(self.cols)


def parse_max_pixels(value, what: str = "--max-pixels") -> int:
    """A pixel limit from the command line or the environment: ``67108864``, ``1e8``, ``64M``, ``64Mpx``.

    Raises
    ------
    NanosegError
        For anything but a positive number (``M`` = million, ``G`` = billion pixels).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:[eE]\+?\d+)?)\s*([kKmMgG]?)\s*(?:px|pixels?)?\s*", str(value))
        if match is None:
            raise NanosegError(f"{what} {value!r}: give a number of pixels such as 67108864, 1e8 or 64M.")
        number = float(match[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match[2].lower()]
    if not math.isfinite(number) or number < 1:
        raise NanosegError(f"{what} {value!r}: the limit must be at least 1 pixel, e.g. 64M.")
    return int(number)


def max_pixels_limit(value=None) -> int:
    """The command line's pixel limit: ``value`` if given, else ``$NANOSEG_MAX_PIXELS``, else the default."""
    if value is not None:
        return parse_max_pixels(value)
    env = os.environ.get(MAX_PIXELS_ENV)
    if env not in (None, ""):
        return parse_max_pixels(env, f"the environment variable {MAX_PIXELS_ENV} =")
    return DEFAULT_MAX_PIXELS


def _size_of(source) -> int | None:
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).stat().st_size
        except OSError:
            return None
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    try:
        return source.getbuffer().nbytes
    except AttributeError:
        return None


def _head(source, n: int = 32) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:n])
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return fh.read(n)
    pos = source.tell()
    try:
        return source.read(n)
    finally:
        source.seek(pos)


def _tiff_planes(tif, first) -> int:
    """Full-size planes: by the first series' shape (hyperstacks, shaped files) or by counting the pages
    of the first page's shape that are not reduced-resolution copies (generic multi-page files)."""
    per_page = math.prod(first.shape) or 1
    by_series = math.prod(tif.series[0].shape) // per_page if tif.series else 1
    same = sum(1 for page in tif.pages
               if tuple(page.shape) == tuple(first.shape) and not int(getattr(page, "subfiletype", 0) or 0) & 1)
    return max(1, int(by_series), same) * max(1, int(first.imagedepth or 1))


def _tiff_layout(source, size) -> ImageLayout | None:
    import tifffile

    try:
        with tifffile.TiffFile(source if not isinstance(source, (bytes, bytearray)) else io.BytesIO(source)) as tif:
            first = tif.pages.first
            return ImageLayout("TIFF", int(first.imagelength), int(first.imagewidth), int(first.samplesperpixel),
                               _tiff_planes(tif, first), size)
    except Exception:  # noqa: BLE001 - damaged TIFFs are reported when they are read
        return None


def _png_ihdr(head: bytes) -> tuple[int, int, int] | None:
    """(rows, cols, samples) from a PNG's IHDR chunk, or None."""
    if head[:8] != PNG_MAGIC or head[12:16] != b"IHDR" or len(head) < 26:
        return None
    cols, rows = struct.unpack(">II", head[16:24])
    return rows, cols, _PNG_SAMPLES.get(head[25], 1)


def _pillow_layout(source, head: bytes, size, name: str) -> ImageLayout | None:
    from PIL import Image

    src = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    ihdr = _png_ihdr(head)
    try:
        with Image.open(src) as im:  # (no warning filters: thread-safe; the pixel limit decides, not Pillow)
            return ImageLayout(im.format or "image", int(im.size[1]), int(im.size[0]), len(im.getbands()),
                               int(getattr(im, "n_frames", 1) or 1), size)
    except Image.DecompressionBombError as exc:
        if ihdr is not None:
            return ImageLayout("PNG", *ihdr, 1, size)
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        mpx = f" {int(declared[1]):,} pixels" if declared else " an enormous image"
        raise NanosegError(
            f"{name}: a decompression bomb: its header declares{mpx}, more than Pillow decodes "
            f"({2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx), from a file of {(size or 0) / 1e3:.0f} kB; "
            "if the image is genuine, split it into smaller images."
        ) from None
    except Exception:  # noqa: BLE001 - not an image: reported when it is read
        return None


def image_layout(source, name: str | None = None) -> ImageLayout | None:
    """The layout of an image file, from its header only.

    Parameters
    ----------
    source : str, PathLike, bytes or binary file object
        The encoded file.
    name : str, optional
        How to name the file in messages (default: the path, or "the image").

    Returns
    -------
    ImageLayout or None
        None when the header is not one of a readable image (the reader reports why).

    Raises
    ------
    NanosegError
        For a decompression bomb whose size only Pillow could read.
    """
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")
    head, size = _head(source), _size_of(source)
    if head[:4] in TIFF_MAGIC:
        return _tiff_layout(source, size)
    return _pillow_layout(source, head, size, name)


def _bytes(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1e3:.0f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def check_layout(layout: ImageLayout | None, name: str, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` pixels, or a stack of several planes (see the module docstring).

    Raises
    ------
    NanosegError
        Naming the file, its size, the limit and how to raise it; or the number of planes and how to
        split them.
    """
    if layout is None:
        return
    size = f"{layout.cols} x {layout.rows} px"
    if layout.pixels > max_pixels:
        bomb = ""
        if layout.file_bytes is not None and layout.file_bytes < _BOMB_BYTES_PER_PIXEL * layout.pixels:
            bomb = f" (a {_bytes(layout.file_bytes)} file that would expand to it: a decompression bomb?)"
        raise NanosegError(
            f"{name}: the {layout.format} image is {size} ({layout.pixels / 1e6:.1f} Mpx), more than the "
            f"{max_pixels / 1e6:.1f} Mpx limit{bomb}; split it into smaller images, or raise the limit with "
            f"--max-pixels N (or the environment variable {MAX_PIXELS_ENV}) if this machine has the memory."
        )
    if layout.planes > 1:
        raise NanosegError(
            f"{name}: a stack of {layout.planes} images of {size}, not one 2-D micrograph; nanoseg analyses one "
            "image per file: save each plane as its own file (ImageJ: Image > Stacks > Stack to Images)."
        )
