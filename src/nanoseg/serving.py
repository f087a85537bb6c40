"""The served model's payload: JSON request -> images -> masks, instances and particle tables.

This module holds everything between the HTTP body and ``nanoseg predict``'s
code (imports no MLflow; the thin ``mlflow.pyfunc`` wrapper is
:class:`nanoseg.tracking.NanosegPyfunc`). It also has the two commands around
the server: ``nanoseg serve`` and the client ``nanoseg request``.

Request (``POST /invocations``, ``Content-Type: application/json``), one record
per image::

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

Bad requests (not base64, not an image, an image over :data:`MAX_PIXELS`, no
records) raise :class:`RequestError`; the server answers HTTP 400 with its
message (``{"error_code": "INVALID_PARAMETER_VALUE", "message": ...}``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nanoseg.errors import NanosegError

MAX_PIXELS = 4096 * 4096      # largest image accepted (pixels); model_config "max_pixels" overrides
MAX_IMAGE_BYTES = 64 << 20    # largest encoded image file
MAX_IMAGES = 32               # images per request
SUMMARY_FIELDS = {"n_particles": "long", "n_measurable": "long", "foreground_fraction": "double",
                  "median_ecd": "double", "mean_ecd": "double", "gsd_ecd": "double", "d10_ecd": "double",
                  "d90_ecd": "double", "median_ecd_ci_low": "double", "median_ecd_ci_high": "double",
                  "median_feret_min": "double"}
DEFAULT_MODEL = "models:/nanoseg@champion"


class RequestError(NanosegError):
    """A request the server cannot answer (HTTP 400)."""


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
    """The request's records from what the pyfunc receives (DataFrame, list of dicts or dict)."""
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
    return [{k: (None if _missing(v) else v) for k, v in dict(r).items()} for r in rows]


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

    Read from the real layout (:func:`nanoseg.layout.image_layout`): a planar RGB TIFF page (3 x H x W) is
    H x W, a PNG's size comes from its header even when it is a decompression bomb.
    """
    from nanoseg.layout import image_layout

    try:
        layout = image_layout(data)
    except NanosegError:  # a bomb whose size only Pillow knew
        return (1 << 20, 1 << 20)
    return None if layout is None else (layout.rows, layout.cols)


def _suffix(data: bytes) -> str:
    return ".tif" if data[:2] in (b"II", b"MM") else ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".img"


def read_upload(record: dict, index: int, max_pixels: int = MAX_PIXELS) -> tuple[bytes, str, str]:
    """Check one record: returns (file bytes, file name, label for messages); nothing is decoded yet."""
    name = Path(str(record.get("name") or "")).name
    label = f"image {index + 1}" + (f" ({name})" if name else "")
    data = decode_image(record.get("image"), label)
    from nanoseg.layout import image_layout

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
    safe = re.sub(r"[^\w.+-]", "_", name).lstrip(".")
    return data, safe or f"image_{index + 1}{_suffix(data)}", label


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
    from nanoseg.distribution import size_distribution

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


class Service:
    """A loaded model that answers requests (what the pyfunc wraps).

    Each image goes through ``nanoseg predict``'s own per-image code
    (:func:`nanoseg.predict.predict_one`: read -> tiles -> threshold -> clean-up ->
    instances -> particle table), with the uploaded bytes in a temporary folder.
    """

    def __init__(self, predictor, settings: dict, max_pixels: int = MAX_PIXELS):
        self.predictor, self.settings, self.max_pixels = predictor, settings, int(max_pixels)

    @classmethod
    def from_folder(cls, folder, config: dict | None = None) -> "Service":
        """Load a saved model folder (model.keras + nanoseg.json) the way ``nanoseg predict`` does."""
        from nanoseg.predict import load_predictor

        predictor, settings = load_predictor(str(folder))
        return cls(predictor, settings, int((config or {}).get("max_pixels", MAX_PIXELS)))

    def analyze(self, data: bytes, name: str, label: str, pixel_size_nm=None, databar_row=None,
                return_images: bool = True) -> dict:
        """The answer for one image file's bytes."""
        from types import SimpleNamespace

        from nanoseg.predict import predict_one

        with tempfile.TemporaryDirectory(prefix="nanoseg-request-") as tmp:
            src, out = Path(tmp) / "in", Path(tmp) / "out"
            src.mkdir()
            out.mkdir()
            path = src / name
            path.write_bytes(data)
            args = SimpleNamespace(pixel_size=pixel_size_nm, databar_row=databar_row)
            try:
                table, info = predict_one(self.predictor, self.settings, path, out, args)
            except NanosegError as exc:
                raise RequestError(str(exc).replace(str(path), label)) from None
            images = ((out / f"{path.stem}_mask.png").read_bytes(), (out / f"{path.stem}_labels.tif").read_bytes()) \
                if return_images else (None, None)
        return answer(info, table, self.settings["threshold"], *images)

    def predict(self, model_input, return_images: bool = True) -> list[dict]:
        rows = records(model_input)
        checked = [read_upload(r, i, self.max_pixels) for i, r in enumerate(rows)]  # all, before any work
        return [self.analyze(data, name, label, row.get("pixel_size_nm"), _row(row.get("databar_row"), label),
                             bool(return_images)) for row, (data, name, label) in zip(rows, checked)]


