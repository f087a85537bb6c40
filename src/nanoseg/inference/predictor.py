"""Inference: probability maps for whole micrographs and the ``nanoseg predict`` command.

:class:`Predictor` runs a Keras model through a traced ``tf.function`` (no
per-call ``model.predict`` overhead) over overlapping tiles
(:func:`nanoseg.inference.tiling.predict_tiled`; images no bigger than a batch of tiles go
through in one mirror-padded pass), optionally with test-time augmentation
(the 8 flips/rotations of the dihedral group) whose spread is a per-pixel
uncertainty. :func:`load_predictor` opens a saved model folder or an MLflow
model URI with its inference settings. :func:`predict_command` segments images,
measures every particle and writes, for each input ``<stem>``::

    <stem>_mask.png         uint8 0/255, input size, data-bar rows 0
    <stem>_labels.tif       uint16 (uint32 if needed) instance labels, 0 = background
    <stem>_overlay.png      particle contours on the image, scale bar in nm (px without pixel size)
    <stem>_uncertainty.tif  float32 TTA standard deviation (only with --tta)
    <stem>_spread.tif       float32 std of an ensemble's members' foreground probability (only with --spread)
    <stem>_rois.zip         Fiji/ImageJ ROI set, one polygon per particle named by its id (only with --roi)

and for the run ``particles.csv`` (one row per particle, units in the column
names, ``inference_zoom``), ``summary.json`` and ``psd.png`` (ECD distribution of the measurable
particles). With ``--scale auto`` (the default) an image whose pixel size differs by more than 10 %
from the model's training pixel size is resampled to it for inference and the labels mapped back
(:mod:`nanoseg.inference.rescale`); particles are always measured on the input grid with its own pixel size.
With ``--polarity auto`` (the default) images of dark particles on a bright background are
recognised and inverted before inference (:mod:`nanoseg.inference.polarity`). Output goes to a temporary folder next to ``--out`` that is renamed
into place at the end, so an interrupted run leaves nothing half-written; every file in it is written
atomically (:mod:`nanoseg.atomic`) and the folder carries a ``.nanoseg-output`` marker listing them:
``--overwrite`` replaces only such a folder, never one holding other files or the inputs
(:mod:`nanoseg.io.outputs`).

Every argument is checked, and every image's header (:func:`nanoseg.io.micrograph.probe_image`: pixel
limit ``--max-pixels``, stacks, decompression bombs), before the model is loaded. An image that fails
is reported on one line and skipped; the others are analysed, ``summary.json`` lists the failures
(``failed``) and the command exits with status 1. Without a pixel size, particles smaller than
``min_area_nm2`` at the model's training pixel size (in px) are removed, or :data:`DEFAULT_MIN_AREA_PX`
when the model records none; the value used is in ``summary.json`` (``min_area_px``).
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nanoseg.atomic import write_json, write_with
from nanoseg.errors import NanosegError
from nanoseg.io.outputs import check_replaceable, replace_folder
from nanoseg.inference.tiling import predict_tiled

DEFAULTS = {"tile": 512, "overlap": 64, "batch": 4, "threshold": 0.5, "min_area_nm2": 200.0, "tta": False,
            "precision": "auto"}
#: smallest particle kept (px) in an image without a pixel size when the model records no training pixel
#: size: 200 nm2 at the BAM images' 7.34 nm/px
DEFAULT_MIN_AREA_PX = 4
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
#: the files ``nanoseg predict`` writes per image, after its stem
IMAGE_OUTPUTS = ("_mask.png", "_labels.tif", "_overlay.png", "_uncertainty.tif", "_spread.tif", "_rois.zip")


class Predictor:
    """Probability maps of whole images from a segmentation model.

    Parameters
    ----------
    model : keras.Model
        Input (N, H, W, 1) grayscale in [0, 1] (H, W divisible by 32), output
        (N, H, W, C) probabilities; precision handled inside the model.
    tile : int
        Tile side, a multiple of 32.
    overlap : int
        Overlap between tiles in px (half of it is the mirrored margin).
    batch : int
        Tiles per forward pass.
    tta : bool
        :meth:`probability` returns the mean over the 8 dihedral transforms.
    single_pass : bool
        Predict an image in one rectangular pass (mirrored margins, sides
        rounded up to multiples of 32) when it has no more pixels than a batch
        of tiles (``batch * tile**2``): same memory, no tile overlap to compute
        twice (a 1024x768 image with tile 512, batch 4: one 832x1088 pass
        instead of six 512x512 tiles, about 2x faster). False always tiles.
        Tiles along an axis never exceed what the image needs.
    """

    def __init__(self, model, tile=512, overlap=64, batch=4, tta=False, single_pass=True):
        import tensorflow as tf

        tile, overlap, batch = int(tile), int(overlap), int(batch)
        if tile < 32 or tile % 32:
            raise NanosegError(f"predict.tile = {tile}: the tile side must be a positive multiple of 32.")
        if not 0 <= overlap < tile:
            raise NanosegError(f"predict.overlap = {overlap}: must be at least 0 and smaller than the tile ({tile}).")
        if batch < 1:
            raise NanosegError(f"predict.batch = {batch}: must be at least 1.")
        self.model, self.tile, self.overlap, self.batch, self.tta = model, tile, overlap, batch, bool(tta)
        self.single_pass = bool(single_pass)
        self._forward = tf.function(
            lambda x: tf.cast(model(x, training=False), tf.float32),
            input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)],
        )

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        """Model output (N, h, w, C) float32 for tiles (N, h, w, 1)."""
        return self._forward(np.asarray(tiles, dtype=np.float32)).numpy()

    def _tile_for(self, shape) -> tuple[int, int]:
        rows, cols = (32 * math.ceil((n + self.overlap) / 32) for n in shape[:2])
        if self.single_pass and rows * cols <= self.batch * self.tile**2:
            return rows, cols
        return min(rows, self.tile), min(cols, self.tile)

    def _single(self, image: np.ndarray) -> np.ndarray:
        prob = predict_tiled(self.predict_batch, image, self._tile_for(image.shape), self.overlap, self.batch)
        if prob.ndim == 3 and prob.shape[2] == 1:
            prob = prob[..., 0]
        return np.clip(prob, 0.0, 1.0)

    @staticmethod
    def _image(image) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim != 2 or min(image.shape) < 1:
            raise NanosegError(f"expected a 2-D grayscale image, got an array of shape {image.shape}.")
        return image

    def probability(self, image: np.ndarray) -> np.ndarray:
        """Probability map of a grayscale image in [0, 1].

        Returns (H, W) float32 in [0, 1] ((H, W, C) for multi-channel models);
        the TTA mean when the predictor was made with ``tta=True``.
        """
        image = self._image(image)
        if self.tta:
            return self.probability_with_uncertainty(image)[0]
        return self._single(image)

    @property
    def members(self) -> int:
        """How many models this ensemble averages (0 for a single model)."""
        from nanoseg.model.candidates import member_outputs

        return len(member_outputs(self.model))

    def probability_with_spread(self, image) -> tuple[np.ndarray, np.ndarray]:
        """An ensemble's mean output and the members' spread, in one pass (the same cost as :meth:`probability`).

        Returns
        -------
        mean : ndarray
            Like :meth:`probability` (without TTA).
        spread : (H, W) ndarray
            Per-pixel standard deviation of the members' foreground probabilities: a second
            uncertainty map beside the TTA one (members disagree where the training folds did).
        """
        import keras
        import tensorflow as tf

        from nanoseg.model.candidates import member_outputs
        from nanoseg.postprocess.decode import foreground_probability

        outs = member_outputs(self.model)
        if not outs:
            raise NanosegError("--spread needs an ensemble model (train.candidate: ensemble); this model is a single "
                               "network: use --tta for an uncertainty map.")
        if not hasattr(self, "_members_fn"):
            sub = keras.Model(self.model.input, outs)
            self._members_fn = tf.function(lambda x: tf.concat([tf.cast(o, tf.float32) for o in sub(x, training=False)],
                                                               axis=-1),
                                           input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
        image = self._image(image)
        stacked = predict_tiled(lambda t: self._members_fn(np.asarray(t, np.float32)).numpy(), image,
                                self._tile_for(image.shape), self.overlap, self.batch)
        k = len(outs)
        per = np.clip(stacked.reshape(*stacked.shape[:2], k, -1), 0.0, 1.0)
        mean = per.mean(axis=2)
        if mean.shape[-1] == 1:
            mean = mean[..., 0]
        fg = np.stack([foreground_probability(per[:, :, i, :] if per.shape[-1] > 1 else per[:, :, i, 0])
                       for i in range(k)])
        return mean.astype(np.float32), fg.std(axis=0).astype(np.float32)

    def probability_with_uncertainty(self, image) -> tuple[np.ndarray, np.ndarray]:
        """Test-time augmentation over the 8 dihedral transforms (flips x rot90).

        Returns
        -------
        mean, std : ndarray
            float32 maps like :meth:`probability`; ``std`` (per-pixel standard
            deviation over the 8 predictions) is an uncertainty estimate.
        """
        image = self._image(image)
        mean = m2 = None
        n = 0
        for k in range(4):  # running mean and variance (Welford), float32: not 8 maps in memory at once
            for flip in (False, True):
                view = np.rot90(image, k)
                view = view[:, ::-1] if flip else view
                pred = self._single(np.ascontiguousarray(view))
                pred = np.rot90(pred[:, ::-1] if flip else pred, -k)
                n += 1
                if mean is None:
                    mean, m2 = np.array(pred, np.float32), np.zeros(pred.shape, np.float32)
                    continue
                delta = pred - mean
                mean += delta / np.float32(n)
                m2 += delta * (pred - mean)
        return mean, np.sqrt(np.maximum(m2 / np.float32(n), 0, out=m2), out=m2)


def resolve_settings(metadata: dict, overrides: dict | None = None) -> dict:
    """Inference settings: built-in defaults < the model's metadata < overrides (the command line).

    Nothing comes from a ``params.yaml`` in the working folder: a model runs the same wherever it is
    used (the settings it was validated with travel in its ``nanoseg.json``).

    Returns a dict with ``tile, overlap, batch, tta, precision, threshold`` and
    ``postprocess`` (``opening_radius, min_area_nm2, split, min_distance_px``).
    Overrides that are None are ignored.
    """
    from nanoseg.postprocess.decode import DEFAULT_POST

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(DEFAULTS) - {"postprocess"}
    if unknown:
        raise TypeError(f"unknown predictor settings {sorted(unknown)}; use some of {sorted(DEFAULTS)} or postprocess")
    settings = dict(DEFAULTS)
    settings.update({k: metadata[k] for k in ("tile", "overlap", "threshold") if metadata.get(k) is not None})
    post = {**DEFAULT_POST, "min_area_nm2": settings.pop("min_area_nm2"), **(metadata.get("postprocess") or {})}
    if "min_area_nm2" in overrides:
        post["min_area_nm2"] = overrides.pop("min_area_nm2")
    post.update(overrides.pop("postprocess", {}))
    settings.update(overrides)
    settings["postprocess"] = post
    settings["threshold"] = float(settings["threshold"])
    settings["tta"] = bool(settings["tta"])
    return settings


def _model_folder(model_ref) -> Path:
    ref = str(model_ref)
    if _URI.match(ref):
        try:
            from nanoseg.tracking import download_model
        except ImportError as exc:
            raise NanosegError(f"{ref}: MLflow model URIs need nanoseg.tracking and MLflow ({exc}); "
                               "pass a saved model folder instead.") from None
        return Path(download_model(ref))
    folder = Path(ref)
    if not folder.exists():
        raise NanosegError(
            f"{ref}: no such model folder or MLflow URI; pass --model with a folder written by training "
            "(e.g. models/final after `dvc repro`) or a URI such as models:/nanoseg@champion or runs:/<id>/model."
        )
    return folder


def load_predictor(model_ref, **overrides):
    """Open a model for inference.

    Parameters
    ----------
    model_ref : str or Path
        A folder written by :func:`nanoseg.model.network.save_model`, or an MLflow URI
        (``models:/nanoseg@champion``, ``runs:/<id>/model``, ...), downloaded
        with :func:`nanoseg.tracking.download_model`.
    **overrides
        ``tile, overlap, batch, tta, threshold, min_area_nm2, postprocess,
        precision`` ("auto": run the model in the policy that is fast on this
        machine, see :func:`nanoseg.model.network.configure_precision`; "keep": as saved).

    Returns
    -------
    predictor : Predictor
    metadata : dict
        The model's ``nanoseg.json`` updated with the resolved settings
        (see :func:`resolve_settings`), ``model_ref`` and ``model_folder``.
    """
    from nanoseg.model.network import load_model, preferred_policy, with_policy

    folder = _model_folder(model_ref)
    model, meta = load_model(folder)
    settings = resolve_settings(meta, overrides)
    if settings["precision"] != "keep":
        model = with_policy(model, preferred_policy(settings["precision"]))
    predictor = Predictor(model, tile=settings["tile"], overlap=settings["overlap"], batch=settings["batch"],
                          tta=settings["tta"])
    return predictor, {**meta, **settings, "model_ref": str(model_ref), "model_folder": str(folder)}


# --------------------------------------------------------------------------- outputs


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


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    write_with(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _write_tif(path: Path, array: np.ndarray) -> None:
    import tifffile

    write_with(path, lambda tmp: tifffile.imwrite(tmp, array))


def _label_dtype(labels):
    return np.uint16 if labels.max(initial=0) < 2**16 else np.uint32


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _ecd_values(table, unit: str) -> np.ndarray:
    measurable = table[table["measurable"].astype(bool)] if len(table) else table
    if unit == "nm":
        return measurable["ecd_nm"].to_numpy(float)
    return np.sqrt(4 * measurable["area_px"].to_numpy(float) / np.pi)


def pooled_ecd(tables, infos) -> tuple[np.ndarray, str]:
    """The ECDs of the measurable particles of several images and their unit: nm when every image has a
    pixel size, else px (``nanoseg predict``'s summary and psd.png, the app's PSD)."""
    unit = "nm" if all(i["pixel_size_nm"] for i in infos) else "px"
    return np.concatenate([np.zeros(0), *(_ecd_values(t, unit) for t in tables)]), unit


def post_without_pixel_size(post: dict, model_px_nm: float | None) -> tuple[dict, str]:
    """Post-processing settings for an image without a pixel size, whose ``min_area_nm2`` cannot be converted.

    The minimum area becomes ``min_area_px``: as given in ``post``, else ``min_area_nm2`` at the model's
    training pixel size (the scale the image is assumed to be at), else :data:`DEFAULT_MIN_AREA_PX`.

    Returns
    -------
    (dict, str)
        ``post`` with ``min_area_px`` set, and a sentence saying which value is used and why.
    """
    if post.get("min_area_px") is not None:
        area, why = int(post["min_area_px"]), "postprocess min_area_px"
    elif model_px_nm:
        nm2 = float(post.get("min_area_nm2", 0.0))
        area, why = int(round(nm2 / float(model_px_nm) ** 2)), f"{nm2:g} nm2 at the model's {model_px_nm:.3g} nm/px"
    else:
        area, why = DEFAULT_MIN_AREA_PX, "default; the model records no training pixel size"
    return {**post, "min_area_px": area}, f"particles smaller than {area} px removed ({why})"


def infer(predictor, settings: dict, sample: np.ndarray, pixel_size_nm=None, scale="auto", polarity="auto",
          spread: bool = False) -> dict:
    """One sample area (H x W, in [0, 1]) -> probability and instance labels, the way every user path runs a
    model (``nanoseg predict``, the served model, ``evaluate``).

    The image is brought to what the model was trained on — bright particles (:mod:`nanoseg.inference.polarity`)
    at its training pixel size (:mod:`nanoseg.inference.rescale`) — predicted (with TTA when ``settings["tta"]``),
    decoded with the model's threshold and post-processing, and mapped back to the input grid.

    Returns
    -------
    dict
        ``prob`` (H x W foreground probability), ``labels`` (H x W instances), ``std`` (TTA spread or None),
        ``spread`` (ensemble spread or None), ``scale_factor``, ``scale_note``, ``polarity``, ``polarity_note``,
        ``min_area_px`` (the minimum particle area used, on the inference grid) and ``notes`` (warnings for the user).
    """
    from nanoseg.postprocess.decode import min_area_px, segment
    from nanoseg.inference.polarity import resolve_polarity, to_bright
    from nanoseg.postprocess.decode import foreground_probability
    from nanoseg.inference.rescale import resample_image, resize_labels, resize_map, scale_factor

    notes = []
    model_px = (settings.get("training_scale") or {}).get("pixel_size_nm")
    factor, scale_note = scale_factor(pixel_size_nm, model_px, scale)
    if factor == 1.0 and not pixel_size_nm and model_px and scale in (None, "auto"):
        notes.append(scale_note)
    pol, polarity_note = resolve_polarity(sample, polarity)
    if "ambiguous" in polarity_note:
        notes.append(polarity_note)
    work = resample_image(to_bright(sample, pol), factor)
    std = spread_map = None
    if settings["tta"]:
        prob, std = predictor.probability_with_uncertainty(work)
        if spread:
            spread_map = predictor.probability_with_spread(work)[1]
    elif spread:
        prob, spread_map = predictor.probability_with_spread(work)
    else:
        prob = predictor.probability(work)
    work_px = pixel_size_nm / factor if pixel_size_nm else None
    post = settings["postprocess"]
    if not work_px:  # min_area_nm2 cannot be converted: a minimum area in px instead of none at all
        post, area_note = post_without_pixel_size(post, model_px)
        if scale_note in notes:  # one sentence about the missing pixel size
            notes[notes.index(scale_note)] = f"{scale_note}; {area_note}"
        else:
            notes.insert(0, f"no pixel size: {area_note}")
    _, labels = segment(prob, settings["threshold"], post, work_px)
    if prob.ndim == 3:  # instance variant: decoded above; report the foreground probability (and its spread)
        prob, std = foreground_probability(prob), None if std is None else std[..., 0]
    if factor != 1.0:  # back to the input grid: sizes are measured with the input's own pixel size
        labels = resize_labels(labels, sample.shape)
        prob = resize_map(prob, sample.shape)
        std = None if std is None else resize_map(std, sample.shape)
        spread_map = None if spread_map is None else resize_map(spread_map, sample.shape)
    return {"prob": prob, "labels": labels, "std": std, "spread": spread_map, "scale_factor": factor,
            "scale_note": scale_note, "polarity": pol, "polarity_note": polarity_note,
            "min_area_px": min_area_px(post, work_px), "notes": notes}


def _full(mg, sample_map: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A map of the sample area placed in a full-frame array (data-bar rows 0)."""
    full = np.zeros(mg.shape, dtype=dtype)
    full[: mg.databar_row] = sample_map
    return full


