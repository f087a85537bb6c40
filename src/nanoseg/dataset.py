"""The dataset: import under DVC, image/mask pairing, split, manifest, and loading.

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
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nanoseg.atomic import write_json, write_with
from nanoseg.config import load_params, resolve
from nanoseg import procs
from nanoseg.errors import NanosegError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


# ----------------------------------------------------------------------------- import


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return procs.run([procs.tool("dvc"), *args], env={"DVC_NO_ANALYTICS": "1"}, cwd=cwd, capture_output=True,
                     text=True)


def check_source(source: Path, params: dict) -> None:
    """Raise :class:`NanosegError` unless ``source`` looks like a dataset folder."""
    if not source.exists():
        raise NanosegError(
            f"{source}: dataset source folder does not exist. Set data.source in params.yaml "
            "(or pass --source) to your copy of the BAM dataset (Zenodo doi:10.5281/zenodo.4563942) "
            "or a folder of your micrographs in the same layout."
        )
    if not source.is_dir():
        raise NanosegError(f"{source}: dataset source is a file, not a folder; point data.source at the folder.")
    images = source / params["data"]["images"]
    found = [p for p in images.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES] if images.is_dir() else []
    if not found:
        raise NanosegError(
            f"{source}: no images found in {params['data']['images']!r} (expected .tif/.tiff/.png files in "
            "the BAM layout); check data.source and data.images in params.yaml."
        )


def import_dataset(params: dict, source: str | None = None) -> Path:
    """Bring the raw dataset into ``data/`` through DVC.

    With ``data.dvc`` already importing the same source (a fresh clone), runs
    ``dvc update data.dvc``, which copies the files byte for byte and checks
    them against the md5 recorded in git. Otherwise runs
    ``dvc import-url --force SOURCE data`` and writes a new ``data.dvc`` (commit it).

    Returns
    -------
    Path
        The ``data/`` folder.
    """
    root = Path(params["_root"])
    src_text = source or params["data"]["source"]
    src = resolve(params, src_text)
    check_source(src, params)
    dvcfile = root / "data.dvc"
    out = params["data"]["dir"]
    recorded = None
    if dvcfile.exists():
        deps = (yaml.safe_load(dvcfile.read_text()) or {}).get("deps") or [{}]
        recorded = deps[0].get("path")
    same = recorded is not None and (root / recorded).resolve() == src.resolve()
    if same:
        proc = _dvc("update", "data.dvc", cwd=root)
    else:
        try:
            rel = os.path.relpath(src, root)
        except ValueError:  # another drive on Windows
            rel = str(src)
        proc = _dvc("import-url", "--force", rel, out, cwd=root)
    if proc.returncode != 0:
        raise NanosegError(f"importing {src} into {out}/ with DVC failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
    return root / out


def import_command(args) -> int:
    params = load_params()
    data = import_dataset(params, args.source)
    n = len(list_images(data, params))
    print(f"{data}: {n} images in place, tracked by data.dvc")
    return 0


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


# ----------------------------------------------------------------------------- split


def split_samples(stems: list[str], test_fraction: float, folds: int, seed: int) -> dict:
    """Seeded train/test split and K folds over the training stems.

    Returns
    -------
    dict
        ``{"train": [...], "test": [...], "folds": [{"train": [...], "val": [...]}, ...]}``
    """
    from sklearn.model_selection import KFold, train_test_split

    stems = sorted(stems)
    n_test = max(1, math.ceil(test_fraction * len(stems))) if test_fraction > 0 else 0
    if len(stems) - n_test < max(2, folds):
        raise NanosegError(
            f"only {len(stems)} images: too few for a {test_fraction:.0%} test split and {folds} folds; "
            "add images or lower prepare.folds in params.yaml."
        )
    if n_test:
        train, test = train_test_split(stems, test_size=n_test, random_state=seed, shuffle=True)
    else:
        train, test = list(stems), []
    train, test = sorted(train), sorted(test)
    kf = KFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_list = [
        {"train": [train[i] for i in tr], "val": [train[i] for i in va]} for tr, va in kf.split(train)
    ]
    return {"seed": seed, "train": train, "test": test, "folds": fold_list}


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

    from nanoseg.micrograph import read_image_array, read_micrograph

    d = params["data"]
    databar = None if d.get("databar_row") in (None, "auto") else int(d["databar_row"])
    mg = read_micrograph(sample.image, pixel_size=d.get("pixel_size_nm"), databar_row=databar)
    crop = mg.crop_rows(int(d.get("crop_multiple", 32)))
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
    from nanoseg.micrograph import read_mask, read_micrograph

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


# ----------------------------------------------------------------------------- training input


def _zoom_window(rng, img, mask, crop: int, scale) -> tuple[np.ndarray, np.ndarray, float]:
    """A random ``crop / s``-sized window of ``img`` and ``mask``, ``s`` log-uniform in ``scale``."""
    lo, hi = (float(v) for v in scale)
    h, w = img.shape[:2]
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    size = int(min(round(crop / s), h, w))
    r, c = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return img[r : r + size, c : c + size], mask[r : r + size, c : c + size], crop / size


def random_crops(images, targets, crop: int, augment: dict, seed: int, masks=None, zoom_target=None):
    """Endless generator of augmented (image, target) crops, seeded.

    Crops are taken uniformly from images of any size (each at least ``crop``
    in both directions); flips and 90-degree rotations act on image and target
    alike (pure index permutations, so 1-pixel lines in a target stay intact);
    brightness/contrast jitter and intensity inversion (``invert``: its
    probability) act on the image only.

    Scale augmentation (``augment["scale"] = [lo, hi]``, applied to a share
    ``scale_p`` of the crops, default 0.5) needs ``masks`` and
    ``zoom_target(mask_window, shape) -> target``: a window of ``crop / s``
    pixels is resampled to ``crop`` (anti-aliased when shrinking, bilinear),
    and its target is made again from the zoomed manual instances
    (:func:`nanoseg.targets.zoom_targets`), so the 1-pixel separations survive.
    """
    rng = np.random.default_rng(seed)
    n = len(images)
    scale = augment.get("scale")
    if scale and (masks is None or zoom_target is None):
        raise NanosegError("train.augment.scale needs the manual masks and a target maker (nanoseg.training.fit).")
    scale_p = float(augment.get("scale_p", 0.5)) if scale else 0.0
    invert = float(augment.get("invert", 0.0) or 0.0)
    while True:
        i = int(rng.integers(n))
        img, tgt = images[i], targets[i]
        h, w = img.shape[:2]
        if scale_p and rng.random() < scale_p:
            from skimage.transform import resize

            x, m, zoom = _zoom_window(rng, img, masks[i], crop, scale)
            x = resize(x, (crop, crop), order=1, mode="reflect", anti_aliasing=zoom < 1, preserve_range=True)
            y = zoom_target(m, (crop, crop))
        else:
            r = int(rng.integers(h - crop + 1))
            c = int(rng.integers(w - crop + 1))
            x = img[r : r + crop, c : c + crop]
            y = tgt[r : r + crop, c : c + crop]
        if augment.get("flips", True):
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if rng.random() < 0.5:
                x, y = x[::-1], y[::-1]
        if augment.get("rot90", True):
            k = int(rng.integers(4))
            x, y = np.rot90(x, k), np.rot90(y, k)
        b, ct = float(augment.get("brightness", 0.0)), float(augment.get("contrast", 0.0))
        if b or ct:
            gain = 1.0 + rng.uniform(-ct, ct)
            mean = float(x.mean())
            x = np.clip((x - mean) * gain + mean + rng.uniform(-b, b), 0.0, 1.0)
        if invert and rng.random() < invert:
            x = 1.0 - x
        yield np.ascontiguousarray(x, np.float32)[..., None], np.ascontiguousarray(y, np.float32).reshape(crop, crop, -1)


def make_train_dataset(images, targets, crop: int, batch: int, augment: dict, seed: int, masks=None,
                       zoom_target=None):
    """A ``tf.data`` pipeline of random augmented crops, batched and prefetched.

    Parameters
    ----------
    images : list of (H, W) float32 arrays in [0, 1]
    targets : list of (H, W) or (H, W, C) arrays (masks, or derived training targets)
    crop : int
        Crop size in pixels; a multiple of 32 and no larger than the smallest image.
    masks, zoom_target : optional
        For scale augmentation (:func:`random_crops`).
    """
    import tensorflow as tf

    if crop % 32:
        raise NanosegError(f"train.crop = {crop} is not a multiple of 32; the U-Net needs e.g. 256 or 512.")
    small = [im.shape for im in images if min(im.shape[:2]) < crop]
    if small:
        raise NanosegError(f"train.crop = {crop} is larger than an image ({small[0][0]}x{small[0][1]} px); lower train.crop.")
    if batch > len(images):
        raise NanosegError(
            f"train.batch = {batch} is larger than the {len(images)} training images of this fold; "
            "lower train.batch or add images."
        )
    channels = 1 if targets[0].ndim == 2 else targets[0].shape[-1]
    spec = (
        tf.TensorSpec((crop, crop, 1), tf.float32),
        tf.TensorSpec((crop, crop, channels), tf.float32),
    )
    ds = tf.data.Dataset.from_generator(
        lambda: random_crops(images, targets, crop, augment, seed, masks, zoom_target), output_signature=spec
    )
    return ds.batch(batch, drop_remainder=True).prefetch(2)
