"""Read SEM micrographs: gray pixels, pixel size and the microscope's data bar.

Everything downstream stands on :func:`read_micrograph`. It reads a TIFF (with
tifffile) or a PNG/JPEG (with Pillow) holding ONE 2-D image and returns a :class:`Micrograph`:

* ``pixels``: the FULL frame as 2-D float32 gray values in [0, 1]. Palette
  images get their colormap applied (the Zeiss palette is not the identity:
  some indices are overlay colors), RGB(A) is reduced to luminance
  (:func:`skimage.color.rgb2gray`, alpha dropped). Integers are divided by
  their dtype's maximum, except 16-bit containers holding 8/10/12/14-bit data
  (largest value below 2**bits), which are divided by 2**bits - 1 with a
  :class:`BitDepthWarning` (a 12-bit detector image would otherwise be almost
  black). Signed integers holding negative values are mapped from the dtype's
  full range, floats already in [0, 1] are kept as they are and other floats
  are min-max scaled to [0, 1] (NaN/inf are refused).
* ``pixel_size_nm``: an override, else the first calibration found in the
  metadata (Zeiss ``CZ_SEM``, FEI/Thermo ``[Scan] PixelWidth``, ImageJ, a physical
  TIFF resolution, a PNG/JPEG resolution), else ``None`` with a
  :class:`PixelSizeWarning`. Pixel sizes derived from a resolution (ImageJ,
  TIFF, PNG/JPEG dpi) count only within :data:`RESOLUTION_RANGE_NM` (print
  resolutions such as 300 or 5000 dpi are not calibrations); outside it they are
  treated as missing and the warning says why.
* ``databar_row``: the first row of the data bar (text band at the bottom of
  the frame), detected by :func:`detect_databar` unless given.

Before any pixel is decoded the file's header is checked (:mod:`nanoseg.io.layout`):
images larger than the pixel limit (``max_pixels``, default
:data:`~nanoseg.io.layout.DEFAULT_MAX_PIXELS`, environment ``NANOSEG_MAX_PIXELS``),
decompression bombs and stacks (several full-size planes: multi-page TIFFs,
hyperstacks, volumes) are refused. Bad files (missing, empty, truncated, not an
image, stacks, too large) raise :class:`~nanoseg.errors.NanosegError` naming the
file, the problem and the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
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
from nanoseg.io.layout import TIFF_MAGIC, check_layout, image_layout, max_pixels_limit

__all__ = [
    "Micrograph", "MicrographWarning", "PixelSizeWarning", "BitDepthWarning", "read_micrograph",
    "parse_pixel_size", "parse_databar_row", "pixel_size_from_tiff", "detect_databar", "read_image_array",
    "probe_image", "effective_bits", "image_options",
    "RESOLUTION_RANGE_NM", "quiet_tifffile",
]

_UNIT_NM = {
    "pm": 1e-3, "a": 0.1, "å": 0.1, "angstrom": 0.1, "nm": 1.0, "nanometer": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "micrometer": 1e3,
    "mm": 1e6, "cm": 1e7, "m": 1e9, "meter": 1e9, "metre": 1e9,
}
# Physical TIFF resolution units (tifffile RESUNIT) in nm.
_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}
_RESUNIT_NAME = {2: "dpi", 3: "px/cm", 4: "px/mm", 5: "px/um"}
#: A pixel size derived from a resolution (TIFF/PNG/JPEG resolution, ImageJ) is a calibration only in
#: this range (nm): SEM pixels, the range the ``validate`` stage accepts (params.yaml). Outside it,
#: e.g. 300 dpi (84667 nm) or 5000 dpi (5080 nm), it is a print or scan resolution and is ignored.
RESOLUTION_RANGE_NM = (0.05, 500.0)
#: effective bit depths recognised in 16-bit containers (largest value below 2**bits)
_EFFECTIVE_BITS = (8, 10, 12, 14)
_PIXEL_SIZE_HELP = "e.g. 7.34nm, 0.00734um, 7.34e-9m or 73.4A (a bare number is nm)"


class MicrographWarning(UserWarning):
    """Something about an image that changes its numbers; ``nanoseg predict`` reports it as a note."""


class PixelSizeWarning(MicrographWarning):
    """No (usable) pixel size was found: sizes will be in pixels."""


class BitDepthWarning(MicrographWarning):
    """A 16-bit image holds fewer significant bits (e.g. 12-bit detector data) and is scaled by them."""


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
        How the file stores pixels, e.g. "uint8 palette", "uint16", "RGB uint8", "uint16, 12-bit data".
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


def _imagej(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    meta = tif.imagej_metadata or {}
    per_unit = _resolution(tif.pages.first)
    if not per_unit or "unit" not in meta:
        return None, ""
    return _to_nm(1.0 / per_unit, meta["unit"]), f"ImageJ ({1.0 / per_unit:.6g} {meta['unit']}/px)"


def _tiff_resolution(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    page = tif.pages.first
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag else 2
    per_unit = _resolution(page)
    if unit not in _RESUNIT_NM or not per_unit:
        return None, ""
    return _RESUNIT_NM[unit] / per_unit, f"TIFF resolution ({per_unit:.6g} {_RESUNIT_NAME[unit]})"


def plausible_resolution(nm: float | None, source: str) -> tuple[float | None, str]:
    """A resolution-derived pixel size if it lies in :data:`RESOLUTION_RANGE_NM`, else None and why.

    Returns
    -------
    (float or None, str)
        The pixel size and ``""``; or None and a note such as "the TIFF resolution (5000 dpi) gives
        5080 nm/px, outside the plausible SEM range 0.05-500 nm: ignored".
    """
    low, high = RESOLUTION_RANGE_NM
    if nm is None or low <= nm <= high:
        return nm, ""
    return None, f"the {source} gives {nm:.4g} nm/px, outside the plausible SEM range {low:g}-{high:g} nm: ignored"


def _pixel_size_and_note(tif: tifffile.TiffFile) -> tuple[float | None, str, str]:
    """(nm, source, note): the first usable calibration; ``note`` says which resolution was ignored."""
    readers = (
        (lambda: (_cz_sem(tif), "CZ_SEM tag 34118"), False),
        (lambda: _fei(tif), False),
        (lambda: _imagej(tif), True),
        (lambda: _tiff_resolution(tif), True),
    )
    notes = []
    for reader, from_resolution in readers:
        try:
            nm, source = reader()
        except Exception:  # damaged metadata: try the next source  # noqa: BLE001
            continue
        if nm and from_resolution:
            nm, note = plausible_resolution(nm, source)
            notes += [note] if note else []
        if nm:
            return float(nm), source, ""
    return None, "none", "; ".join(notes)


def pixel_size_from_tiff(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    """Find the pixel size in a TIFF's metadata.

    Looks, in order, at the Zeiss ``CZ_SEM`` tag, FEI/Thermo metadata, ImageJ
    calibration and a physical TIFF resolution (inch/cm/mm/µm units;
    ResolutionUnit "none" does not count). Resolution-derived sizes (ImageJ, TIFF
    resolution) count only within :data:`RESOLUTION_RANGE_NM`: print or scan
    resolutions such as 72, 300 or 5000 dpi are not microscope calibrations.

    Returns
    -------
    (float or None, str)
        Pixel size in nm and its source (with the raw resolution for resolution-derived
        sizes, e.g. "TIFF resolution (1.36170e+06 px/cm)"), or ``(None, "none")``.
    """
    nm, source, _ = _pixel_size_and_note(tif)
    return nm, source


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


def _check_file(path: Path, data: bytes | None = None) -> bytes:
    """Raise NanosegError for a missing, non-regular or empty file; return its first bytes."""
    if data is not None:
        if not data:
            raise NanosegError(f"{path}: the file is empty (0 bytes); copy it again from its source.")
        return bytes(data[:8])
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


def probe_image(path, max_pixels=None, data: bytes | None = None):
    """Check an image file before decoding it: it exists, is not empty, and its header declares one
    2-D image within the pixel limit (:mod:`nanoseg.io.layout`).

    Parameters
    ----------
    path : str or Path
    max_pixels : int, optional
        The limit; None: ``$NANOSEG_MAX_PIXELS`` or :data:`~nanoseg.io.layout.DEFAULT_MAX_PIXELS`.
    data : bytes, optional
        The file's bytes, already in memory (an upload); ``path`` then only names it in messages.

    Returns
    -------
    ImageLayout or None
        None when the header is not recognised (reading the file says why).

    Raises
    ------
    NanosegError
        Missing, folder, empty, unreadable, too large, a decompression bomb, a stack.
    """
    path = Path(path)
    head = _check_file(path, data)
    layout = image_layout(path if data is None else data, str(path))
    if layout is None and head[:4] not in TIFF_MAGIC:  # (a damaged TIFF gets tifffile's reason when it is read)
        raise _not_an_image(path)
    check_layout(layout, str(path), max_pixels_limit(max_pixels))
    return layout


def _not_an_image(path: Path) -> NanosegError:
    hint = " (it is named .tif but holds no TIFF data)" if path.suffix.lower() in (".tif", ".tiff") else ""
    return NanosegError(f"{path}: not a TIFF or PNG image{hint}; check the file, or export the micrograph as TIFF.")


def _read_tiff(path: Path, data: bytes | None = None) -> tuple[np.ndarray, np.ndarray | None, tuple[float | None, str, str]]:
    with quiet_tifffile() as log:
        try:
            with tifffile.TiffFile(path if data is None else io.BytesIO(data)) as tif:
                if not len(tif.pages):
                    raise ValueError("the file holds no image")
                page = tif.pages.first
                array, axes, photometric = page.asarray(), page.axes, page.photometric
                colormap = page.colormap if photometric == tifffile.PHOTOMETRIC.PALETTE else None
                pixel_size = _pixel_size_and_note(tif)
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


def _read_pillow(path: Path, data: bytes | None = None) -> tuple[np.ndarray, np.ndarray | None, tuple[float | None, str, str]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            im.load()
            colormap = None
            if im.mode == "P":
                colormap = np.asarray(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
            elif im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "F", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            array, dpi, kind = np.asarray(im), im.info.get("dpi"), im.format or "image"
    except UnidentifiedImageError:
        raise _not_an_image(path) from None
    except Image.DecompressionBombError as exc:
        raise NanosegError(
            f"{path}: a decompression bomb, or an image too large for Pillow ({exc}); split it into smaller images."
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise NanosegError(
            f"{path}: cannot read this image ({exc}); the file is damaged or truncated: copy it again."
        ) from None
    return _squeeze_alpha(array), colormap, _dpi_pixel_size(dpi, kind)


def _dpi_pixel_size(dpi, kind: str) -> tuple[float | None, str, str]:
    """(nm, source, note) from a PNG/JPEG resolution in dots per inch (see :func:`plausible_resolution`)."""
    try:
        per_inch = float(dpi[0]) if dpi else 0.0
    except (TypeError, ValueError, IndexError):
        per_inch = 0.0
    if not per_inch > 0 or not math.isfinite(per_inch):
        return None, "none", ""
    source = f"{kind} resolution ({per_inch:.5g} dpi)"
    nm, note = plausible_resolution(2.54e7 / per_inch, source)
    return (nm, source, "") if nm else (None, "none", note)


def _squeeze_alpha(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha
        array = array[..., 0]
    return array


def _read_stored(path, max_pixels=None, data: bytes | None = None
                 ) -> tuple[Path, np.ndarray, np.ndarray | None, tuple[float | None, str, str]]:
    """The image of a file (or of its bytes ``data``) as stored (channels last), its palette (if any) and
    (pixel size, source, note), after :func:`probe_image`."""
    path = Path(path)
    probe_image(path, max_pixels, data)
    head = _check_file(path, data)
    if head[:4] in TIFF_MAGIC:
        array, colormap, pixel_size = _read_tiff(path, data)
    else:
        array, colormap, pixel_size = _read_pillow(path, data)
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


def effective_bits(array: np.ndarray) -> int | None:
    """The significant bits of 16-bit data: the smallest of 8, 10, 12, 14 whose range holds every value.

    Returns
    -------
    int or None
        E.g. 12 for a uint16 image whose largest value is below 4096 (12-bit detector data); None for
        other dtypes, for blank images and when the data use the full 16 bits.
    """
    if array.dtype != np.uint16 or array.size == 0:
        return None
    top = int(array.max())
    return next((bits for bits in _EFFECTIVE_BITS if 0 < top < 2**bits), None)


def _unit_scale(array: np.ndarray, path: Path, bits: int | None = None) -> np.ndarray:
    """Map stored values to float32 in [0, 1] (see the module docstring); ``bits``: unsigned data use
    only that many bits (divided by ``2**bits - 1``)."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype.kind == "u":
        top = 2**bits - 1 if bits else np.iinfo(array.dtype).max
        return (array / np.float32(top)).astype(np.float32)
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


