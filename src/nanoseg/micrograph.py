"""Read SEM micrographs: gray pixels, pixel size and the microscope's data bar.

Everything downstream stands on :func:`read_micrograph`. It reads the first page
of a TIFF (with tifffile) or a PNG (with Pillow) and returns a :class:`Micrograph`:

* ``pixels``: the FULL frame as 2-D float32 gray values in [0, 1]. Palette
  images get their colormap applied (the Zeiss palette is not the identity:
  some indices are overlay colors), RGB(A) is reduced to luminance
  (:func:`skimage.color.rgb2gray`, alpha dropped). Integers are divided by
  their dtype's maximum (signed integers holding negative values are mapped
  from the dtype's full range), floats already in [0, 1] are kept as they are
  and other floats are min-max scaled to [0, 1] (NaN/inf are refused).
* ``pixel_size_nm``: an override, else the first calibration found in the
  metadata (Zeiss ``CZ_SEM``, FEI/Thermo ``[Scan] PixelWidth``, ImageJ, a physical
  TIFF resolution), else ``None`` with a :class:`PixelSizeWarning`.
* ``databar_row``: the first row of the data bar (text band at the bottom of
  the frame), detected by :func:`detect_databar` unless given.

Bad files (missing, empty, truncated, not an image, 3-D stacks) raise
:class:`~nanoseg.errors.NanosegError` naming the file, the problem and the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import numbers
import operator
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from nanoseg.errors import NanosegError

__all__ = [
    "Micrograph", "PixelSizeWarning", "read_micrograph", "parse_pixel_size",
    "pixel_size_from_tiff", "detect_databar", "read_image_array", "read_mask",
    "info_command", "quiet_tifffile",
]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UNIT_NM = {
    "pm": 1e-3, "a": 0.1, "å": 0.1, "angstrom": 0.1, "nm": 1.0, "nanometer": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "micrometer": 1e3,
    "mm": 1e6, "cm": 1e7, "m": 1e9, "meter": 1e9, "metre": 1e9,
}
# Physical TIFF resolution units (tifffile RESUNIT) in nm.
_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}
# A TIFF resolution giving pixels of 10 µm or more (<= 2540 dpi) is a print
# resolution (72, 300 dpi ...), not a microscope calibration.
_MAX_RESOLUTION_PIXEL_NM = 1e4
_PIXEL_SIZE_HELP = "e.g. 7.34nm, 0.00734um, 7.34e-9m or 73.4A (a bare number is nm)"


class PixelSizeWarning(UserWarning):
    """No pixel size was found: sizes will be in pixels."""


@dataclass(eq=False)
class Micrograph:
    """An SEM image with its calibration.

    Attributes
    ----------
    path : Path
        The file read.
    pixels : ndarray
        2-D float32 gray values in [0, 1], the full frame (data bar included).
    pixel_size_nm : float or None
        Size of one pixel in nm; None when unknown (sizes stay in pixels).
    pixel_size_source : str
        Where the pixel size came from ("CZ_SEM tag 34118", "override", "none" ...).
    databar_row : int
        First row of the data bar; equals the height when there is none.
    source_dtype : str
        How the file stores pixels, e.g. "uint8 palette", "uint16", "RGB uint8".
    """

    path: Path
    pixels: np.ndarray = field(repr=False)
    pixel_size_nm: float | None
    pixel_size_source: str
    databar_row: int
    source_dtype: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def sample(self) -> np.ndarray:
        """The rows above the data bar (a view of ``pixels``)."""
        return self.pixels[: self.databar_row]

    @property
    def field_of_view_um(self) -> tuple[float, float] | None:
        """(width, height) in µm of the sample above the data bar, or None."""
        if self.pixel_size_nm is None:
            return None
        return (self.width * self.pixel_size_nm / 1e3, self.databar_row * self.pixel_size_nm / 1e3)

    def crop_rows(self, multiple: int = 32) -> int:
        """Largest multiple of ``multiple`` rows that lies above the data bar."""
        if int(multiple) < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        rows = self.databar_row // int(multiple) * int(multiple)
        if rows == 0:
            raise NanosegError(
                f"{self.path}: only {self.databar_row} sample rows above the data bar, fewer than "
                f"the {multiple} needed; check the data-bar row (pass --databar-row N)."
            )
        return rows


# --------------------------------------------------------------------------- pixel size


def _to_nm(value, unit: str) -> float | None:
    """``value`` in ``unit`` converted to nm; None for unknown units or bad values."""
    unit = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    unit = re.sub(r"\s*(/|per\s*)(px|pix|pixel)s?$", "", unit)
    if unit.endswith("s") and unit[:-1] in _UNIT_NM:  # plurals: microns, meters
        unit = unit[:-1]
    scale = _UNIT_NM.get(unit)
    try:
        nm = float(value) * scale if scale is not None else None
    except (TypeError, ValueError):
        return None
    return nm if nm is not None and math.isfinite(nm) and nm > 0 else None


def parse_pixel_size(text: str | float) -> float:
    """Parse a pixel size into nm.

    Parameters
    ----------
    text : str or float
        A number (nm) or a number with a unit: ``"7.34nm"``, ``"0.00734 um"``,
        ``"7.34e-9m"``, ``"73.4A"`` (also µm, micron, mm, pm, Å, ``nm/px``).

    Returns
    -------
    float
        The pixel size in nm (positive, finite).
    """
    if isinstance(text, numbers.Real) and not isinstance(text, bool):
        value, unit = float(text), "nm"
    else:
        match = re.fullmatch(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(\D.*)?", str(text))
        if match is None:
            raise NanosegError(f"cannot read the pixel size {text!r}: expected a number with a unit, {_PIXEL_SIZE_HELP}.")
        value, unit = float(match[1]), match[2] or "nm"
    nm = _to_nm(value, unit)
    if nm is None:
        raise NanosegError(
            f"cannot use the pixel size {text!r}: it must be a positive number with a known unit, {_PIXEL_SIZE_HELP}."
        )
    return nm


def _cz_sem(tif: tifffile.TiffFile) -> float | None:
    """Zeiss: the named 'ap_image_pixel_size' (rounded, with unit), refined by the
    exact value in m that Zeiss writes 4th in the unnamed header values."""
    meta = tif.sem_metadata or {}
    named = None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = meta.get(key)
        if isinstance(entry, tuple) and len(entry) >= 3 and (named := _to_nm(entry[1], entry[2])):
            break
    header = meta.get("", ())
    exact = _to_nm(header[3], "m") if len(header) > 3 and isinstance(header[3], float) else None
    if named and exact and abs(exact - named) <= 1e-3 * named:
        return exact
    return named or (exact if exact and 1e-3 < exact < 1e7 else None)


def _fei(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    meta = tif.fei_metadata or {}
    for section in ("Scan", "EScan", "IScan"):
        nm = _to_nm((meta.get(section) or {}).get("PixelWidth"), "m")
        if nm:
            return nm, f"FEI [{section}] PixelWidth"
    return None, ""


def _resolution(page) -> float | None:
    """Pixels per unit along x from the XResolution tag (None if absent/zero)."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
    return num / den if num and den else None


