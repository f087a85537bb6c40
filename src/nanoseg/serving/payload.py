"""The served model's payload: JSON request -> checked image files, results -> JSON answer.

The request codec shared by the server (:mod:`nanoseg.serving.service`, :mod:`nanoseg.serving.pyfunc`), the client
(``nanoseg request``) and the model's signature (:func:`nanoseg.serving.pyfunc.pyfunc_signature`). It imports
no MLflow and no TensorFlow, and of nanoseg only :mod:`nanoseg.errors` and the header reading of
:mod:`nanoseg.io.layout` (lazily also the size statistics of :mod:`nanoseg.measure.distribution`): the layers
above (predict, tracking, serving) import it, never the other way round.

Request (``POST /invocations``, ``Content-Type: application/json``), one record per image::

    {"dataframe_records": [
        {"image": "<base64 of the TIFF or PNG file, as stored>",
         "name": "1908248.tif",        # optional, names the image in the answer
         "pixel_size_nm": null,        # optional: null reads it from the file's metadata
         "databar_row": null}],        # optional: null detects the data bar
     "params": {"return_images": true}}  # optional: false leaves out mask_png / labels_tif

(``{"inputs": [...records...]}`` works as well.) Answer::

    {"predictions": [
        {"name": "1908248.tif", "width": 1024, "height": 768,
         "pixel_size_nm": 7.34375, "pixel_size_source": "CZ_SEM tag 34118",
         "unit": "nm",                 # size unit of summary and particles ("px" without a pixel size)
         "databar_row": 712, "threshold": 0.5,
         "scale_factor": 1.0, "scale_note": "pixel size 7.34 nm within 10% of the model's 7.34 nm",
         "polarity": "bright",          # what the model saw: zoom to its pixel size, contrast (docs/magnification_polarity.md)
         "summary": {"n_particles": 212, "n_measurable": 170, "foreground_fraction": 0.31,
                     "median_ecd": 41.2, "mean_ecd": 43.0, "gsd_ecd": 1.21, "d10_ecd": 31.0,
                     "d90_ecd": 58.3, "median_ecd_ci_low": 40.1, "median_ecd_ci_high": 42.5,
                     "median_feret_min": 37.9},   # sizes over measurable particles, in `unit`
         "particles": [{"image": "1908248.tif", "id": 1, "centroid_row_px": ..., "area_px": ...,
                        "area_nm2": ..., "ecd_nm": ..., "feret_max_nm": ..., "feret_min_nm": ...,
                        "aspect_ratio": ..., "circularity": ..., "solidity": ...,
                        "touches_border": false, "touches_databar": false, "measurable": true,
                        "mean_probability": 0.93}, ...],   # the rows of particles.csv; NaN -> null
         "mask_png": "<base64 PNG, uint8 0/255, full image size, data-bar rows 0>",
         "labels_tif": "<base64 TIFF, uint16/uint32 instance ids, 0 = background>"}]}

Bad requests (not base64, not an image, an image over :data:`MAX_PIXELS`, no records, an unknown
field) raise :class:`RequestError` (HTTP 400 with its one-line message); a server at its limit of
concurrent requests raises :class:`ServerBusy` (HTTP 503).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
from pathlib import Path

import numpy as np

from nanoseg import errors
from nanoseg.errors import NanosegError
from nanoseg.io.layout import PNG_MAGIC, TIFF_MAGIC, image_layout

MAX_PIXELS = 4096 * 4096      # largest image accepted (pixels); model_config "max_pixels" overrides
MAX_IMAGE_BYTES = 64 << 20    # largest encoded image file
MAX_IMAGES = 32               # images per request
FIELDS = ("image", "name", "pixel_size_nm", "databar_row")  # the fields of a record
PARAMS = ("return_images",)
SUMMARY_FIELDS = {"n_particles": "long", "n_measurable": "long", "foreground_fraction": "double",
                  "median_ecd": "double", "mean_ecd": "double", "gsd_ecd": "double", "d10_ecd": "double",
                  "d90_ecd": "double", "median_ecd_ci_low": "double", "median_ecd_ci_high": "double",
                  "median_feret_min": "double"}


class RequestError(NanosegError):
    """A request the server cannot answer (HTTP 400): the client's fault, its message says what to change."""


