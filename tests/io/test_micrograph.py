"""Tests for nanoseg.io.micrograph: reading SEM images, pixel size, data bar, masks, `nanoseg info`."""

from __future__ import annotations

import json
import subprocess
import warnings
from argparse import Namespace

import numpy as np
import pytest
import tifffile
from PIL import Image

from nanoseg.errors import NanosegError
from nanoseg.io.masks import read_mask
from nanoseg.cli.info import info_command
from nanoseg.io.micrograph import (
    BitDepthWarning, Micrograph, PixelSizeWarning, detect_databar, effective_bits, parse_pixel_size, pixel_size_from_tiff, read_image_array, read_micrograph,
)

from tests.conftest import BAM, CLASS_MASKS, IMAGES, MASKS, needs_real_bam


@pytest.fixture(scope="module")
def bam_files(bam_dir):
    """The first image of the BAM dataset (1908248) or of its synthetic stand-in, with its two masks."""
    image = sorted((bam_dir / IMAGES).glob("*.tif"))[0]
    return (image, bam_dir / MASKS / f"{image.stem}_m.tif", bam_dir / CLASS_MASKS / f"{image.stem}_cm.tif")


def _sem_like(height=96, width=128, bar=80, seed=0) -> np.ndarray:
    """Textured uint8 'sample' with a black data bar (sparse white text) from row `bar`."""
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 220, (height, width), dtype=np.uint8)
    image[bar:] = 0
    image[bar + 3 : bar + 6, 10:30] = 255
    return image


def _read_quiet(path, **kwargs) -> Micrograph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PixelSizeWarning)
        return read_micrograph(path, **kwargs)


# ----------------------------------------------------------------------------- a BAM image (real or synthetic)


def test_bam_image(bam_files):
    m = read_micrograph(bam_files[0])
    assert m.shape == (768, 1024) and (m.height, m.width) == (768, 1024)
    assert m.pixels.dtype == np.float32 and 0.0 <= m.pixels.min() and m.pixels.max() <= 1.0
    assert m.pixel_size_nm == pytest.approx(7.34375)
    assert m.pixel_size_source == "CZ_SEM tag 34118"
    assert 704 <= m.databar_row <= 712
    assert m.crop_rows(32) == 704
    assert m.sample.shape == (m.databar_row, 1024)
    assert m.source_dtype == "uint8 palette"
    w, h = m.field_of_view_um
    assert w == pytest.approx(7.52) and h == pytest.approx(m.databar_row * 7.34375e-3)
    raw = read_image_array(bam_files[0])
    assert raw.dtype == np.uint8 and raw.shape == (768, 1024)


@needs_real_bam
def test_zeiss_palette_is_applied():
    # the real file's palette is not a gray ramp: index 243 is white in the Zeiss palette
    path = BAM / IMAGES / "1908248.tif"
    m, raw = read_micrograph(path), read_image_array(path)
    assert (raw == 243).any() and np.allclose(m.pixels[raw == 243], 1.0)


def test_bam_masks_and_overrides(bam_files):
    image, mask_file, class_mask_file = bam_files
    m = read_micrograph(image, pixel_size="7.0nm", databar_row=700)
    assert (m.pixel_size_nm, m.pixel_size_source, m.databar_row) == (7.0, "override", 700)
    assert m.crop_rows(32) == 672
    mask = read_mask(mask_file, shape=m.shape)
    assert mask.dtype == bool and 0.02 < mask.mean() < 0.5
    class_mask = read_mask(class_mask_file)
    assert class_mask.shape == (704, 1024) == (read_micrograph(image).crop_rows(32), 1024)


def test_truncated_tiff(tmp_path, bam_files):
    bad = tmp_path / "cut.tif"
    bad.write_bytes(bam_files[0].read_bytes()[:2000])
    with pytest.raises(NanosegError, match=r"cut\.tif.*(truncated|damaged)"):
        read_micrograph(bad)
    with pytest.raises(NanosegError, match="cut.tif"):
        read_image_array(bad)


# ----------------------------------------------------------------------------- synthetic formats


def test_gray_uint8_with_databar(tmp_path):
    image = _sem_like()
    tifffile.imwrite(tmp_path / "a.tif", image)
    with pytest.warns(PixelSizeWarning, match="a.tif.*pixels"):
        m = read_micrograph(tmp_path / "a.tif")
    assert m.pixel_size_nm is None and m.pixel_size_source == "none" and m.field_of_view_um is None
    assert m.databar_row == 80 and m.source_dtype == "uint8"
    np.testing.assert_allclose(m.pixels, image / 255, atol=1e-6)


