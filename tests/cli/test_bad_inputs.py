"""Bad inputs to `nanoseg predict` and `nanoseg info`, table-driven: each crafted file or argument gets its
one-line message (naming the file or option, what is wrong, what to do) and its exit status, never a
traceback. Status 2: nothing could be done (bad argument, every image bad); 1: some images were skipped;
0: done (warnings about the numbers go to stderr or the notes).

Self-contained: the files are made here (no BAM data needed) and the model is a tiny pass-through one.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nanoseg.cli import main

PX_PER_CM = 1e7 / 7.34375


def _sem_like(height=96, width=128, bar=80, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 220, (height, width), dtype=np.uint8)
    image[20:40, 20:40] = 250  # a bright particle
    image[bar:] = 0
    image[bar + 3: bar + 6, 10:30] = 255
    return image


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Crafted inputs by name (paths as strings), and a tiny model."""
    d = tmp_path_factory.mktemp("bad-inputs")
    sem = _sem_like()
    f = {name: d / name for name in (
        "good.tif", "nopx.png", "empty.tif", "text.tif", "truncated.tif", "stack4d.tif", "pages.tif", "planar.tif",
        "bomb.png", "bits12.tif", "dpi5000.tif", "channels5.tif", "nan.tif", "cut.png")}
    tifffile.imwrite(f["good.tif"], sem, resolution=(PX_PER_CM, PX_PER_CM), resolutionunit="CENTIMETER")
    Image.fromarray(sem).save(f["nopx.png"])
    f["empty.tif"].write_bytes(b"")
    f["text.tif"].write_text("Sample 7, TiO2, 20 kV\n")
    big = np.random.default_rng(1).integers(0, 255, (256, 256), dtype=np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, big)
    f["truncated.tif"].write_bytes(buf.getvalue()[:2000])
    tifffile.imwrite(f["stack4d.tif"], np.zeros((2, 3, 64, 64), np.uint8))
    tifffile.imwrite(f["pages.tif"], np.stack([sem, sem, sem, sem, sem]))
    tifffile.imwrite(f["planar.tif"], np.zeros((3, 1200, 1000), np.uint8), photometric="rgb",
                     planarconfig="separate", compression="zlib")
    f["bomb.png"].write_bytes(_png_bomb(30000, 30000))
    tifffile.imwrite(f["bits12.tif"], (sem.astype(np.uint16) * 16), resolution=(PX_PER_CM, PX_PER_CM),
                     resolutionunit="CENTIMETER")  # 12-bit data, values < 4096
    tifffile.imwrite(f["dpi5000.tif"], sem, resolution=(5000, 5000), resolutionunit="INCH")
    tifffile.imwrite(f["channels5.tif"], np.zeros((16, 16, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(f["nan.tif"], np.full((16, 16), np.nan, np.float32))
    png = io.BytesIO()
    Image.fromarray(big).save(png, format="PNG")
    f["cut.png"].write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (d / "folder.tif").mkdir()
    (d / "other").mkdir()
    Image.fromarray(sem).save(d / "other" / "good.png")
    (d / "afile").write_text("x")
    foreign = d / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")

    import keras

    from nanoseg.model.network import save_model

    keras.mixed_precision.set_global_policy("float32")
    x = keras.Input((None, None, 1))
    model = save_model(keras.Model(x, keras.layers.Identity()(x)), d / "model",
                       {"threshold": 0.5, "training_scale": {"pixel_size_nm": 7.34375}})
    out = {k: str(v) for k, v in f.items()}
    out.update(dir=str(d), folder=str(d / "folder.tif"), missing=str(d / "missing.tif"),
               dupe=str(d / "other" / "good.png"), afile=str(d / "afile"), foreign=str(foreign), model=str(model))
    return out


P = ["predict", "--model", "{model}", "--out", "{out}"]  # predict's fixed arguments
I = ["info"]

CASES = [
    # ------------------------------------------------------------------ files nanoseg cannot read
    ("empty", [*I, "{empty.tif}"], 2, "empty.tif: the file is empty (0 bytes)"),
    ("text renamed .tif", [*I, "{text.tif}"], 2, "it is named .tif but holds no TIFF data"),
    ("truncated TIFF", [*I, "{truncated.tif}"], 2, "truncated.tif: cannot read this TIFF"),
    ("truncated TIFF, predict", [*P, "{truncated.tif}"], 2, "damaged, truncated"),
    ("truncated PNG", [*I, "{cut.png}"], 2, "cut.png: cannot read this image"),
    ("missing file", [*I, "{missing}"], 2, "missing.tif: no such file"),
    ("missing file, predict", [*P, "{missing}"], 2, "missing.tif: no such file"),
    ("directory", [*I, "{folder}"], 2, "folder.tif: is a folder, not an image file"),
    ("directory, predict", [*P, "{folder}"], 2, "is a folder, not an image file"),
    ("4-D TIFF stack", [*I, "{stack4d.tif}"], 2, "stack4d.tif: a stack of 2 images of 64 x 64 px"),
    ("multi-page stack, predict", [*P, "{pages.tif}"], 2, "pages.tif: a stack of 5 images"),
    ("5 channels", [*I, "{channels5.tif}"], 2, "not a 2-D gray or RGB(A) image"),
    ("NaN pixels", [*I, "{nan.tif}"], 2, "nan.tif: the image holds NaN or infinite values"),
    # ------------------------------------------------------------------ too large, bombs
    ("planar RGB too large", [*I, "{planar.tif}", "--max-pixels", "1M"], 2,
     "planar.tif: the TIFF image is 1000 x 1200 px (1.2 Mpx), more than the 1.0 Mpx limit"),
    ("planar RGB too large, predict", [*P, "{planar.tif}", "--max-pixels", "1M"], 2, "raise the limit with --max-pixels"),
    ("PNG bomb header", [*I, "{bomb.png}"], 2, "30000 x 30000 px (900.0 Mpx), more than the 67.1 Mpx limit"),
    ("PNG bomb header, predict", [*P, "{bomb.png}"], 2, "a decompression bomb?"),
    ("PNG bomb past the limit", [*I, "{bomb.png}", "--max-pixels", "2G"], 2, "bomb.png: a decompression bomb"),
    # ------------------------------------------------------------------ wrong arguments
    ("pixel size junk", [*I, "{good.tif}", "--pixel-size", "abc"], 2, "cannot read the pixel size 'abc'"),
    ("pixel size unit", [*P, "{good.tif}", "--pixel-size", "7 furlongs"], 2, "with a known unit"),
    ("pixel size negative", [*P, "{good.tif}", "--pixel-size=-7nm"], 2, "positive number"),
    ("pixel size zero", [*I, "{good.tif}", "--pixel-size", "0"], 2, "pixel size '0'"),
    ("databar row text", [*P, "{good.tif}", "--databar-row", "x"], 2, "--databar-row 'x': give the first row"),
    ("databar row zero", [*I, "{good.tif}", "--databar-row", "0"], 2, "--databar-row '0'"),
    ("databar row fraction", [*P, "{good.tif}", "--databar-row", "12.5"], 2, "--databar-row '12.5'"),
    ("databar row past the image", [*I, "{good.tif}", "--databar-row", "5000"], 2,
     "good.tif: data-bar row 5000 is not a row of this image: give a whole number from 1 to 96"),
    ("scale junk", [*P, "{good.tif}", "--scale", "junk"], 2, "--scale 'junk': use auto, off or a zoom factor"),
    ("scale out of range", [*P, "{good.tif}", "--scale", "100"], 2, "a zoom factor must lie in 0.1..10.0"),
    ("polarity junk", [*P, "{good.tif}", "--polarity", "sideways"], 2, "--polarity 'sideways': use auto"),
    ("max pixels junk", [*I, "{good.tif}", "--max-pixels", "lots"], 2, "--max-pixels 'lots': give a number of pixels"),
    ("missing model", ["predict", "{good.tif}", "--model", "{dir}/nomodel", "--out", "{out}"], 2, "no such model folder"),
    # ------------------------------------------------------------------ outputs
    ("duplicate stems", [*P, "{good.tif}", "{dupe}"], 2, "several input images are named ['good']"),
    ("out is a file", ["predict", "{good.tif}", "--model", "{model}", "--out", "{afile}"], 2,
     "afile: exists and is not a folder"),
    ("out exists", ["predict", "{good.tif}", "--model", "{model}", "--out", "{foreign}"], 2, "pass --overwrite"),
    ("out holds foreign files", ["predict", "{good.tif}", "--model", "{model}", "--out", "{foreign}", "--overwrite"],
     2, "foreign: not a folder written by nanoseg predict"),
    ("out holds the inputs", ["predict", "{good.tif}", "--model", "{model}", "--out", "{dir}", "--overwrite"], 2,
     "holds the input image(s)"),
    # ------------------------------------------------------------------ many inputs: bad ones skipped
    ("one bad among many, info", [*I, "{good.tif}", "{text.tif}"], 1, "1 of 2 images could not be read: "),
    ("one bad among many, predict", [*P, "{good.tif}", "{empty.tif}", "{stack4d.tif}", "{nopx.png}"], 1,
     "2 of 4 images failed and were skipped: empty.tif, stack4d.tif"),
    ("all bad, predict", [*P, "{text.tif}", "{empty.tif}"], 2, "none of the 2 images could be analysed"),
    ("all bad, info", [*I, "{text.tif}", "{missing}"], 2, "none of the 2 images could be read"),
    # ------------------------------------------------------------------ numbers: analysed, with a warning
    ("12-bit data", [*I, "{bits12.tif}"], 0, "read as 12-bit data, scaled by 4095 instead of 65535"),
    ("12-bit data, predict", [*P, "{bits12.tif}"], 0, "read as 12-bit data"),
    ("5000 dpi", [*I, "{dpi5000.tif}"], 0, "gives 5080 nm/px, outside the plausible SEM range 0.05-500 nm: ignored"),
    ("5000 dpi, predict", [*P, "{dpi5000.tif}"], 0, "no usable pixel size"),
    ("no pixel size, predict", [*P, "{nopx.png}"], 0, "particles smaller than 4 px removed"),
]


def _argv(template: list[str], files: dict, out: Path) -> list[str]:
    names = {**files, "out": str(out)}
    return [re.sub(r"\{([^}]+)\}", lambda m: names[m[1]], a) for a in template]


@pytest.mark.parametrize(("template", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(files, tmp_path, capsys, template, code, message):
    out = tmp_path / "out"
    argv = _argv(template, files, out)
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err
    text = err + captured.out if code == 0 else err  # info writes its notes to stdout
    assert message in text, text
    assert status == code, text
    errors = [line for line in err.splitlines() if "nanoseg: error:" in line]
    if code == 2:
        assert errors and all(line.startswith("nanoseg: error: ") for line in errors)
        assert len(errors) == 1 or "none of" in errors[-1], errors  # one line per problem
        assert not (argv[0] == "predict" and out.exists() and "{out}" in template), "nothing is written on errors"
    if code == 1:
        assert errors and "nanoseg: error:" not in err.splitlines()[-1]  # the summary line says what was skipped
    if argv[0] == "predict" and code in (0, 1):
        assert (out / "summary.json").is_file() and (out / ".nanoseg-output").is_file()


def test_the_table_is_large_enough():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} == {"predict", "info"}


@pytest.mark.parametrize(("what", "code", "message"), [
    ("text.tif", 2, "not a TIFF or PNG image"),
    ("bomb.png", 2, "a decompression bomb?"),
])
def test_a_real_process_prints_one_line_and_no_traceback(files, what, code, message):
    exe = Path(sys.executable).with_name("nanoseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nanoseg"]
    result = subprocess.run([*cmd, "info", files[what]], capture_output=True, text=True, timeout=300)
    assert result.returncode == code and "Traceback" not in result.stderr
    assert result.stderr.startswith("nanoseg: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
