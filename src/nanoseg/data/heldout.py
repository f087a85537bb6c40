"""The held-out test images: read once, for ``evaluate``, ``publish`` and the benchmarks (:func:`load_test`)."""

from __future__ import annotations

from dataclasses import dataclass

from nanoseg.config import resolve
from nanoseg.data.manifest import load_rows, pixel_sizes


@dataclass
class HeldOut:
    """The test images, cropped to their sample areas, with their manual masks, measurable-particle masks
    (None when the dataset has none) and pixel sizes (nm or None), in the order of ``stems``."""

    stems: list
    images: list
    masks: list
    class_masks: list | None
    pixel_sizes: list


def _class_masks(manifest, stems, root, rows):
    from nanoseg.io.masks import read_mask

    by = manifest.set_index("stem")
    out = []
    for s in stems:
        path = by.loc[s, "class_mask_path"]
        if not isinstance(path, str) or not path:
            return None
        out.append(read_mask(resolve({"_root": root}, path))[:rows[s]])
    return out


def load_test(params: dict, manifest, split: dict, stems=None) -> HeldOut:
    """The test images (``split["test"]`` unless ``stems``), cropped to their sample areas."""
    root = params["_root"]
    stems = list(split["test"] if stems is None else stems)
    images, masks = load_rows(manifest, stems, root)
    rows = dict(zip(manifest["stem"], manifest["crop_rows"].astype(int)))
    return HeldOut(stems, images, masks, _class_masks(manifest, stems, root, rows), pixel_sizes(manifest, stems))
