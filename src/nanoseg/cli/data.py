"""``nanoseg data [--source DIR]``: (re)import the dataset into data/ through DVC."""

from __future__ import annotations

from nanoseg.config import load_params
from nanoseg.data.dvc_import import import_dataset
from nanoseg.data.manifest import list_images


def import_command(args) -> int:
    params = load_params()
    data = import_dataset(params, args.source)
    n = len(list_images(data, params))
    print(f"{data}: {n} images in place, tracked by data.dvc")
    return 0