def test_uint16_and_multipage(tmp_path):
    image = (_sem_like().astype(np.uint16) * 257)
    with tifffile.TiffWriter(tmp_path / "b.tif") as tif:  # the image and a reduced-resolution thumbnail
        tif.write(image)
        tif.write(image[::4, ::4], subfiletype=1)
    m = _read_quiet(tmp_path / "b.tif")
    assert m.source_dtype == "uint16" and m.shape == image.shape
    np.testing.assert_allclose(m.pixels, image / 65535, atol=1e-6)  # the full-size page
    assert m.databar_row == 80
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, 65535 - image]))  # two full-size pages
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:  # two pages written one by one
        tif.write(image)
        tif.write(image)
    tifffile.imwrite(tmp_path / "hyper.tif", np.zeros((2, 3, 5, 32, 24), np.uint8), imagej=True)  # TZCYX
    for name, planes in (("stack.tif", 2), ("pages.tif", 2), ("hyper.tif", 30)):
        with pytest.raises(NanosegError, match=rf"{name}: a stack of {planes} images.*each plane as its own file"):
            read_micrograph(tmp_path / name)


@pytest.mark.parametrize(("top", "bits"), [(255, 8), (1000, 10), (4000, 12), (16000, 14), (65535, None)])
def test_effective_bit_depth_of_16_bit_data(tmp_path, top, bits):
    image = np.linspace(0, top, 96 * 128).reshape(96, 128).astype(np.uint16)
    tifffile.imwrite(tmp_path / "d.tif", image)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = read_micrograph(tmp_path / "d.tif", pixel_size="5nm")
    notes = [str(w.message) for w in caught if issubclass(w.category, BitDepthWarning)]
    scale = 2**bits - 1 if bits else 65535
    np.testing.assert_allclose(m.pixels, image / scale, atol=1e-6)
    if bits:
        assert m.pixels.max() > 0.9 and m.source_dtype == f"uint16, {bits}-bit data"
        assert len(notes) == 1 and f"{bits}-bit data" in notes[0] and f"scaled by {scale}" in notes[0]
    else:
        assert not notes and m.source_dtype == "uint16"
    assert effective_bits(np.zeros((4, 4), np.uint16)) is None  # blank: nothing to scale
    assert effective_bits(np.full((4, 4), 200, np.uint8)) is None  # 8-bit containers are what they are


def test_rgb_and_rgba(tmp_path):
    gray = _sem_like()
    rgb = np.stack([gray, gray, gray], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    m = _read_quiet(tmp_path / "rgb.tif")
    assert m.source_dtype == "RGB uint8" and m.shape == gray.shape
    np.testing.assert_allclose(m.pixels, gray / 255, atol=1e-5)
    rgba = np.concatenate([rgb, np.full_like(gray, 255)[..., None]], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    m = _read_quiet(tmp_path / "rgba.png")
    assert m.source_dtype == "RGBA uint8" and m.shape == gray.shape and m.databar_row == 80
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    tifffile.imwrite(tmp_path / "red.tif", red, photometric="rgb")
    assert _read_quiet(tmp_path / "red.tif").pixels[0, 0] == pytest.approx(0.2125, abs=1e-3)  # luminance


def test_float32(tmp_path):
    unit = np.linspace(0, 1, 64 * 32, dtype=np.float32).reshape(64, 32)
    tifffile.imwrite(tmp_path / "f.tif", unit)
    m = _read_quiet(tmp_path / "f.tif")
    assert m.source_dtype == "float32"
    np.testing.assert_array_equal(m.pixels, unit)  # already in [0, 1]: kept
    tifffile.imwrite(tmp_path / "g.tif", unit * 1000 - 50)
    pixels = _read_quiet(tmp_path / "g.tif").pixels
    assert pixels.min() == 0.0 and pixels.max() == 1.0  # otherwise min-max scaled
    tifffile.imwrite(tmp_path / "nan.tif", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(NanosegError, match="nan.tif.*NaN"):
        read_micrograph(tmp_path / "nan.tif")


def test_palette_tiff_and_png(tmp_path):
    index = np.tile(np.arange(4, dtype=np.uint8), (16, 4))
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = 65535  # white
    colormap[:, 2] = 32896  # mid gray
    colormap[0, 3] = 65535  # red
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=colormap)
    m = _read_quiet(tmp_path / "p.tif")
    assert m.source_dtype == "uint8 palette"
    np.testing.assert_allclose(m.pixels[0, :4], [0.0, 1.0, 32896 / 65535, 0.2125], atol=1e-3)
    np.testing.assert_array_equal(read_image_array(tmp_path / "p.tif"), index)  # raw indices
    image = Image.fromarray(index).convert("P")
    image.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128, 255, 0, 0] + [0] * (252 * 3))
    image.save(tmp_path / "p.png")
    m = _read_quiet(tmp_path / "p.png")
    assert m.source_dtype == "uint8 palette"
    np.testing.assert_allclose(m.pixels[0, :4], [0.0, 1.0, 128 / 255, 0.2125], atol=1e-3)