def _imagej(tif: tifffile.TiffFile) -> float | None:
    meta = tif.imagej_metadata or {}
    per_unit = _resolution(tif.pages.first)
    if not per_unit or "unit" not in meta:
        return None
    return _to_nm(1.0 / per_unit, meta["unit"])


def _tiff_resolution(tif: tifffile.TiffFile) -> float | None:
    page = tif.pages.first
    unit_tag = page.tags.get("ResolutionUnit")
    unit_nm = _RESUNIT_NM.get(int(unit_tag.value) if unit_tag else 2)
    per_unit = _resolution(page)
    if unit_nm is None or not per_unit:
        return None
    nm = unit_nm / per_unit
    return nm if nm < _MAX_RESOLUTION_PIXEL_NM else None


def pixel_size_from_tiff(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    """Find the pixel size in a TIFF's metadata.

    Looks, in order, at the Zeiss ``CZ_SEM`` tag, FEI/Thermo metadata, ImageJ
    calibration and a physical TIFF resolution (inch/cm/mm/µm units; print
    resolutions such as 72 or 300 dpi, and ResolutionUnit "none", do not count).

    Returns
    -------
    (float or None, str)
        Pixel size in nm and its source, or ``(None, "none")``.
    """
    readers = (
        lambda: (_cz_sem(tif), "CZ_SEM tag 34118"),
        lambda: _fei(tif),
        lambda: (_imagej(tif), "ImageJ"),
        lambda: (_tiff_resolution(tif), "TIFF resolution"),
    )
    for reader in readers:
        try:
            nm, source = reader()
        except Exception:  # damaged metadata: try the next source  # noqa: BLE001
            continue
        if nm:
            return float(nm), source
    return None, "none"


# --------------------------------------------------------------------------- reading


_TIFFFILE_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("nanoseg_tifffile_log", default=None)


class _TifffileCollector(logging.Filter):
    """Filter on the ``tifffile`` logger, installed once: while :func:`quiet_tifffile` is active in
    the current thread (context), its messages go to that context's list instead of stderr.

    Installed once rather than per read: adding handlers and flipping ``propagate`` for each file
    is process-wide state that concurrent reads (the server's threads) would race on.
    """

    nanoseg = True

    def filter(self, record) -> bool:
        sink = _TIFFFILE_LOG.get()
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


def _install_tifffile_collector() -> None:
    logger = logging.getLogger("tifffile")
    if not any(getattr(f, "nanoseg", False) for f in logger.filters):
        logger.addFilter(_TifffileCollector())


_install_tifffile_collector()


@contextlib.contextmanager
def quiet_tifffile():
    """Collect tifffile's log messages of this thread (context) instead of letting them reach stderr.

    Yields
    ------
    list of str
        The messages logged inside the block.
    """
    records: list[str] = []
    token = _TIFFFILE_LOG.set(records)
    try:
        yield records
    finally:
        _TIFFFILE_LOG.reset(token)


def _check_file(path: Path) -> bytes:
    """Raise NanosegError for a missing, non-regular or empty file; return its first bytes."""
    if not path.exists():
        raise NanosegError(f"{path}: no such file; check the path and the working folder.")
    if not path.is_file():
        raise NanosegError(f"{path}: is a folder, not an image file; give the image files themselves.")
    if path.stat().st_size == 0:
        raise NanosegError(f"{path}: the file is empty (0 bytes); copy it again from its source.")
    try:
        with path.open("rb") as fh:
            return fh.read(8)
    except OSError as exc:
        raise NanosegError(f"{path}: cannot open the file ({exc.strerror}); check its permissions.") from None


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[float | None, str]]:
    with quiet_tifffile() as log:
        try:
            with tifffile.TiffFile(path) as tif:
                if not len(tif.pages):
                    raise ValueError("the file holds no image")
                page = tif.pages.first
                array, axes, photometric = page.asarray(), page.axes, page.photometric
                colormap = page.colormap if photometric == tifffile.PHOTOMETRIC.PALETTE else None
                pixel_size = pixel_size_from_tiff(tif)
        except Exception as exc:  # tifffile raises many kinds on bad files  # noqa: BLE001
            detail = str(exc) or (log[0] if log else type(exc).__name__)
            raise NanosegError(
                f"{path}: cannot read this TIFF ({detail}); the file is damaged, truncated or uses "
                "an unsupported encoding: copy it again or save it as an uncompressed TIFF."
            ) from None
    if array.ndim == 3 and "S" in axes and axes.index("S") != 2:
        array = np.moveaxis(array, axes.index("S"), -1)  # planar RGB -> channels last
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and array.dtype.kind in "ui":
        array = np.iinfo(array.dtype).max - array
    if colormap is not None:
        colormap = colormap.T  # (N, 3)
    return array, colormap, pixel_size