def _to_gray(array: np.ndarray, colormap: np.ndarray | None, path: Path, bits: int | None = None) -> np.ndarray:
    from skimage.color import rgb2gray

    if colormap is not None:
        rgb = _unit_scale(colormap, path)
        gray_entry = (rgb == rgb[:, :1]).all(axis=1)  # keep gray entries exact
        lut = np.where(gray_entry, rgb[:, 0], rgb2gray(rgb[None])[0]).astype(np.float32)
        return lut[np.clip(array, 0, len(lut) - 1)]
    gray = _unit_scale(array, path, bits)
    if gray.ndim == 3:
        gray = rgb2gray(gray[..., :3]).astype(np.float32)
    return np.clip(gray, 0.0, 1.0, out=gray)


def read_image_array(path, max_pixels=None) -> np.ndarray:
    """Read an image as stored: the raw 2-D array, palette NOT applied (for masks).

    RGB(A) files whose color channels are equal are reduced to one channel.

    Raises
    ------
    NanosegError
        For the same bad files as :func:`read_micrograph`, and for color images.
    """
    path, array, _, _ = _read_stored(path, max_pixels)
    if array.ndim == 3:
        rgb = array[..., :3]
        if not ((rgb == rgb[..., :1]).all()):
            raise NanosegError(
                f"{path}: a color ({_describe(array, None)}) image where a single-channel one was "
                "expected; save it as 8-bit grayscale."
            )
        array = rgb[..., 0]
    return array


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