def _read(path, args):
    """The micrograph and the notes its reading raised (bit depth, missing or implausible pixel size)."""
    from nanoseg.io.micrograph import read_micrograph

    notes: list[str] = []  # collected, not warned: no process-wide warning filters (the server runs this in threads)
    mg = read_micrograph(path, pixel_size=args.pixel_size, databar_row=args.databar_row,
                         max_pixels=getattr(args, "max_pixels", None), notes=notes)
    return mg, notes


def predict_one(predictor, settings, path, out_dir, args):
    """Segment and measure one image; write its files (atomically); return (table, info)."""
    from nanoseg.measure.particles import particle_table

    start = time.perf_counter()
    mg, notes = _read(path, args)
    res = infer(predictor, settings, mg.sample, mg.pixel_size_nm, getattr(args, "scale", "auto"),
                getattr(args, "polarity", "auto"), spread=bool(getattr(args, "spread", False)))
    notes += [f"{mg.path.name}: {n}" for n in res["notes"]]
    prob, sample_labels, std, spread, factor = res["prob"], res["labels"], res["std"], res["spread"], res["scale_factor"]
    labels = _full(mg, sample_labels, _label_dtype(sample_labels))
    stem = mg.path.stem
    _write_png(out_dir / f"{stem}_mask.png", np.where(labels > 0, 255, 0).astype(np.uint8))
    _write_tif(out_dir / f"{stem}_labels.tif", labels)
    _write_png(out_dir / f"{stem}_overlay.png", overlay_image(mg.pixels, labels, mg.pixel_size_nm, mg.databar_row))
    if std is not None:
        _write_tif(out_dir / f"{stem}_uncertainty.tif", _full(mg, std))
    if spread is not None:
        _write_tif(out_dir / f"{stem}_spread.tif", _full(mg, spread))
    table = particle_table(labels.astype(np.int32), mg.pixel_size_nm, _full(mg, prob), mg.path.name, mg.databar_row)
    table["inference_zoom"] = factor
    if getattr(args, "roi", False):
        from nanoseg.io.rois import write_rois

        write_rois(out_dir / f"{stem}_rois.zip", labels, table)
    info = {"image": mg.path.name, "path": str(mg.path), "width": mg.width, "height": mg.height,
            "source_dtype": mg.source_dtype,
            "pixel_size_nm": mg.pixel_size_nm, "pixel_size_source": mg.pixel_size_source,
            "databar_row": mg.databar_row, "unit": table.attrs.get("unit"), "particles": int(len(table)),
            "scale_factor": factor, "scale_note": res["scale_note"], "polarity": res["polarity"],
            "polarity_note": res["polarity_note"], "min_area_px": res["min_area_px"],
            "measurable": int(table["measurable"].sum()) if len(table) else 0,
            "foreground_fraction": float((sample_labels > 0).mean()),
            "mean_uncertainty": None if std is None else float(std.mean()),
            "mean_ensemble_spread": None if spread is None else float(spread.mean()),
            "seconds": round(time.perf_counter() - start, 2), "notes": notes}
    return table, info


