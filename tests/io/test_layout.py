"""Image headers: real sizes for every layout, the pixel limit, stacks and decompression bombs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from nanoseg.errors import NanosegError
from nanoseg.io.layout import (DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, check_layout, image_layout, max_pixels_limit,
                            parse_max_pixels)


def png_header(width: int, height: int, color_type: int = 0) -> bytes:
    """A valid PNG that declares ``width`` x ``height`` 8-bit pixels but holds almost no data: a bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _tiff(**kwargs) -> bytes:
    buf = io.BytesIO()
    data = kwargs.pop("data")
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def _pil(array, fmt) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("data", "expected"), [
    (_tiff(data=np.zeros((30, 40), np.uint8)), ("TIFF", 30, 40, 1, 1)),
    (_tiff(data=np.zeros((30, 40, 3), np.uint8), photometric="rgb"), ("TIFF", 30, 40, 3, 1)),
    (_tiff(data=np.zeros((3, 30, 40), np.uint8), photometric="rgb", planarconfig="separate"), ("TIFF", 30, 40, 3, 1)),
    (_tiff(data=np.zeros((5, 30, 40), np.uint16)), ("TIFF", 30, 40, 1, 5)),  # a stack of 5 pages
    (_tiff(data=np.zeros((2, 3, 30, 40), np.uint8)), ("TIFF", 30, 40, 3, 2)),  # 4-D: 2 planar RGB planes
    (_tiff(data=np.zeros((2, 5, 30, 40), np.uint8), imagej=True), ("TIFF", 30, 40, 1, 10)),  # ImageJ hyperstack
    (_pil(np.zeros((30, 40), np.uint8), "PNG"), ("PNG", 30, 40, 1, 1)),
    (_pil(np.zeros((30, 40, 3), np.uint8), "JPEG"), ("JPEG", 30, 40, 3, 1)),
    (png_header(30000, 30000), ("PNG", 30000, 30000, 1, 1)),  # over Pillow's bomb limit: read from IHDR
])
def test_layout_from_the_header(data, expected):
    layout = image_layout(data)
    assert (layout.format, layout.rows, layout.cols, layout.samples, layout.planes) == expected
    assert layout.pixels == expected[1] * expected[2] and layout.file_bytes == len(data)


def test_layout_of_files_and_unknown_data(tmp_path):
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.zeros((3, 60, 50), np.uint8), photometric="rgb", planarconfig="separate")
    assert (image_layout(path).rows, image_layout(path).cols) == (60, 50)  # not 3 x 60
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(np.zeros((60, 50), np.uint8))
        tif.write(np.zeros((15, 12), np.uint8), subfiletype=1)  # reduced resolution: not a plane
    assert image_layout(tmp_path / "thumb.tif").planes == 1
    assert image_layout(b"this is no image") is None
    assert image_layout(b"II*\x00garbage") is None  # a damaged TIFF is reported when it is read


def test_check_layout_names_the_limit_and_how_to_raise_it():
    planar = image_layout(_tiff(data=np.zeros((3, 1200, 1000), np.uint8), photometric="rgb", planarconfig="separate"))
    with pytest.raises(NanosegError, match=r"x.tif: the TIFF image is 1000 x 1200 px \(1.2 Mpx\), more than the "
                                           r"1.0 Mpx limit.*--max-pixels N \(or the environment variable "
                                           r"NANOSEG_MAX_PIXELS\)"):
        check_layout(planar, "x.tif", 1_000_000)
    check_layout(planar, "x.tif", 1_200_000)
    with pytest.raises(NanosegError, match=r"30000 x 30000 px \(900.0 Mpx\), more than the 67.1 Mpx limit \(a \d+ B file "
                                           r"that would expand to it: a decompression bomb\?\)"):
        check_layout(image_layout(png_header(30000, 30000)), "bomb.png", DEFAULT_MAX_PIXELS)
    with pytest.raises(NanosegError, match=r"s.tif: a stack of 5 images of 40 x 30 px.*each plane as its own file"):
        check_layout(image_layout(_tiff(data=np.zeros((5, 30, 40), np.uint8))), "s.tif", DEFAULT_MAX_PIXELS)


def test_pillow_bombs_without_a_readable_size_are_named(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 30 x 40 GIF is now "too large" for Pillow
    with pytest.raises(NanosegError, match=r"g.gif: a decompression bomb: its header declares 1,200 pixels, more than Pillow decodes"):
        image_layout(_pil(np.zeros((30, 40), np.uint8), "GIF"), "g.gif")


@pytest.mark.parametrize(("text", "value"), [("67108864", 67108864), ("1e8", 100_000_000), ("64M", 64_000_000),
                                             ("64 Mpx", 64_000_000), ("2G", 2_000_000_000), (5000, 5000)])
def test_parse_max_pixels(text, value):
    assert parse_max_pixels(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-5", "0", "1e400", "5 furlongs", True])
def test_parse_max_pixels_bad(text):
    with pytest.raises(NanosegError, match="--max-pixels"):
        parse_max_pixels(text)


def test_max_pixels_from_option_environment_or_default(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS == 8192 * 8192
    monkeypatch.setenv(MAX_PIXELS_ENV, "100M")
    assert max_pixels_limit() == 100_000_000 and max_pixels_limit("5M") == 5_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "many")
    with pytest.raises(NanosegError, match="NANOSEG_MAX_PIXELS"):
        max_pixels_limit()