def test_png_gray_16bit_and_dpi(tmp_path):
    image = _sem_like().astype(np.uint16) * 257
    Image.fromarray(image).save(tmp_path / "g.png")
    m = _read_quiet(tmp_path / "g.png")
    assert m.source_dtype == "uint16" and m.pixel_size_nm is None and m.databar_row == 80
    np.testing.assert_allclose(m.pixels, image / 65535, atol=1e-6)
    Image.fromarray(_sem_like()).save(tmp_path / "print.png", dpi=(300, 300))  # print resolution
    assert _read_quiet(tmp_path / "print.png").pixel_size_nm is None


# ----------------------------------------------------------------------------- pixel size metadata


def test_imagej_calibration(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", _sem_like(), imagej=True,
                     resolution=(1 / 0.005, 1 / 0.005), metadata={"unit": "micron"})
    m = read_micrograph(tmp_path / "ij.tif")
    assert m.pixel_size_nm == pytest.approx(5.0) and m.pixel_size_source == "ImageJ (0.005 micron/px)"
    assert m.field_of_view_um == pytest.approx((128 * 5e-3, 80 * 5e-3))


def test_fei_metadata(tmp_path):
    ini = "[User]\r\nDate=01/31/2024\r\n[Scan]\r\nPixelWidth=2.5e-009\r\nPixelHeight=2.5e-009\r\n"
    tifffile.imwrite(tmp_path / "fei.tif", _sem_like(), extratags=[(34682, "s", 0, ini, True)])
    with tifffile.TiffFile(tmp_path / "fei.tif") as tif:
        assert pixel_size_from_tiff(tif) == (pytest.approx(2.5), "FEI [Scan] PixelWidth")
    assert read_micrograph(tmp_path / "fei.tif", pixel_size=3).pixel_size_source == "override"


