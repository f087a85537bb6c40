"""Shared fixtures: the BAM dataset location and small datasets in the BAM layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["tests.s3server"]

REPO = Path(__file__).resolve().parents[1]
BAM = Path(os.environ.get("NANOSEG_BAM_DIR", REPO.parent / "shared/datasets/bam-tio2"))
IMAGES = "Electron Microscopy Images/SEM"
MASKS = "Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected"
CLASS_MASKS = "Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected_2Classes"
PX_PER_CM = 1e7 / 7.34375  # 7.34375 nm pixels, as TIFF resolution in pixels per centimetre


@pytest.fixture(scope="session")
def bam_dir() -> Path:
    if not (BAM / IMAGES).is_dir():
        pytest.skip(f"BAM dataset not found at {BAM} (set NANOSEG_BAM_DIR)")
    return BAM


def bam_stems(n: int) -> list[str]:
    return sorted(p.stem for p in (BAM / IMAGES).glob("*.tif"))[:n]


def write_small_dataset(root: Path, n: int = 8, rows: int = 224, cols: int = 320, bar: int = 32,
                        pixel_size: bool = True) -> Path:
    """A small dataset in the BAM layout, cut from the shared BAM images (never modified in place):
    the ``rows x cols`` window with the most particles of each image plus ``bar`` rows of its data bar,
    8-bit gray TIFF with the pixel size as TIFF resolution; masks cut the same way."""
    from nanoseg.micrograph import read_image_array, read_micrograph

    for sub in (IMAGES, MASKS, CLASS_MASKS):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem in bam_stems(n):
        mg = read_micrograph(BAM / IMAGES / f"{stem}.tif")
        m = read_image_array(BAM / MASKS / f"{stem}_m.tif")
        r0, c0 = max(((r, c) for r in range(0, 704 - rows + 1, 32) for c in range(0, 1024 - cols + 1, 64)),
                     key=lambda rc: (m[rc[0] : rc[0] + rows, rc[1] : rc[1] + cols] > 0).mean())
        img = np.concatenate([mg.pixels[r0 : r0 + rows, c0 : c0 + cols], mg.pixels[712 : 712 + bar, :cols]])
        kw = {"resolution": (PX_PER_CM, PX_PER_CM), "resolutionunit": "CENTIMETER"} if pixel_size else {}
        tifffile.imwrite(root / IMAGES / f"{stem}.tif", (img * 255).round().astype(np.uint8), **kw)
        mask = np.concatenate([m[r0 : r0 + rows, c0 : c0 + cols], np.zeros((bar, cols), m.dtype)])
        tifffile.imwrite(root / MASKS / f"{stem}_m.tif", mask)
        cm = read_image_array(BAM / CLASS_MASKS / f"{stem}_cm.tif")
        tifffile.imwrite(root / CLASS_MASKS / f"{stem}_cm.tif", cm[r0 : r0 + rows, c0 : c0 + cols])
    return root


@pytest.fixture
def small_dataset(tmp_path, bam_dir) -> Path:
    return write_small_dataset(tmp_path / "dataset")


@pytest.fixture
def params_for(tmp_path):
    """Settings from the repo's params.yaml, pointed at a dataset folder, working in tmp_path."""
    from nanoseg.config import load_params

    def make(data_dir: Path, profile: str = "smoke", **overrides) -> dict:
        p = load_params(REPO / "params.yaml", profile=profile)
        p["_root"] = str(tmp_path)
        p["data"]["dir"] = str(data_dir)
        for section, values in overrides.items():
            p[section].update(values)
        return p

    return make


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the ``nanoseg`` command line in a subprocess."""
    exe = shutil.which("nanoseg", path=str(Path(sys.executable).parent)) or "nanoseg"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