class ServerBusy(NanosegError):
    """The server already answers as many requests as it may at once (HTTP 503): retry later."""


def one_line(text, limit: int = 400) -> str:
    """``text`` on one line, at most ``limit`` characters (:func:`nanoseg.errors.one_line`)."""
    return errors.one_line(text, limit)


# ----------------------------------------------------------------------------- encoding


def b64encode_file(path: str | os.PathLike) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_mask(text: str) -> np.ndarray:
    """``mask_png`` of an answer as a bool array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text)))) > 0


def decode_labels(text: str) -> np.ndarray:
    """``labels_tif`` of an answer as an integer array."""
    import tifffile

    return tifffile.imread(io.BytesIO(base64.b64decode(text)))


def make_request(paths, pixel_size_nm: float | None = None, databar_row: int | None = None,
                 return_images: bool = True) -> dict:
    """The JSON body that asks for ``paths`` (image files, sent as stored)."""
    extra = {k: v for k, v in (("pixel_size_nm", pixel_size_nm), ("databar_row", databar_row)) if v is not None}
    records = [{"image": b64encode_file(p), "name": Path(p).name, **extra} for p in paths]
    return {"dataframe_records": records, "params": {"return_images": bool(return_images)}}


# ----------------------------------------------------------------------------- request -> images


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def records(model_input) -> list[dict]:
    """The request's records from what the pyfunc receives (DataFrame, list of dicts or dict).

    Raises
    ------
    RequestError
        No records, more than :data:`MAX_IMAGES`, or a record with an unknown field.
    """
    if hasattr(model_input, "to_dict"):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    else:
        rows = list(model_input or [])
    if not rows:
        raise RequestError("the request holds no images; send {\"dataframe_records\": [{\"image\": \"<base64>\"}]}.")
    if len(rows) > MAX_IMAGES:
        raise RequestError(f"the request holds {len(rows)} images; send at most {MAX_IMAGES} per request.")
    return [_record(r, i) for i, r in enumerate(rows)]


def _record(row, index: int) -> dict:
    """One record with missing values as None; unknown fields (a typo such as ``pixel_size``) refused."""
    if not isinstance(row, dict):
        raise RequestError(f"image {index + 1}: the record is {type(row).__name__}, not an object; send "
                           "{\"image\": \"<base64>\", \"name\": ...} per image.")
    unknown = sorted(str(k) for k in row if k not in FIELDS)
    if unknown:
        raise RequestError(f"image {index + 1}: unknown field(s) {one_line(unknown, 120)}; the fields are "
                           f"{', '.join(FIELDS)}.")
    return {k: (None if _missing(v) else v) for k, v in row.items()}


def check_request(body) -> None:
    """Check a parsed JSON request before MLflow turns it into a DataFrame (which drops unknown fields
    silently and turns ``true`` into 1.0): unknown fields and parameters, and fields of the wrong type.

    Parameters
    ----------
    body : object
        The parsed JSON body; anything but an object is left to MLflow's own check.

    Raises
    ------
    RequestError
    """
    if not isinstance(body, dict):
        return
    params = body.get("params")
    if params is not None:
        if not isinstance(params, dict):
            raise RequestError(f"\"params\" must be an object such as {{\"return_images\": false}}; the parameters "
                               f"are {', '.join(PARAMS)}.")
        unknown = sorted(str(k) for k in params if k not in PARAMS)
        if unknown:
            raise RequestError(f"unknown parameter(s) {one_line(unknown, 120)} in \"params\"; the parameters are "
                               f"{', '.join(PARAMS)}.")
        if not isinstance(params.get("return_images", True), bool):
            value = one_line(repr(params["return_images"]), 40)
            raise RequestError(f"params: return_images = {value}; give true or false.")
    for index, row in enumerate(_raw_records(body)):
        _check_raw_record(row, index)


def _raw_records(body: dict) -> list[dict]:
    """The records of a raw request, as dicts of field -> value (columns of the other layouts as one row of names)."""
    if isinstance(body.get("dataframe_split"), dict):
        return [dict.fromkeys(body["dataframe_split"].get("columns") or [])]
    for key in ("dataframe_records", "inputs", "instances"):
        data = body.get(key)
        if isinstance(data, list):
            return [r for r in data if isinstance(r, dict)]
        if isinstance(data, dict):
            return [dict.fromkeys(data)]
    return []


def _check_raw_record(row: dict, index: int) -> None:
    label = f"image {index + 1}"
    unknown = sorted(str(k) for k in row if k not in FIELDS)
    if unknown:
        raise RequestError(f"{label}: unknown field(s) {one_line(unknown, 120)}; the fields are {', '.join(FIELDS)}.")
    for key, kinds, what in (("image", (str,), "the image file as a base64 string"), ("name", (str,), "a file name"),
                             ("pixel_size_nm", (int, float), "a number of nanometres"),
                             ("databar_row", (int, float), "a whole number of rows")):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise RequestError(f"{label}: \"{key}\" is {_json_kind(value)}; give {what}"
                               f"{'' if key == 'image' else ' or null'}.")


def _json_kind(value) -> str:
    return {bool: "true/false", str: "a string", list: "a list", dict: "an object"}.get(type(value), "a number")


def decode_image(text, label: str) -> bytes:
    """The image file bytes of one record (base64, an optional data: URL prefix allowed)."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(f"{label}: 'image' is missing or empty; give the image file as a base64 string.")
    text = re.sub(r"^data:[^,]*,", "", text.strip())
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(f"{label}: the image file is larger than {MAX_IMAGE_BYTES >> 20} MiB; send a smaller file.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{label}: 'image' is not valid base64; encode the file's bytes with base64.") from None
    if not data:
        raise RequestError(f"{label}: the image file is empty.")
    return data


