"""Bringing the raw dataset into ``data/`` under DVC (``dvc import-url`` of ``data.source``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from nanoseg import processes
from nanoseg.config import resolve
from nanoseg.data.manifest import IMAGE_SUFFIXES
from nanoseg.errors import NanosegError


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return processes.run([processes.tool("dvc"), *args], env={"DVC_NO_ANALYTICS": "1"}, cwd=cwd,
                         capture_output=True, text=True)


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