def _check_arguments(args) -> list[Path]:
    """Everything that can be checked without the model and without decoding an image; parsed values are
    stored back into ``args``. Returns the input paths."""
    from nanoseg.io.micrograph import image_options
    from nanoseg.io.outputs import duplicate_stems
    from nanoseg.inference.polarity import parse_polarity
    from nanoseg.inference.rescale import parse_scale

    paths = [Path(p) for p in args.images]
    args.pixel_size, args.databar_row, args.max_pixels = image_options(args)
    args.scale = parse_scale(getattr(args, "scale", "auto"))
    args.polarity = parse_polarity(getattr(args, "polarity", "auto"))
    check_replaceable(Path(args.out), paths, bool(getattr(args, "overwrite", False)))
    dupes = duplicate_stems(paths)
    if dupes:
        raise NanosegError(f"several input images are named {dupes}; their outputs would overwrite each other. "
                           "Predict them in separate runs (different --out).")
    return paths


def _report_failure(failures: list, path: Path, exc: BaseException, many: bool) -> None:
    from tqdm import tqdm

    from nanoseg.errors import one_line

    if isinstance(exc, MemoryError):
        message = f"{path}: not enough memory to analyse this image; lower --max-pixels or split the image."
    elif isinstance(exc, NanosegError):
        message = one_line(exc)
    else:  # a bug or an unforeseen file: the other images are still analysed
        message = f"{path}: unexpected error ({type(exc).__name__}: {one_line(exc)}); please report it with the file."
    failures.append({"image": path.name, "path": str(path), "error": message})
    if many:
        tqdm.write(f"nanoseg: error: {message}", file=sys.stderr)