def _whole_row(value) -> int | None:
    """``value`` as a whole number of rows, or None when it is not one (bools, 12.5, "x")."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if isinstance(value, str) else operator.index(value)
    except (TypeError, ValueError):
        return None


def parse_databar_row(value) -> int | str | None:
    """A data-bar row from the command line, checked before any image is read.

    Returns
    -------
    None, "auto" or int
        None/"auto": detect it; an int >= 1 (whether it lies within each image is checked per image).

    Raises
    ------
    NanosegError
        For anything but "auto" or a whole number >= 1.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None if value is None else "auto"
    row = _whole_row(value.strip() if isinstance(value, str) else value)
    if row is None or row < 1:
        raise NanosegError(f"--databar-row {value!r}: give the first row of the data bar as a whole number "
                           "from 1 (the image height means no data bar), or auto to detect it.")
    return row


def _warn_pixel_size(path: Path, note: str, notes: list | None = None) -> None:
    why = f"usable pixel size in the file's metadata ({note})" if note else \
        "pixel size in the file's metadata (Zeiss, FEI, ImageJ or a resolution)"
    message = f"{path}: no {why}; sizes will be in pixels. Give one (e.g. --pixel-size 7.34nm) to measure in nm."
    if notes is not None:  # collected, not warned: no warning filters needed (thread-safe, for the server)
        notes.append(message)
    else:
        warnings.warn(message, PixelSizeWarning, stacklevel=3)