def _read_pillow(path: Path, suffix_hint: str) -> tuple[np.ndarray, np.ndarray | None, tuple[float | None, str]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            colormap = None
            if im.mode == "P":
                colormap = np.asarray(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
            elif im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "F", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            array, dpi, kind = np.asarray(im), im.info.get("dpi"), im.format or "image"
    except UnidentifiedImageError:
        raise NanosegError(
            f"{path}: not a TIFF or PNG image{suffix_hint}; check the file, or export the micrograph as TIFF."
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise NanosegError(
            f"{path}: cannot read this image ({exc}); the file is damaged or truncated: copy it again."
        ) from None
    nm = 2.54e7 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else None
    pixel_size = (nm, f"{kind} resolution") if nm and nm < _MAX_RESOLUTION_PIXEL_NM else (None, "none")
    if array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha
        array = array[..., 0]
    return array, colormap, pixel_size


def _read_stored(path) -> tuple[Path, np.ndarray, np.ndarray | None, tuple[float | None, str]]:
    """The first image of a file as stored (channels last) and its palette, if any."""
    path = Path(path)
    head = _check_file(path)
    if head[:4] in _TIFF_MAGIC:
        array, colormap, pixel_size = _read_tiff(path)
    else:
        hint = " (it is named .tif but holds no TIFF data)" if path.suffix.lower() in (".tif", ".tiff") else ""
        array, colormap, pixel_size = _read_pillow(path, hint)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise NanosegError(
            f"{path}: the image has shape {array.shape}, not a 2-D gray or RGB(A) image (a stack or "
            "multi-channel image?); save one 2-D micrograph per file."
        )
    if min(array.shape[:2]) < 1:
        raise NanosegError(f"{path}: the image has no pixels (shape {array.shape}); check the file.")
    return path, array, colormap, pixel_size


def _describe(array: np.ndarray, colormap) -> str:
    kind = str(array.dtype)
    if colormap is not None:
        return f"{kind} palette"
    if array.ndim == 3:
        return f"{'RGB' if array.shape[-1] == 3 else 'RGBA'} {kind}"
    return kind


def _unit_scale(array: np.ndarray, path: Path) -> np.ndarray:
    """Map stored values to float32 in [0, 1] (see the module docstring)."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype.kind == "u":
        return (array / np.float32(np.iinfo(array.dtype).max)).astype(np.float32)
    if array.dtype.kind == "i":
        info = np.iinfo(array.dtype)
        if array.min() >= 0:
            return (array / np.float32(info.max)).astype(np.float32)
        return ((array.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    if array.dtype.kind != "f":
        raise NanosegError(f"{path}: unsupported pixel type {array.dtype}; save the image as 8/16-bit or float.")
    if not np.isfinite(array).all():
        raise NanosegError(f"{path}: the image holds NaN or infinite values; save a finite image.")
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return array.astype(np.float32)
    return ((array - low) / (high - low) if high > low else np.zeros_like(array)).astype(np.float32)


def _to_gray(array: np.ndarray, colormap: np.ndarray | None, path: Path) -> np.ndarray:
    from skimage.color import rgb2gray

    if colormap is not None:
        rgb = _unit_scale(colormap, path)
        gray_entry = (rgb == rgb[:, :1]).all(axis=1)  # keep gray entries exact
        lut = np.where(gray_entry, rgb[:, 0], rgb2gray(rgb[None])[0]).astype(np.float32)
        return lut[np.clip(array, 0, len(lut) - 1)]
    gray = _unit_scale(array, path)
    if gray.ndim == 3:
        gray = rgb2gray(gray[..., :3]).astype(np.float32)
    return np.clip(gray, 0.0, 1.0, out=gray)


def read_image_array(path) -> np.ndarray:
    """Read an image as stored: the raw 2-D array, palette NOT applied (for masks).

    RGB(A) files whose color channels are equal are reduced to one channel.

    Raises
    ------
    NanosegError
        For the same bad files as :func:`read_micrograph`, and for color images.
    """
    path, array, _, _ = _read_stored(path)
    if array.ndim == 3:
        rgb = array[..., :3]
        if not ((rgb == rgb[..., :1]).all()):
            raise NanosegError(
                f"{path}: a color ({_describe(array, None)}) image where a single-channel one was "
                "expected; save it as 8-bit grayscale."
            )
        array = rgb[..., 0]
    return array


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


def _level_fractions(levels: np.ndarray, tolerance: int) -> np.ndarray:
    """``out[row, v]``: the fraction of the row's pixels within ``tolerance`` of gray level ``v``."""
    height, width = levels.shape
    counts = np.bincount((levels + 256 * np.arange(height)[:, None]).ravel(), minlength=256 * height)
    cumulative = np.pad(np.cumsum(counts.reshape(height, 256), axis=1), ((0, 0), (1, 0)))
    centre = np.arange(256)
    return (cumulative[:, np.minimum(centre + tolerance + 1, 256)]
            - cumulative[:, np.maximum(centre - tolerance, 0)]) / width


def detect_databar(
    pixels: np.ndarray,
    *,
    search_fraction: float = 0.4,
    edge_fraction: float = 0.95,
    sample_fraction: float = 0.75,
    band_fraction: float = 0.5,
    min_rows: int = 2,
    tolerance: int = 6,
) -> int:
    """Find the first row of the microscope's data bar.

    The data bar is a band at the bottom of the frame, of one gray level ``b``
    with sparse text, that begins with a sharp straight edge. Row ``r`` starts
    it when its first ``min_rows`` rows are near-uniform (at least
    ``edge_fraction`` of their pixels within ``tolerance`` of 256 gray levels
    of ``b``; the first may blend sample and bar, as in resampled images, and
    needs only half its pixels at ``b``),
    the row above is sample (less than ``sample_fraction`` of it at ``b``:
    textured, or another level) and at least ``band_fraction`` of
    all pixels from ``r`` to the bottom are at ``b``. The first such row in
    the bottom ``search_fraction`` of the image is returned. The tolerance and
    the fractions make it hold for resampled (0.5x-2x) and JPEG-compressed
    micrographs and for bars of any height or shade. Particles do not end in a
    straight line across the frame, so a sample is not cut where particles
    continue below the row; an image without a bar returns its height.

    Parameters
    ----------
    pixels : ndarray
        2-D gray image, float in [0, 1] or integer.

    Returns
    -------
    int
        The data-bar row, or the image height when there is no data bar.
    """
    image = np.asarray(pixels)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    height = image.shape[0]
    levels = np.round(_unit_scale(image, Path("<array>")) * 255).astype(np.int64)
    near = _level_fractions(levels, tolerance)
    mode = near.argmax(axis=1)
    uniform = near[np.arange(height), mode] >= edge_fraction
    for row in range(max(1, int(height * (1 - search_fraction))), height - min_rows):
        bar = mode[row + 1]  # the bar's level; row itself may blend sample and bar (resampled images)
        if near[row - 1, bar] >= sample_fraction or (near[row + 1:row + 1 + min_rows, bar] < edge_fraction).any():
            continue
        blend = uniform[row] and abs(int(mode[row]) - int(bar)) < abs(int(mode[row - 1]) - int(bar))
        if (near[row, bar] >= 0.5 or blend) and near[row:, bar].mean() >= band_fraction:
            return row
    return height


def read_micrograph(path, pixel_size=None, databar_row=None, notes: list | None = None) -> Micrograph:
    """Read an SEM micrograph (TIFF or PNG) with its pixel size and data-bar row.

    Parameters
    ----------
    path : str or Path
        Image file; for multi-page TIFFs the first page is used.
    pixel_size : None, float or str, optional
        None reads it from the metadata; a number (nm) or text such as
        ``"7.34nm"`` or ``"0.00734um"`` overrides it (source "override").
    databar_row : None, "auto" or int, optional
        None/"auto" detects it (:func:`detect_databar`); an int overrides it.
    notes : list, optional
        Given, the missing-pixel-size message is appended to it instead of being issued as a
        :class:`PixelSizeWarning` (no warning filters needed: thread-safe, for the server).

    Returns
    -------
    Micrograph
    """
    path, array, colormap, (nm, source) = _read_stored(path)
    pixels = _to_gray(array, colormap, path)
    if pixel_size is not None:
        nm, source = parse_pixel_size(pixel_size), "override"
    elif nm is None:
        message = (f"{path}: no pixel size in the file's metadata (Zeiss, FEI, ImageJ or TIFF resolution); "
                   "sizes will be in pixels. Give one (e.g. --pixel-size 7.34nm) to measure in nm.")
        if notes is not None:
            notes.append(message)
        else:
            warnings.warn(message, PixelSizeWarning, stacklevel=2)
    height = pixels.shape[0]
    if databar_row is None or databar_row == "auto":
        row = detect_databar(pixels)
    else:
        try:
            row = int(databar_row) if isinstance(databar_row, str) else operator.index(databar_row)
        except (TypeError, ValueError):
            row = None
        if isinstance(databar_row, bool) or row is None or not 1 <= row <= height:
            raise NanosegError(
                f"{path}: data-bar row {databar_row!r} is not a row of this image: give a whole number "
                f"from 1 to {height} (the image height, meaning no data bar) or 'auto'."
            )
    return Micrograph(path, pixels, nm, source, int(row), _describe(array, colormap))


# --------------------------------------------------------------------------- CLI


def _summary(m: Micrograph) -> dict:
    fov = m.field_of_view_um
    return {
        "path": str(m.path), "name": m.path.name, "width": m.width, "height": m.height,
        "source_dtype": m.source_dtype, "pixel_size_nm": m.pixel_size_nm,
        "pixel_size_source": m.pixel_size_source, "databar_row": m.databar_row,
        "crop_rows_32": m.databar_row // 32 * 32,
        "field_of_view_um": None if fov is None else {"width": fov[0], "height": fov[1]},
        "field_of_view_of": "sample above the data bar",
    }


def info_command(args) -> int:
    """``nanoseg info IMAGE... [--pixel-size X] [--databar-row N] [--json]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PixelSizeWarning)  # reported in the output instead
        items = [
            _summary(read_micrograph(p, getattr(args, "pixel_size", None), getattr(args, "databar_row", None)))
            for p in args.images
        ]
    if getattr(args, "json", False):
        print(json.dumps(items, indent=2, ensure_ascii=False))
        return 0
    for item in items:
        w, h, row = item["width"], item["height"], item["databar_row"]
        if item["pixel_size_nm"] is None:
            size = "unknown: sizes will be in pixels (give --pixel-size, e.g. 7.34nm)"
            fov = "unknown (no pixel size)"
        else:
            size = f"{item['pixel_size_nm']:.3f} nm ({item['pixel_size_source']})"
            fov = "{width:.3f} x {height:.3f} µm (sample above the data bar)".format(**item["field_of_view_um"])
        bar = f"none (row {row} = image height)" if row == h else f"from row {row}"
        print(
            f"{item['name']}\n"
            f"  size           {w} x {h} px, {item['source_dtype']}\n"
            f"  pixel size     {size}\n"
            f"  data bar       {bar}; sample rows 0-{row - 1}, {item['crop_rows_32']} rows in 32-row crops\n"
            f"  field of view  {fov}"
        )
    return 0