def image_size(data: bytes) -> tuple[int, int] | None:
    """(rows, cols) of one image plane from the file header, without decoding the pixels; None if not recognised.

    Read from the real layout (:func:`nanoseg.io.layout.image_layout`; no warning filters changed: requests
    run in threads): a planar RGB TIFF page (3 x H x W) is H x W, a PNG's size comes from its header even
    when it is a decompression bomb.
    """
    try:
        layout = image_layout(data)
    except NanosegError:  # a bomb whose size only Pillow knew
        return (1 << 20, 1 << 20)
    return None if layout is None else (layout.rows, layout.cols)


def _suffix(data: bytes) -> str:
    return ".tif" if data[:4] in TIFF_MAGIC else ".png" if data[:8] == PNG_MAGIC else ".img"


def check_image(data: bytes, label: str, max_pixels: int = MAX_PIXELS):
    """Check an image file's bytes from its header, before anything is decoded (the server's and the app's
    upload check): no decompression bomb, at most ``max_pixels``, one plane. Returns its layout (None when
    the header is not recognised: reading the file says why).

    Raises
    ------
    RequestError
    """
    try:
        layout = image_layout(data, label)
    except NanosegError as exc:  # a decompression bomb
        raise RequestError(str(exc)) from None
    if layout and layout.pixels > max_pixels:
        bomb = " (a decompression bomb?)" if len(data) < 0.01 * layout.pixels else ""
        raise RequestError(f"{label}: the image is {layout.cols} x {layout.rows} px ({layout.pixels / 1e6:.1f} Mpx), "
                           f"more than the {max_pixels / 1e6:.1f} Mpx this server accepts{bomb}; send a smaller image.")
    if layout and layout.planes > 1:
        raise RequestError(f"{label}: a stack of {layout.planes} images, not one 2-D micrograph; send each plane "
                           "as its own image.")
    return layout


def safe_name(name: str) -> str:
    """A file name without folders, characters other than word characters, ``.``, ``+``, ``-`` replaced by
    ``_`` (empty when nothing is left)."""
    name = Path(str(name or "")).name
    return re.sub(r"[^\w.+-]", "_", name).lstrip(".")


def read_upload(record: dict, index: int, max_pixels: int = MAX_PIXELS) -> tuple[bytes, str, str]:
    """Check one record: returns (file bytes, file name, label for messages); nothing is decoded yet."""
    name = record.get("name")
    if name is not None and not isinstance(name, str):
        raise RequestError(f"image {index + 1}: 'name' is {type(name).__name__}, not a string; give the file name.")
    name = Path(name or "").name
    label = f"image {index + 1}" + (f" ({one_line(name, 80)})" if name else "")
    data = decode_image(record.get("image"), label)
    check_image(data, label, max_pixels)
    return data, safe_name(name) or f"image_{index + 1}{_suffix(data)}", label


