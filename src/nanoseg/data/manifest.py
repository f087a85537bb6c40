"""The dataset's manifest: image/mask pairing, the manifest of the ``prepare`` stage, and loading the pairs.

Importing the raw data under DVC is :mod:`nanoseg.data.dvc_import`'s, the train/test split and folds
:mod:`nanoseg.data.split`'s, the held-out test set :mod:`nanoseg.data.heldout`'s, the training crops
:mod:`nanoseg.model.input_pipeline`'s.

Layout (the original BAM ``Datasets/`` layout, folder names from ``params.yaml``)::

    data/Electron Microscopy Images/SEM/NNNNNNN.tif
    data/Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected/NNNNNNN_m.tif
    data/Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected_2Classes/NNNNNNN_cm.tif

``data/`` holds only the raw, byte-identical dataset (its licence forbids
modification); it is tracked by ``data.dvc`` (a ``dvc import-url`` of the
configured source). Everything derived goes to the ``prepare`` stage's output
folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nanoseg.atomic import write_json, write_with
from nanoseg.config import resolve
from nanoseg.data.split import split_samples
from nanoseg.errors import NanosegError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


# ----------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class Sample:
    """One micrograph and the paths of its masks (``None`` where absent)."""

    stem: str
    image: Path
    mask: Path | None
    class_mask: Path | None


def list_images(data_dir: Path, params: dict) -> list[Path]:
    folder = Path(data_dir) / params["data"]["images"]
    if not folder.is_dir():
        raise NanosegError(
            f"{folder}: image folder not found. Run `make data` (or `nanoseg data`) to import the dataset, "
            "or fix data.images in params.yaml."
        )
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise NanosegError(f"{folder}: the dataset folder holds no images (.tif/.tiff/.png); nothing to prepare.")
    return images


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def pair_samples(data_dir: str | os.PathLike, params: dict) -> list[Sample]:
    """Pair each image with its manual mask ``<stem>_m`` and class mask ``<stem>_cm``."""
    d = params["data"]
    data_dir = Path(data_dir)
    samples = []
    for image in list_images(data_dir, params):
        samples.append(
            Sample(
                stem=image.stem,
                image=image,
                mask=_find(data_dir / d["masks"], image.stem + d["mask_suffix"]),
                class_mask=_find(data_dir / d["class_masks"], image.stem + d["class_mask_suffix"]),
            )
        )
    return samples


# ----------------------------------------------------------------------------- manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_sample(sample: Sample, params: dict) -> dict:
    """One manifest row: what the image and its masks hold (reads pixels)."""
    from skimage.measure import label

    from nanoseg.io.micrograph import read_image_array, read_micrograph

    d = params["data"]
    databar = None if d["databar_row"] in (None, "auto") else int(d["databar_row"])
    mg = read_micrograph(sample.image, pixel_size=d["pixel_size_nm"], databar_row=databar)
    crop = mg.crop_rows(int(d["crop_multiple"]))
    root = Path(params["_root"])

    def rel(p):
        return os.path.relpath(p, root) if p else ""

    row = {
        "stem": sample.stem,
        "image_path": rel(sample.image),
        "mask_path": rel(sample.mask),
        "class_mask_path": rel(sample.class_mask),
        "width": mg.width,
        "height": mg.height,
        "source_dtype": mg.source_dtype,
        "databar_row": mg.databar_row,
        "crop_rows": crop,
        "pixel_size_nm": mg.pixel_size_nm if mg.pixel_size_nm is not None else np.nan,
        "pixel_size_source": mg.pixel_size_source,
        "image_sha256": _sha256(sample.image),
        "mask_present": sample.mask is not None,
        "mask_width": np.nan,
        "mask_height": np.nan,
        "mask_shape_ok": False,
        "mask_values": "",
        "foreground_fraction": np.nan,
        "n_instances": 0,
        "class_mask_present": sample.class_mask is not None,
        "class_mask_rows_ok": True,
    }
    if sample.mask is not None:
        mask = read_image_array(sample.mask)
        values = np.unique(mask)
        row.update(
            mask_width=mask.shape[1],
            mask_height=mask.shape[0],
            mask_shape_ok=mask.shape == (mg.height, mg.width),
            mask_values=",".join(str(int(v)) for v in values[:16]) + ("..." if len(values) > 16 else ""),
        )
        fg = mask[:crop] > 0
        row["foreground_fraction"] = float(fg.mean()) if fg.size else np.nan
        row["n_instances"] = int(label(fg, connectivity=1).max())
    if sample.class_mask is not None:
        cm = read_image_array(sample.class_mask)
        row["class_mask_rows_ok"] = cm.shape[0] >= crop and cm.shape[1] == mg.width
    return row


def build_manifest(samples: list[Sample], split: dict, params: dict, progress: bool = True) -> pd.DataFrame:
    """The manifest table: one row per image, with split (train/test) and fold (-1 for test)."""
    from tqdm import tqdm

    fold_of = {s: k for k, f in enumerate(split["folds"]) for s in f["val"]}
    rows = []
    for sample in tqdm(samples, desc="prepare", unit="image", disable=not progress):
        row = describe_sample(sample, params)
        row["split"] = "test" if sample.stem in split["test"] else "train"
        row["fold"] = fold_of.get(sample.stem, -1)
        rows.append(row)
    return pd.DataFrame(rows)


def prepare(params: dict, out_dir: str | os.PathLike, progress: bool = True) -> pd.DataFrame:
    """Pair, split and describe the dataset; write ``manifest.csv`` and ``split.json`` to ``out_dir``.

    Files are written to a temporary name first, so a failure leaves no half-written output.
    """
    data_dir = resolve(params, params["data"]["dir"])
    samples = pair_samples(data_dir, params)
    p = params["prepare"]
    split = split_samples([s.stem for s in samples], float(p["test_fraction"]), int(p["folds"]), int(p["seed"]))
    manifest = build_manifest(samples, split, params, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_with(out / "manifest.csv", lambda tmp: manifest.to_csv(tmp, index=False))
    write_json(out / "split.json", split)
    return manifest


def read_prepared(prepared_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read the ``prepare`` stage's manifest and split."""
    d = Path(prepared_dir)
    if not (d / "manifest.csv").is_file() or not (d / "split.json").is_file():
        raise NanosegError(f"{d}: no manifest.csv/split.json; run `dvc repro prepare` first.")
    manifest = pd.read_csv(d / "manifest.csv", dtype={"stem": str, "mask_values": str}, keep_default_na=False,
                           na_values={"pixel_size_nm": [""], "foreground_fraction": [""], "mask_width": [""],
                                      "mask_height": [""]})
    return manifest, json.loads((d / "split.json").read_text())