def _row(value, label: str):
    """``databar_row`` of a record: None (detect), or a whole number (JSON numbers may arrive as floats)."""
    if value is None or isinstance(value, str):
        return value
    try:
        if float(value) == int(value):
            return int(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise RequestError(f"{label}: databar_row = {value!r} is not a whole number of rows; give e.g. 704 or null.")


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


# ----------------------------------------------------------------------------- commands


def serve_command(args) -> int:
    """``nanoseg serve [--model URI] [--host 127.0.0.1] [--port 5001]``: ``mlflow models serve`` on the project's store."""
    from nanoseg import tracking

    model = args.model or DEFAULT_MODEL
    uri = tracking.tracking_uri()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    with tempfile.TemporaryDirectory(prefix="nanoseg-serve-") as tmp:
        folder = Path(model)
        if folder.is_dir() and (folder / "nanoseg.json").is_file() and not (folder / "MLmodel").is_file():
            model = str(tracking.save_pyfunc(folder, Path(tmp) / "pyfunc"))  # a plain saved model folder
        elif model.startswith("models:/"):
            tracking.check_model_uri(model)
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "-h", args.host, "-p", str(args.port)]
        print(f"serving {args.model or DEFAULT_MODEL} (store {uri}) at http://{args.host}:{args.port}/invocations",
              flush=True)
        return _run_forwarding_signals(cmd, env)


def _run_forwarding_signals(cmd: list[str], env: dict) -> int:
    """Run the server in its own process group; Ctrl+C and SIGTERM stop all of it (uvicorn included)."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum, _frame):
        os.killpg(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_process_group(proc)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except PermissionError:
        return True
    except OSError:  # no such group (or not a valid group id)
        return False
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop ``proc``'s process group (started with ``start_new_session``): SIGTERM, then SIGKILL.

    Returns only when no process of the group is left: ``mlflow models serve`` exits before its
    uvicorn worker has closed the port, so waiting for ``proc`` alone is not enough.
    """
    import time

    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        if not _group_alive(proc.pid):
            break
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()
            if not _group_alive(proc.pid):
                break
            time.sleep(0.2)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def post(url: str, body: dict, timeout: float = 600) -> dict:
    """POST ``body`` as JSON to ``url`` (``/invocations`` appended to a bare address); return the answer."""
    import urllib.error
    import urllib.request

    if not re.search(r"/invocations/?$", url):
        url = url.rstrip("/") + "/invocations"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            text = json.loads(text).get("message", text)
        except ValueError:
            pass
        if text.startswith("Failed to predict data") and "\nError: " in text:
            text = text.split("\nError: ", 1)[1]  # MLflow's prefix repeats the (truncated) request
        raise NanosegError(f"{url}: the server refused the request (HTTP {exc.code}): {text[:2000]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NanosegError(f"{url}: no answer ({reason}); start the server with `nanoseg serve` "
                           "and check the address.") from None


def request_command(args) -> int:
    """``nanoseg request --url URL IMAGE... [--pixel-size X] [--out DIR [--overwrite]]``: print each image's
    summary as JSON; with ``--out`` also save the masks, labels and particles (never over earlier answers
    unless ``--overwrite``, never two images with the same stem: checked before anything is sent)."""
    from nanoseg.micrograph import parse_pixel_size
    from nanoseg.outputs import check_answer_files

    for p in args.images:
        if not Path(p).is_file():
            raise NanosegError(f"{p}: no such image file; check the path.")
    px = parse_pixel_size(args.pixel_size) if getattr(args, "pixel_size", None) else None
    out = Path(args.out) if getattr(args, "out", None) else None
    overwrite = bool(getattr(args, "overwrite", False))
    if out is not None:
        check_answer_files(out, args.images, overwrite)
    reply = post(args.url, make_request(args.images, px, return_images=out is not None))
    results = reply.get("predictions", reply) if isinstance(reply, dict) else reply
    if out is not None:
        save_answers(results, out, overwrite=overwrite, names=[Path(p).name for p in args.images])
    summary = [{"name": r["name"], "unit": r["unit"], "pixel_size_nm": r["pixel_size_nm"], **r["summary"]}
               for r in results]
    print(json.dumps(summary, indent=2))
    return 0


def save_answers(results: list[dict], out: Path, overwrite: bool = False, names: list[str] | None = None) -> None:
    """Write ``<stem>_mask.png``, ``<stem>_labels.tif`` and ``particles.csv`` of the answers to ``out``, each
    file atomically.

    Parameters
    ----------
    results : list of dict
        The server's answers, in the order of the images sent.
    out : Path
        Folder, created if needed.
    overwrite : bool
        Replace files that exist already (otherwise refused, before anything is written).
    names : list of str, optional
        The images' own file names (default: the names in the answers); they name the files.

    Raises
    ------
    NanosegError
        Two images with the same stem, or existing files without ``overwrite`` (:func:`nanoseg.outputs.check_answer_files`).
    """
    import pandas as pd

    from nanoseg.atomic import write_bytes, write_with
    from nanoseg.outputs import check_answer_files

    names = list(names) if names is not None else [r["name"] for r in results]
    check_answer_files(out, names, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, r in zip(names, results):
        stem = Path(name).stem
        if r.get("mask_png"):
            write_bytes(out / f"{stem}_mask.png", base64.b64decode(r["mask_png"]))
            write_bytes(out / f"{stem}_labels.tif", base64.b64decode(r["labels_tif"]))
        rows += r["particles"]
    write_with(out / "particles.csv", lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