# ----------------------------------------------------------------------------- results


def _clean(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def summarize(table, foreground_fraction: float | None = None) -> dict:
    """Counts and size statistics over the measurable particles (sizes in the table's unit)."""
    from nanoseg.measure.distribution import size_distribution

    unit = table.attrs.get("unit", "nm")
    measurable = table[table["measurable"]] if len(table) else table
    ecd = size_distribution(measurable[f"ecd_{unit}"].to_numpy(float), n_boot=500, unit=unit)
    feret = measurable[f"feret_min_{unit}"].to_numpy(float)
    out = {"n_particles": int(len(table)), "n_measurable": int(len(measurable)),
           "foreground_fraction": foreground_fraction, "median_ecd": ecd["median"], "mean_ecd": ecd["mean"],
           "gsd_ecd": ecd["gsd"], "d10_ecd": ecd["d10"], "d90_ecd": ecd["d90"],
           "median_ecd_ci_low": ecd["median_ci_low"], "median_ecd_ci_high": ecd["median_ci_high"],
           "median_feret_min": float(np.median(feret)) if feret.size else None}
    return {k: _clean(v) for k, v in out.items()}


def answer(info: dict, table, threshold: float, mask_png: bytes | None = None,
           labels_tif: bytes | None = None) -> dict:
    """One image's answer (see the module docstring) from what ``nanoseg predict`` made of it."""
    result = {"name": info["image"], "width": info["width"], "height": info["height"],
              "pixel_size_nm": _clean(info["pixel_size_nm"]) if info["pixel_size_nm"] is not None else None,
              "pixel_size_source": info["pixel_size_source"], "unit": table.attrs.get("unit", info.get("unit")),
              "databar_row": int(info["databar_row"]), "threshold": float(threshold),
              "scale_factor": float(info.get("scale_factor", 1.0)), "scale_note": info.get("scale_note"),
              "polarity": info.get("polarity"),
              "summary": summarize(table, info.get("foreground_fraction")),
              "particles": [{k: _clean(v) for k, v in row.items()} for row in table.to_dict(orient="records")]}
    if mask_png is not None:
        result["mask_png"] = base64.b64encode(mask_png).decode("ascii")
        result["labels_tif"] = base64.b64encode(labels_tif).decode("ascii")
    return result


def databar_row(value, label: str):
    """``databar_row`` of a record: None (detect), or a whole number (JSON numbers may arrive as floats)."""
    if value is None:
        return None
    if isinstance(value, str):  # "auto" or digits: read_micrograph checks the text
        return value
    try:
        if float(value) == int(value):
            return int(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise RequestError(f"{label}: databar_row = {one_line(repr(value), 40)} is not a whole number of rows; "
                       "give e.g. 704 or null.")


def pixel_size(value, label: str) -> float | None:
    """``pixel_size_nm`` of a record: None (read from the file), or a positive finite number of nm."""
    if value is None:
        return None
    try:
        nm = float(value)
    except (TypeError, ValueError):
        nm = None
    if isinstance(value, bool) or nm is None or not math.isfinite(nm) or nm <= 0:
        raise RequestError(f"{label}: pixel_size_nm = {one_line(repr(value), 40)} is not a pixel size; give a "
                           "positive number of nanometres (e.g. 7.34) or null to read it from the file.")
    return nm


def example_image(size: int = 256, seed: int = 0) -> bytes:
    """A synthetic SEM-like PNG (bright discs on a noisy background): the model's input example."""
    from PIL import Image
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = rng.normal(60, 12, (size, size))
    for _ in range(14):
        rr, cc = disk(tuple(rng.uniform(12, size - 12, 2)), rng.uniform(5, 11), shape=img.shape)
        img[rr, cc] = rng.normal(190, 15, rr.size)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def input_example(pixel_size_nm: float = 7.34375):
    """The pyfunc's input example: one synthetic image as a one-row DataFrame."""
    import pandas as pd

    return pd.DataFrame([{"image": base64.b64encode(example_image()).decode("ascii"), "name": "example.png",
                          "pixel_size_nm": float(pixel_size_nm)}])