# ----------------------------------------------------------------------------- loading


def load_pair(row, root: str | os.PathLike = ".", crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load one manifest row as (image float32 [0,1], mask bool), cropped to ``crop_rows``.

    Paths in the manifest are relative to the project root ``root``.
    """
    from nanoseg.io.masks import read_mask
    from nanoseg.io.micrograph import read_micrograph

    mg = read_micrograph(Path(root) / row["image_path"], databar_row=int(row["databar_row"]))
    mask = read_mask(Path(root) / row["mask_path"], shape=mg.shape)
    rows = int(row["crop_rows"]) if crop else mg.height
    return mg.pixels[:rows], mask[:rows]


def load_rows(manifest: pd.DataFrame, stems: list[str], root: str | os.PathLike = "."
              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load images and masks for ``stems`` (in that order)."""
    by_stem = manifest.set_index("stem")
    images, masks = [], []
    for s in stems:
        img, m = load_pair(by_stem.loc[s].to_dict() | {"stem": s}, root)
        images.append(img)
        masks.append(m)
    return images, masks


def pixel_sizes(manifest, stems) -> list:
    """Each image's own pixel size in nm (None where the manifest has none), in the order of ``stems``."""
    by = manifest.set_index("stem")["pixel_size_nm"]
    return [None if not np.isfinite(v) else float(v) for v in (float(by.loc[s]) for s in stems)]


def median_pixel_size(manifest) -> float | None:
    """The median pixel size of the manifest's images (None when none has one)."""
    px = manifest["pixel_size_nm"]
    return float(np.nanmedian(px)) if px.notna().any() else None
