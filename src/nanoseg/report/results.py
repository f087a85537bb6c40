"""Writing results: what ``nanoseg predict`` (and the app's downloads) put in a folder, and the same
images encoded in memory for the served answer.

Per image ``<stem>`` (:func:`write_image_files`)::

    <stem>_mask.png         uint8 0/255, input size, data-bar rows 0
    <stem>_labels.tif       uint16 (uint32 if needed) instance labels, 0 = background
    <stem>_overlay.png      particle contours on the image, scale bar in nm (px without pixel size)
    <stem>_uncertainty.tif  float32 TTA standard deviation (models run with TTA)
    <stem>_spread.tif       float32 std of an ensemble's members' foreground probability (with spread)
    <stem>_rois.zip         Fiji/ImageJ ROI set, one polygon per particle named by its id (with roi)

and for the run (:func:`write_run_files`) ``particles.csv`` (one row per particle, units in the column
names, ``inference_zoom``), ``summary.json`` (:func:`run_summary`) and ``psd.png`` (ECD distribution of the
measurable particles). Every file is written atomically (:mod:`nanoseg.atomic`); the PNG and TIFF bytes are
those of :func:`png_bytes` / :func:`tif_bytes`, which the served answer carries.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from nanoseg.atomic import write_bytes, write_json, write_with
from nanoseg.measure.distribution import plot_psd, pooled_ecd, size_distribution

#: the files ``nanoseg predict`` writes per image, after its stem
IMAGE_OUTPUTS = ("_mask.png", "_labels.tif", "_overlay.png", "_uncertainty.tif", "_spread.tif", "_rois.zip")


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8 gray or RGB) as a PNG file's bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def tif_bytes(array: np.ndarray) -> bytes:
    """``array`` as a TIFF file's bytes (tifffile, uncompressed)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def jsonable(value):
    """``value`` with numpy scalars as Python numbers, non-finite floats as None and paths as strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_image_files(analysis, out_dir: Path, roi: bool = False) -> list[Path]:
    """Write one :class:`~nanoseg.inference.analyze.Analysis`'s files (see the module docstring) to
    ``out_dir``; returns them."""
    from nanoseg.report.overlays import overlay_image

    mg, stem, out_dir = analysis.micrograph, analysis.micrograph.path.stem, Path(out_dir)
    files = {f"{stem}_mask.png": png_bytes(analysis.mask), f"{stem}_labels.tif": tif_bytes(analysis.labels),
             f"{stem}_overlay.png": png_bytes(overlay_image(mg.pixels, analysis.labels, mg.pixel_size_nm,
                                                            mg.databar_row))}
    if analysis.uncertainty is not None:
        files[f"{stem}_uncertainty.tif"] = tif_bytes(analysis.uncertainty)
    if analysis.spread is not None:
        files[f"{stem}_spread.tif"] = tif_bytes(analysis.spread)
    written = []
    for name, data in files.items():
        write_bytes(out_dir / name, data)
        written.append(out_dir / name)
    if roi:
        from nanoseg.io.rois import write_rois

        write_rois(out_dir / f"{stem}_rois.zip", analysis.labels, analysis.table)
        written.append(out_dir / f"{stem}_rois.zip")
    return written


def unit_note(unit: str, how: str = "give --pixel-size") -> str:
    return "sizes in nm" if unit == "nm" else \
        f"sizes in px: no pixel size for at least one image ({how} to measure in nm)"


def run_summary(tables, infos, failures, settings: dict, model, scale="auto", polarity="auto",
                written_by: str | None = None, how: str = "give --pixel-size") -> dict:
    """``summary.json`` of a run: nanoseg version, the model and its settings, the pooled ECD distribution of
    the measurable particles (:func:`nanoseg.measure.distribution.pooled_ecd`), every image's info and the
    failures."""
    from nanoseg import __version__

    ecd, unit = pooled_ecd(tables, infos)
    return {
        "nanoseg_version": __version__, **({"written_by": written_by} if written_by else {}),
        "model": str(model), "variant": settings.get("variant"),
        "model_run_id": settings.get("mlflow_run_id"), "threshold": settings["threshold"],
        "postprocess": settings["postprocess"], "tile": settings["tile"], "overlap": settings["overlap"],
        "tta": settings["tta"], "unit": unit, "scale": str(scale), "polarity": polarity,
        "model_pixel_size_nm": (settings.get("training_scale") or {}).get("pixel_size_nm"),
        "unit_note": unit_note(unit, how),
        "n_images": len(infos), "n_particles": int(sum(i["particles"] for i in infos)),
        "n_measurable": int(len(ecd)), "n_failed": len(failures),
        "ecd_distribution": size_distribution(ecd, unit=unit),
        "images": infos, "failed": failures,
    }


def particles_frame(tables):
    """The particle tables of several images as one (``particles.csv``)."""
    import pandas as pd

    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def plot_run_psd(tables, infos, path: Path) -> Path:
    """``psd.png``: the pooled ECD distribution of the measurable particles."""
    ecd, unit = pooled_ecd(tables, infos)
    return plot_psd({"ECD (measurable particles)": ecd}, path, unit=unit,
                    title=f"{len(ecd)} measurable particles in {len(infos)} image(s)")


def write_run_files(folder: Path, tables, infos, summary: dict) -> None:
    """``particles.csv``, ``psd.png`` and ``summary.json`` (``summary`` from :func:`run_summary`) in ``folder``."""
    particles = particles_frame(tables)
    write_with(folder / "particles.csv", lambda f: particles.to_csv(f, index=False))
    plot_run_psd(tables, infos, folder / "psd.png")
    write_json(folder / "summary.json", jsonable(summary))
