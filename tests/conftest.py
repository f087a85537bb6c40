"""Shared fixtures: datasets in the BAM layout (the real one or a synthetic stand-in), and the skip guard.

Nothing here skips for lack of ../shared: ``bam_dir`` is the real BAM dataset when it is there
(``NANOSEG_BAM_DIR`` or ../shared/datasets/bam-tio2) and otherwise a synthetic dataset in the same layout
made by the tests (tests/synthetic_bam.py). Only the few checks of the real files themselves
(``needs_real_bam``, ``needs_weights``) skip without them, with a reason starting "real data only".
With ``NANOSEG_NO_SKIP=1`` (``make test``, ``.ci/run``) any other skip fails the run (``ALLOWED_SKIPS``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.synthetic_bam import CLASS_MASKS, IMAGES, MASKS, write_synthetic_bam

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["tests.s3server"]

# pytest-xdist workers run as `python -c`: their __main__ has neither __spec__ nor __file__, which pyspark.sql.connect
# (imported by great_expectations when pyspark is installed) takes for a doctest run and answers with sys.exit(0).
# A worker's __main__ is given a file name, as `pytest` itself and the `nanoseg` command have.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"

REPO = Path(__file__).resolve().parents[1]
BAM = Path(os.environ.get("NANOSEG_BAM_DIR", REPO.parent / "shared/datasets/bam-tio2"))
HAVE_BAM = (BAM / IMAGES).is_dir()
WEIGHTS = REPO.parent / "shared/weights/resnet50_imagenet_notop.weights.h5"
PX_PER_CM = 1e7 / 7.34375  # 7.34375 nm pixels, as TIFF resolution in pixels per centimetre

REAL_DATA_ONLY = "real data only"
needs_real_bam = pytest.mark.skipif(
    not HAVE_BAM, reason=f"{REAL_DATA_ONLY}: checks the real BAM files; not at {BAM} (set NANOSEG_BAM_DIR)")
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"{REAL_DATA_ONLY}: checks the ImageNet weights file; not at {WEIGHTS}")

#: Skips allowed under NANOSEG_NO_SKIP=1 (reason prefixes): system programs that .ci/run installs only when it
#: runs as root, and the checks of the real ../shared files themselves. Any other skip fails the run.
ALLOWED_SKIPS = ("Chromium is not installed", "PostgreSQL server binaries not installed", REAL_DATA_ONLY)


@pytest.fixture(scope="session")
def synthetic_bam(tmp_path_factory) -> Path:
    """The synthetic stand-in for the BAM dataset (8 images, fixed seed), made once per session."""
    return write_synthetic_bam(tmp_path_factory.mktemp("synthetic-bam"), n=8, seed=0)


@pytest.fixture(scope="session")
def bam_dir(request) -> Path:
    """A dataset in the BAM layout: the real BAM dataset when present, else the synthetic one (never a skip)."""
    return BAM if HAVE_BAM else request.getfixturevalue("synthetic_bam")


def bam_stems(source: Path, n: int) -> list[str]:
    return sorted(p.stem for p in (source / IMAGES).glob("*.tif"))[:n]


def write_small_dataset(source: Path, root: Path, n: int = 8, rows: int = 224, cols: int = 320, bar: int = 32,
                        pixel_size: bool = True) -> Path:
    """A small dataset in the BAM layout, cut from the first ``n`` images of ``source`` (a folder in the BAM layout,
    e.g. the ``bam_dir`` fixture; never modified in place): the ``rows x cols`` window with the most particles of
    each image plus ``bar`` rows of its data bar, 8-bit gray TIFF with the pixel size as TIFF resolution; masks cut
    the same way."""
    from nanoseg.io.micrograph import read_image_array, read_micrograph

    for sub in (IMAGES, MASKS, CLASS_MASKS):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem in bam_stems(source, n):
        mg = read_micrograph(source / IMAGES / f"{stem}.tif")
        m = read_image_array(source / MASKS / f"{stem}_m.tif")
        sample, bar_row = mg.crop_rows(32), mg.databar_row
        r0, c0 = max(((r, c) for r in range(0, sample - rows + 1, 32) for c in range(0, mg.width - cols + 1, 64)),
                     key=lambda rc: (m[rc[0] : rc[0] + rows, rc[1] : rc[1] + cols] > 0).mean())
        img = np.concatenate([mg.pixels[r0 : r0 + rows, c0 : c0 + cols], mg.pixels[bar_row : bar_row + bar, :cols]])
        kw = {"resolution": (PX_PER_CM, PX_PER_CM), "resolutionunit": "CENTIMETER"} if pixel_size else {}
        tifffile.imwrite(root / IMAGES / f"{stem}.tif", (img * 255).round().astype(np.uint8), **kw)
        mask = np.concatenate([m[r0 : r0 + rows, c0 : c0 + cols], np.zeros((bar, cols), m.dtype)])
        tifffile.imwrite(root / MASKS / f"{stem}_m.tif", mask)
        cm = read_image_array(source / CLASS_MASKS / f"{stem}_cm.tif")
        tifffile.imwrite(root / CLASS_MASKS / f"{stem}_cm.tif", cm[r0 : r0 + rows, c0 : c0 + cols])
    return root


@pytest.fixture
def small_dataset(tmp_path, bam_dir) -> Path:
    return write_small_dataset(bam_dir, tmp_path / "dataset")


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
    from nanoseg import processes

    return processes.run([processes.tool("nanoseg"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                     timeout=timeout)


# ----------------------------------------------------------------------------- heavy files first

#: The files that take minutes (a DVC pipeline, several trainings, a Spark batch): ``make test`` runs them first so
#: that, with pytest-xdist's ``--dist loadfile``, the longest one does not start last and run alone.
HEAVY_FIRST = ("tests/pipeline/test_pipeline.py", "tests/tracking/test_registry.py", "tests/pipeline/test_batch.py",
               "tests/model/test_training.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return HEAVY_FIRST.index(path) if path in HEAVY_FIRST else len(HEAVY_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


# ----------------------------------------------------------------------------- the skip guard

_skipped: list[tuple[str, str]] = []


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        _skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)


def _forbidden_skips() -> list[tuple[str, str]]:
    if os.environ.get("NANOSEG_NO_SKIP") != "1":
        return []
    return [(node, reason) for node, reason in _skipped if not reason.startswith(ALLOWED_SKIPS)]


def pytest_sessionfinish(session, exitstatus):
    if _forbidden_skips() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    forbidden = _forbidden_skips()
    if forbidden:
        terminalreporter.section("skips not allowed (NANOSEG_NO_SKIP=1): the run fails", sep="=", red=True)
        for node, reason in forbidden:
            terminalreporter.line(f"SKIPPED {node}: {reason}")
        terminalreporter.line(f"allowed skip reasons start with: {', '.join(map(repr, ALLOWED_SKIPS))}")