def _probe_all(paths: list[Path], max_pixels: int, failures: list) -> list[Path]:
    """The inputs whose header passes :func:`nanoseg.io.micrograph.probe_image`; the others go to ``failures``."""
    from nanoseg.io.micrograph import probe_image

    good = []
    for path in paths:
        try:
            probe_image(path, max_pixels)
            good.append(path)
        except NanosegError as exc:
            _report_failure(failures, path, exc, len(paths) > 1)
    return good


def _none_left(paths: list[Path], failures: list) -> NanosegError:
    if len(paths) == 1:
        return NanosegError(failures[0]["error"])
    return NanosegError(f"none of the {len(paths)} images could be analysed (see the errors above); nothing was "
                        "written.")


def _analyse_all(predictor, settings, paths, tmp: Path, args, failures: list, many: bool):
    from tqdm import tqdm

    tables, infos = [], []
    for path in tqdm(paths, desc="nanoseg predict", unit="image"):
        try:
            table, info = predict_one(predictor, settings, path, tmp, args)
        except Exception as exc:  # noqa: BLE001 - one bad image does not stop the others (MemoryError included)
            for suffix in IMAGE_OUTPUTS:  # what it wrote before failing
                (tmp / f"{path.stem}{suffix}").unlink(missing_ok=True)
            _report_failure(failures, path, exc, many)
            continue
        for note in info["notes"]:
            tqdm.write(f"nanoseg: warning: {note}", file=sys.stderr)
        tables.append(table)
        infos.append(info)
    return tables, infos