def _warn_bits(path: Path, array: np.ndarray, bits: int, notes: list | None = None) -> None:
    message = (f"{path}: 16-bit image whose values stay below {2**bits} (largest {int(array.max())}): read as "
               f"{bits}-bit data, scaled by {2**bits - 1} instead of 65535.")
    if notes is not None:
        notes.append(message)
    else:
        warnings.warn(message, BitDepthWarning, stacklevel=3)


def _databar(path: Path, pixels: np.ndarray, databar_row) -> int:
    if databar_row is None or databar_row == "auto":
        return detect_databar(pixels)
    row, height = _whole_row(databar_row), pixels.shape[0]
    if row is None or not 1 <= row <= height:
        raise NanosegError(
            f"{path}: data-bar row {databar_row!r} is not a row of this image: give a whole number "
            f"from 1 to {height} (the image height, meaning no data bar) or 'auto'."
        )
    return row


def read_micrograph(path, pixel_size=None, databar_row=None, max_pixels=None,
                    notes: list | None = None, data: bytes | None = None) -> Micrograph:
    """Read an SEM micrograph (TIFF, PNG or JPEG) with its pixel size and data-bar row.

    Parameters
    ----------
    path : str or Path
        Image file holding one 2-D image (stacks are refused; thumbnail pages are ignored).
    pixel_size : None, float or str, optional
        None reads it from the metadata; a number (nm) or text such as
        ``"7.34nm"`` or ``"0.00734um"`` overrides it (source "override").
    databar_row : None, "auto" or int, optional
        None/"auto" detects it (:func:`detect_databar`); an int overrides it.
    max_pixels : int, optional
        Largest image accepted (pixels); None: ``$NANOSEG_MAX_PIXELS`` or
        :data:`~nanoseg.io.layout.DEFAULT_MAX_PIXELS`.
    notes : list, optional
        Given, the missing-pixel-size and bit-depth messages are appended to it instead of being issued
        as warnings (no warning filters needed: thread-safe, for the server).
    data : bytes, optional
        The file's bytes, already in memory (an upload to the server or the app): nothing is read from
        disk and ``path`` only names the image (``Micrograph.path``, messages).

    Returns
    -------
    Micrograph

    Warns
    -----
    PixelSizeWarning
        No usable pixel size (none in the metadata, or a resolution outside :data:`RESOLUTION_RANGE_NM`).
    BitDepthWarning
        16-bit data using only 8, 10, 12 or 14 bits, scaled by them.
    """
    path, array, colormap, (nm, source, note) = _read_stored(path, max_pixels, data)
    bits = effective_bits(array) if colormap is None else None
    if bits:
        _warn_bits(path, array, bits, notes)
    pixels = _to_gray(array, colormap, path, bits)
    if pixel_size is not None:
        nm, source = parse_pixel_size(pixel_size), "override"
    elif nm is None:
        _warn_pixel_size(path, note, notes)
    described = _describe(array, colormap) + (f", {bits}-bit data" if bits else "")
    return Micrograph(path, pixels, nm, source, int(_databar(path, pixels, databar_row)), described)


# --------------------------------------------------------------------------- command-line options


def image_options(args) -> tuple[float | None, int | str | None, int]:
    """The image options shared by ``info`` and ``predict``, checked before any image is read (or model
    loaded): ``(pixel size in nm or None, data-bar row, pixel limit)``.

    Raises
    ------
    NanosegError
        For a bad ``--pixel-size``, ``--databar-row`` or ``--max-pixels`` (or ``$NANOSEG_MAX_PIXELS``).
    """
    pixel_size = getattr(args, "pixel_size", None)
    return (None if pixel_size is None else parse_pixel_size(pixel_size),
            parse_databar_row(getattr(args, "databar_row", None)),
            max_pixels_limit(getattr(args, "max_pixels", None)))


