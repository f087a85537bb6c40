"""One micrograph in, its particles out: :func:`analyze`, what ``nanoseg predict``, ``nanoseg serve``, the
app and ``evaluate`` all run.

Pure computation, no file I/O: a :class:`~nanoseg.io.micrograph.Micrograph` (pixels, pixel size, data-bar
row: read from a file or from uploaded bytes) goes through :func:`infer` — brought to the model's polarity
(:mod:`nanoseg.inference.polarity`) and training pixel size (:mod:`nanoseg.inference.rescale`), predicted,
decoded with the model's threshold and post-processing (:func:`nanoseg.postprocess.decode.segment`),
mapped back — and is measured on its own grid with its own pixel size
(:func:`nanoseg.measure.particles.particle_table`). The :class:`Analysis` holds the full-frame maps, the
particle table and the per-image info of ``summary.json``; writing them is
:func:`nanoseg.report.results.write_image_files`'s (or the served answer's, in memory).

Without a pixel size, particles smaller than ``min_area_nm2`` at the model's training pixel size (in px)
are removed, or :data:`DEFAULT_MIN_AREA_PX` when the model records none; the value used is in the info
(``min_area_px``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from nanoseg.config import PostprocessSettings

#: smallest particle kept (px) in an image without a pixel size when the model records no training pixel
#: size: ``postprocess.min_area_nm2`` (200 nm2) at the BAM images' 7.34 nm/px
DEFAULT_MIN_AREA_PX = round(PostprocessSettings().min_area_nm2 / 7.34375**2)


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
        nm2 = float(post["min_area_nm2"])
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
    from nanoseg.inference.polarity import resolve_polarity, to_bright
    from nanoseg.inference.rescale import resample_image, resize_labels, resize_map, scale_factor
    from nanoseg.postprocess.decode import foreground_probability, min_area_px, segment

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


def label_dtype(labels):
    """uint16, or uint32 when there are more instances than uint16 holds (the dtype of ``_labels.tif``)."""
    return np.uint16 if labels.max(initial=0) < 2**16 else np.uint32


@dataclass(eq=False)
class Analysis:
    """What :func:`analyze` made of one micrograph; every map covers the full frame (data-bar rows 0).

    Attributes
    ----------
    micrograph : Micrograph
        The image as analysed (pixels, the pixel size and data-bar row used).
    labels : (H, W) uint16 or uint32
        Instance labels, 0 = background.
    probability : (H, W) float32
        Foreground probability.
    uncertainty : (H, W) float32 or None
        TTA standard deviation (models run with ``tta``).
    spread : (H, W) float32 or None
        Standard deviation of an ensemble's members' foreground probability (``spread=True``).
    table : pandas.DataFrame
        One row per particle (the rows of ``particles.csv``; units in the column names).
    info : dict
        The image's entry of ``summary.json``: size, pixel size and its source, data-bar row, unit, counts,
        zoom and polarity used (and why), minimum area, foreground fraction, seconds, notes.
    """

    micrograph: object
    labels: np.ndarray = field(repr=False)
    probability: np.ndarray = field(repr=False)
    uncertainty: np.ndarray | None = field(repr=False)
    spread: np.ndarray | None = field(repr=False)
    table: object = field(repr=False)
    info: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """uint8 0/255 foreground mask (``_mask.png``)."""
        return np.where(self.labels > 0, 255, 0).astype(np.uint8)


def analyze(predictor, settings: dict, image, scale="auto", polarity="auto", spread: bool = False,
            notes: list | None = None) -> Analysis:
    """Segment and measure one micrograph (no file is read or written).

    Parameters
    ----------
    predictor, settings
        From :func:`nanoseg.inference.loading.load_predictor`.
    image : Micrograph
        From :func:`nanoseg.io.micrograph.read_micrograph` (a file, or uploaded bytes with ``data=``).
    scale, polarity
        Parsed ``--scale`` / ``--polarity`` values (:func:`nanoseg.inference.rescale.parse_scale`,
        :func:`nanoseg.inference.polarity.parse_polarity`); "auto" by default.
    spread : bool
        Also compute an ensemble's member spread.
    notes : list of str, optional
        Messages from reading the image (bit depth, pixel size), kept first in ``info["notes"]``.
    """
    from nanoseg.measure.particles import particle_table

    start = time.perf_counter()
    mg = image
    res = infer(predictor, settings, mg.sample, mg.pixel_size_nm, scale, polarity, spread=bool(spread))
    notes = list(notes or []) + [f"{mg.path.name}: {n}" for n in res["notes"]]
    prob, sample_labels, std, spread_map = res["prob"], res["labels"], res["std"], res["spread"]
    labels = _full(mg, sample_labels, label_dtype(sample_labels))
    probability = _full(mg, prob)
    table = particle_table(labels.astype(np.int32), mg.pixel_size_nm, probability, mg.path.name, mg.databar_row)
    table["inference_zoom"] = res["scale_factor"]
    info = {"image": mg.path.name, "path": str(mg.path), "width": mg.width, "height": mg.height,
            "source_dtype": mg.source_dtype,
            "pixel_size_nm": mg.pixel_size_nm, "pixel_size_source": mg.pixel_size_source,
            "databar_row": mg.databar_row, "unit": table.attrs.get("unit"), "particles": int(len(table)),
            "scale_factor": res["scale_factor"], "scale_note": res["scale_note"], "polarity": res["polarity"],
            "polarity_note": res["polarity_note"], "min_area_px": res["min_area_px"],
            "measurable": int(table["measurable"].sum()) if len(table) else 0,
            "foreground_fraction": float((sample_labels > 0).mean()),
            "mean_uncertainty": None if std is None else float(std.mean()),
            "mean_ensemble_spread": None if spread_map is None else float(spread_map.mean()),
            "seconds": round(time.perf_counter() - start, 2), "notes": notes}
    return Analysis(mg, labels, probability, None if std is None else _full(mg, std),
                    None if spread_map is None else _full(mg, spread_map), table, info)