def _write_run_files(tmp: Path, tables, infos, failures, settings, args) -> dict:
    import pandas as pd

    from nanoseg import __version__
    from nanoseg.measure.distribution import plot_psd, size_distribution
    from nanoseg.io.outputs import write_marker

    ecd, unit = pooled_ecd(tables, infos)
    particles = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    write_with(tmp / "particles.csv", lambda f: particles.to_csv(f, index=False))
    plot_psd({"ECD (measurable particles)": ecd}, tmp / "psd.png", unit=unit,
             title=f"{len(ecd)} measurable particles in {len(infos)} image(s)")
    summary = {
        "nanoseg_version": __version__, "model": str(args.model), "variant": settings.get("variant"),
        "model_run_id": settings.get("mlflow_run_id"), "threshold": settings["threshold"],
        "postprocess": settings["postprocess"], "tile": settings["tile"], "overlap": settings["overlap"],
        "tta": settings["tta"], "unit": unit, "scale": str(getattr(args, "scale", "auto")),
        "polarity": getattr(args, "polarity", "auto"),
        "model_pixel_size_nm": (settings.get("training_scale") or {}).get("pixel_size_nm"),
        "unit_note": "sizes in nm" if unit == "nm" else
        "sizes in px: no pixel size for at least one image (give --pixel-size to measure in nm)",
        "n_images": len(infos), "n_particles": int(sum(i["particles"] for i in infos)),
        "n_measurable": int(len(ecd)), "n_failed": len(failures),
        "ecd_distribution": size_distribution(ecd, unit=unit),
        "images": infos, "failed": failures,
    }
    write_json(tmp / "summary.json", _jsonable(summary))
    write_marker(tmp, "nanoseg predict", __version__)
    return summary