def test_tiff_resolution(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", _sem_like(), resolution=(2e6, 2e6), resolutionunit="CENTIMETER")
    m = read_micrograph(tmp_path / "cm.tif")
    assert m.pixel_size_nm == pytest.approx(5.0) and m.pixel_size_source == "TIFF resolution (2e+06 px/cm)"
    for name, kwargs in {"dpi.tif": dict(resolution=(300, 300), resolutionunit="INCH"),
                         "none.tif": dict(resolution=(1, 1), resolutionunit="NONE")}.items():
        tifffile.imwrite(tmp_path / name, _sem_like(), **kwargs)
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert pixel_size_from_tiff(tif) == (None, "none"), name


@pytest.mark.parametrize(("kwargs", "why"), [
    (dict(resolution=(5000, 5000), resolutionunit="INCH"), r"TIFF resolution \(5000 dpi\) gives 5080 nm/px"),
    (dict(resolution=(300, 300), resolutionunit="INCH"), r"TIFF resolution \(300 dpi\) gives 8.467e\+04 nm/px"),
    (dict(resolution=(1e9, 1e9), resolutionunit="CENTIMETER"), r"gives 0.01 nm/px"),
])
def test_implausible_resolution_is_missing_with_a_reason(tmp_path, kwargs, why):
    tifffile.imwrite(tmp_path / "r.tif", _sem_like(), **kwargs)
    with pytest.warns(PixelSizeWarning, match=rf"r.tif: no usable pixel size.*{why}, outside the plausible SEM "
                      r"range 0.05-500 nm: ignored.*--pixel-size"):
        m = read_micrograph(tmp_path / "r.tif")
    assert m.pixel_size_nm is None and m.pixel_size_source == "none"
    assert read_micrograph(tmp_path / "r.tif", pixel_size="7nm").pixel_size_nm == 7.0  # an override still counts


def test_png_resolution_in_range_or_ignored(tmp_path):
    dpi = 2.54e7 / 7.34375  # 7.34 nm pixels written as dots per inch
    Image.fromarray(_sem_like()).save(tmp_path / "fine.png", dpi=(dpi, dpi))
    m = read_micrograph(tmp_path / "fine.png")
    assert m.pixel_size_nm == pytest.approx(7.34375, rel=1e-4) and m.pixel_size_source.startswith("PNG resolution (")
    Image.fromarray(_sem_like()).save(tmp_path / "scan.png", dpi=(5000, 5000))
    with pytest.warns(PixelSizeWarning, match=r"PNG resolution \(5000 dpi\) gives 5080 nm/px.*ignored"):
        assert read_micrograph(tmp_path / "scan.png").pixel_size_nm is None


@pytest.mark.parametrize(("text", "nm"), [
    ("7.34nm", 7.34), ("7.34 nm", 7.34), ("7.34", 7.34), (7.34, 7.34), (7, 7.0),
    ("0.00734um", 7.34), ("0.00734 µm", 7.34), ("0.00734μm", 7.34), ("0.00734 micron", 7.34),
    ("7.34e-9m", 7.34), ("73.4A", 7.34), ("73.4 Å", 7.34), ("7.34 nm/px", 7.34), (".5nm", 0.5),
])
def test_parse_pixel_size(text, nm):
    assert parse_pixel_size(text) == pytest.approx(nm)


@pytest.mark.parametrize("text", ["", "abc", "nm", "7.34 furlongs", "-7nm", "0", "0nm", "nan", "inf nm",
                                  "7.34 s", "7.3.4nm", float("nan"), True])
def test_parse_pixel_size_bad(text):
    with pytest.raises(NanosegError, match="pixel size"):
        parse_pixel_size(text)


# ----------------------------------------------------------------------------- data bar


def test_detect_databar_variants():
    image = _sem_like(200, 160, bar=170) / 255
    assert detect_databar(image) == 170
    framed = image.copy()
    framed[-2:] = np.random.default_rng(1).random((2, 160))  # a frame line under the bar
    assert detect_databar(framed) == 170
    assert detect_databar(np.random.default_rng(2).random((100, 80))) == 100  # no bar
    assert detect_databar(np.zeros((100, 80))) == 100  # uniform: no bar
    white_bar = _sem_like(200, 160, bar=150)
    white_bar[150:] = 255
    assert detect_databar(white_bar) == 150  # integer input, white band


def _particles(height=400, width=320, bar=None, bar_level=0.0, background=0.25, n=60, seed=0):
    """SEM-like float image: bright textured discs on a noisy background, a data bar with text from `bar`."""
    from skimage.draw import disk
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    image = np.full((height, width), background) + rng.normal(0, 0.03, (height, width))
    for _ in range(n):
        rr, cc = disk((rng.integers(0, height), rng.integers(0, width)), rng.integers(6, 25), shape=image.shape)
        image[rr, cc] = 0.6 + 0.1 * rng.random() + rng.normal(0, 0.04, rr.size)
    image = gaussian(image, 1.0)
    if bar is not None:
        image[bar:] = bar_level
        text = 1.0 - bar_level
        for row in range(bar + 8, height - 4, 9):  # a clean margin, then lines of 'text' and a scale bar
            image[row:row + 4, 10:width // 3:3] = text
            image[row + 1:row + 3, width // 2:width - 20] = text
    return np.clip(image, 0, 1)


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.0, 1.5, 2.0])
def test_detect_databar_on_resampled_images(factor):
    from skimage.transform import rescale

    image = _particles(bar=340)
    resampled = np.clip(rescale(image, factor, order=1, anti_aliasing=factor < 1), 0, 1)
    assert abs(detect_databar(resampled) - round(340 * factor)) <= 2


def test_detect_databar_after_jpeg_and_of_any_height_and_shade():
    buffer = __import__("io").BytesIO()
    Image.fromarray(np.round(_particles(bar=340) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    jpeg = np.asarray(Image.open(buffer))
    assert abs(detect_databar(jpeg) - 340) <= 1
    for bar in (250, 300, 370, 390):  # bars of 150, 100, 30 and 10 rows
        assert detect_databar(_particles(bar=bar)) == bar
    assert detect_databar(_particles(bar=340, bar_level=1.0)) == 340  # white bar, black text
    assert detect_databar(_particles(bar=340, bar_level=0.5)) == 340  # gray bar


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("background", [0.0, 0.25])
def test_detect_databar_never_cuts_a_sample_without_bar(seed, background):
    """Particles on a flat (even perfectly black) background, many or few: no bar, nothing cut."""
    for n in (15, 60, 200):
        image = _particles(n=n, seed=seed, background=background)
        if background == 0.0:
            image = np.where(image < 0.3, 0.0, image)  # clipped, perfectly flat background
        assert detect_databar(image) == image.shape[0]


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.5, 2.0])
def test_detect_databar_on_resampled_bam_images(factor, bam_dir):
    """The real BAM images when present (the synthetic BAM-layout ones otherwise), resampled."""
    from skimage.transform import rescale

    for path in sorted((bam_dir / IMAGES).glob("*.tif"))[::4]:
        m = read_micrograph(path)
        resampled = np.clip(rescale(m.pixels, factor, order=1, anti_aliasing=factor < 1), 0, 1)
        assert abs(detect_databar(resampled) - round(m.databar_row * factor)) <= 2, path.name


def test_databar_override_validation(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _sem_like())
    assert _read_quiet(tmp_path / "a.tif", databar_row=96).databar_row == 96
    assert _read_quiet(tmp_path / "a.tif", databar_row="auto").databar_row == 80
    for bad in (0, 97, -5, 12.5, "x", True):
        with pytest.raises(NanosegError, match="a.tif.*1 to 96"):
            _read_quiet(tmp_path / "a.tif", databar_row=bad)
    small = _read_quiet(tmp_path / "a.tif", databar_row=20)
    with pytest.raises(NanosegError, match="20 sample rows"):
        small.crop_rows(32)


# ----------------------------------------------------------------------------- bad files and masks


def test_bad_files(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((16, 16, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    cases = {text: "not a TIFF or PNG", empty: "empty", tmp_path / "missing.tif": "no such file",
             tmp_path: "folder", stack: "2-D"}
    for path, message in cases.items():
        for reader in (read_micrograph, read_image_array):
            with pytest.raises(NanosegError, match=message) as info:
                reader(path)
            assert str(path) in str(info.value)


def test_read_mask(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 255
    tifffile.imwrite(tmp_path / "m.tif", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif", shape=(20, 30)), mask > 0)
    Image.fromarray(mask // 255).save(tmp_path / "m01.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m01.png"), mask > 0)
    odd = mask // 255
    odd[0, 0] = 7
    tifffile.imwrite(tmp_path / "odd.tif", odd)
    with pytest.raises(NanosegError, match=r"odd\.tif.*0, 1, 7"):
        read_mask(tmp_path / "odd.tif")
    with pytest.raises(NanosegError, match=r"m\.tif.*20 x 30.*768 x 1024"):
        read_mask(tmp_path / "m.tif", shape=(768, 1024))
    tifffile.imwrite(tmp_path / "color.tif", np.stack([mask, mask, 255 - mask], -1), photometric="rgb")
    with pytest.raises(NanosegError, match="color.tif.*single-channel"):
        read_mask(tmp_path / "color.tif")


# ----------------------------------------------------------------------------- nanoseg info


def _nanoseg() -> list[str]:
    from nanoseg import processes

    return [processes.tool("nanoseg")]


def test_info_command_json(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", _sem_like())
    args = Namespace(images=[str(tmp_path / "a.tif")], pixel_size="0.01um", databar_row=None, json=True)
    assert info_command(args) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert item["pixel_size_nm"] == pytest.approx(10.0) and item["pixel_size_source"] == "override"
    assert item["databar_row"] == 80 and item["width"] == 128 and item["height"] == 96
    assert item["field_of_view_um"] == pytest.approx({"width": 1.28, "height": 0.8})
    args = Namespace(images=[str(tmp_path / "a.tif")], pixel_size=None, databar_row=None, json=False)
    assert info_command(args) == 0
    assert "sizes will be in pixels" in capsys.readouterr().out


def test_cli_info(tmp_path, bam_files):
    result = subprocess.run([*_nanoseg(), "info", str(bam_files[0])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "7.344" in result.stdout and "CZ_SEM" in result.stdout
    assert "from row 712" in result.stdout and "7.520 x 5.229" in result.stdout
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    result = subprocess.run([*_nanoseg(), "info", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nanoseg: error:" in result.stderr and "bad.tif" in result.stderr
    assert "Traceback" not in result.stderr