def predict_command(args) -> int:
    """``nanoseg predict IMAGES... --model M --out DIR [--overwrite] [--pixel-size X] [--databar-row N] [--tta]
    [--max-pixels N]``.

    See the module docstring for the files written. Post-processing settings
    come from the model's ``nanoseg.json`` (never from a params.yaml in the working folder).
    Arguments and image headers are checked before the model is loaded.

    Returns
    -------
    int
        0 when every image was analysed; 1 when some were skipped (listed on stderr and in
        ``summary.json`` ``failed``).

    Raises
    ------
    NanosegError
        For bad arguments, an output folder that must not be replaced, or when no image could be analysed
        (nothing is written then).
    """
    paths = _check_arguments(args)
    out, many, failures = Path(args.out), len(paths) > 1, []
    readable = _probe_all(paths, args.max_pixels, failures)
    if not readable:
        raise _none_left(paths, failures)
    predictor, settings = load_predictor(args.model, tta=True if getattr(args, "tta", False) else None)
    if getattr(args, "spread", False) and not predictor.members:
        raise NanosegError(f"{args.model}: --spread needs an ensemble model (train.candidate: ensemble); this one is "
                           "a single network: use --tta for an uncertainty map.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tables, infos = _analyse_all(predictor, settings, readable, tmp, args, failures, many)
        if not infos:
            raise _none_left(paths, failures)
        order = {str(p): i for i, p in enumerate(paths)}
        failures.sort(key=lambda f: order[f["path"]])  # in the order given
        summary = _write_run_files(tmp, tables, infos, failures, settings, args)
        check_replaceable(out, paths, bool(getattr(args, "overwrite", False)))  # still ours after the run?
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{len(infos)} image(s), {summary['n_particles']} particles ({summary['n_measurable']} measurable) -> {out}/")
    if failures:
        print(f"nanoseg: {len(failures)} of {len(paths)} images failed and were skipped: "
              f"{', '.join(f['image'] for f in failures)} (summary.json: failed)", file=sys.stderr)
        return 1
    return 0
