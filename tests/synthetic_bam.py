"""A synthetic stand-in for the BAM TiO2 SEM dataset, made by the tests: the suite runs end to end without
../shared (the real images are CC BY-NC-ND and never copied into the repo).

It mirrors the facts of the real files (shared/datasets/bam-tio2/README.md, measured on them):

* the folder layout (``Electron Microscopy Images/SEM/<stem>.tif``, ``..._Manual_4connected/<stem>_m.tif``,
  ``..._Manual_4connected_2Classes/<stem>_cm.tif``);
* 1024 x 768 8-bit palette TIFFs, the Zeiss ``CZ_SEM`` tag 34118 holding a 7.34375 nm pixel (the exact value in m
  4th among the unnamed header values, ``Image Pixel Size = 7.344 nm`` under ``AP_IMAGE_PIXEL_SIZE``);
* the data bar from row 712: a black band with sparse text-like marks and a scale bar, a non-flat frame row at the
  very bottom;
* a dark, smooth background (gray ~0.19) and bright, textured, non-spherical particles with a brighter rim,
  median area-equivalent diameter ~24 px, ~10 % of the area, many touching or overlapping in clusters;
* 0/255 masks (1024 x 768) where touching particles are cut apart by 1-px background lines, so the 4-connected
  components of the foreground are the instances; 1024 x 704 class masks (255) of the particles that are fully
  visible (not cut by the frame, not hidden under another one).

Deterministic: the same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.draw import ellipse

IMAGES = "Electron Microscopy Images/SEM"
MASKS = "Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected"
CLASS_MASKS = "Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected_2Classes"
HEIGHT, WIDTH, DATABAR_ROW, CLASS_ROWS = 768, 1024, 712, 704
PIXEL_M = 7.34375e-9
MIN_INSTANCE_PX = 30  # no specks: every instance of the masks is a particle a network can find


def _zeiss_number(value) -> str:
    if isinstance(value, int):
        return str(value)
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{mantissa}e{int(exponent):+04d}"  # Zeiss (Windows printf): 7.343750e-009


def cz_sem_text(pixel_m: float = PIXEL_M) -> str:
    """The text of a Zeiss CZ_SEM tag as the BAM files hold it (a short excerpt)."""
    header = [0, 0, 0, pixel_m, 5.0e4, 6, 2.0e4, 2.34, 1.474665e-09, 2.796514e-03]
    named = [("AP_MAG", "Mag = 50.00 K X"), ("DP_DETECTOR_CHANNEL", "Signal A = InLens"),
             ("AP_IMAGE_PIXEL_SIZE", f"Image Pixel Size = {pixel_m * 1e9:.3f} nm"),
             ("AP_WD", "WD = 2.8 mm")]
    return "\r\n".join([*map(_zeiss_number, header), *(line for pair in named for line in pair)]) + "\r\n"


def _particles(rng) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the drawn ellipses in the sample rows (later ones on top), and for each label whether the
    particle is fully visible: inside the frame and not partly hidden under one drawn later."""
    labels = np.zeros((DATABAR_ROW, WIDTH), np.int32)
    centres, radii, drawn, inside = [], [], [0], [False]
    while (labels > 0).mean() < 0.11 and len(centres) < 400:
        r = float(np.clip(rng.lognormal(np.log(14.5), 0.3), 5.0, 30.0))  # ECD / 2
        aspect = rng.uniform(1.0, 1.6)
        a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
        if centres and rng.random() < 0.7:  # touch or overlap a particle drawn before: agglomerates
            k = rng.integers(len(centres))
            angle, dist = rng.uniform(0, 2 * np.pi), (radii[k] + r) * rng.uniform(0.65, 0.95)
            cy, cx = centres[k][0] + dist * np.sin(angle), centres[k][1] + dist * np.cos(angle)
        else:
            cy, cx = rng.uniform(-10, DATABAR_ROW + 10), rng.uniform(-10, WIDTH + 10)
        rotation = rng.uniform(0, np.pi)
        rr, cc = ellipse(cy, cx, a, b, shape=labels.shape, rotation=rotation)
        if rr.size == 0:
            continue
        full = ellipse(cy, cx, a, b, rotation=rotation)[0].size
        centres.append((cy, cx))
        radii.append(r)
        labels[rr, cc] = len(centres)
        drawn.append(rr.size)
        inside.append(rr.size == full and rr.min() > 0 and cc.min() > 0 and rr.max() < CLASS_ROWS - 1
                      and cc.max() < WIDTH - 1)
    visible = np.bincount(labels.ravel(), minlength=len(drawn))
    return labels, np.asarray(inside) & (visible == np.asarray(drawn))


def synthetic_micrograph(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 768 x 1024, mask 0/255 768 x 1024, class mask 0/255 704 x 1024) for one seed."""
    rng = np.random.default_rng(seed)
    labels, measurable = _particles(rng)
    n = len(measurable) - 1
    # 1-px background lines between touching particles: of two 4-neighbours with different labels one is cut
    seam = np.zeros(labels.shape, bool)
    seam[:, :-1] |= (labels[:, :-1] != labels[:, 1:]) & (labels[:, :-1] > 0) & (labels[:, 1:] > 0)
    seam[:-1] |= (labels[:-1] != labels[1:]) & (labels[:-1] > 0) & (labels[1:] > 0)
    cut = np.where(seam, 0, labels)
    parts, count = ndi.label(cut > 0)  # 4-connectivity: the instances
    small = np.bincount(parts.ravel(), minlength=count + 1) < MIN_INSTANCE_PX
    small[0] = False
    cut[small[parts]] = 0

    # the image: a smooth dark background, bright textured particles with a bright rim, darker seams
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = 0.19 + 0.015 * np.sin(xx / 170.0 + seed) * np.cos(yy / 230.0)
    image += 0.006 * ndi.gaussian_filter(rng.standard_normal((HEIGHT, WIDTH)), 1.0) / 0.28
    base = rng.uniform(0.36, 0.58, n + 1)
    texture = ndi.gaussian_filter(rng.standard_normal((DATABAR_ROW, WIDTH)), 1.5) / 0.19
    depth = ndi.distance_transform_edt(labels > 0)
    inside = labels > 0
    sample = image[:DATABAR_ROW]
    sample[inside] = (base[labels] + 0.06 * texture + 0.25 * np.exp(-(depth - 1.0) / 2.0))[inside]
    sample[seam] = 0.30
    image = ndi.gaussian_filter(image, 0.6) + 0.008 * rng.standard_normal((HEIGHT, WIDTH))
    image = np.clip(image, 0.0, 1.0)

    # the data bar: black, three lines of text-like glyphs, a scale bar, a noisy frame row at the bottom
    image[DATABAR_ROW:] = 0.0
    for row, col0, words in ((722, 12, 4), (738, 12, 3), (752, 560, 4)):
        col = col0
        for _ in range(words):
            for _ in range(rng.integers(3, 8)):
                image[row : row + 7, col : col + 5] = rng.random((7, 5)) < 0.5
                col += 6
            col += 8
    image[740:744, 820 : 820 + 136] = 1.0  # 1 um at 7.34 nm
    image[HEIGHT - 1] = rng.uniform(0.1, 0.3, WIDTH)
    pixels = np.round(image * 255).astype(np.uint8)

    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:DATABAR_ROW][cut > 0] = 255
    class_mask = np.where(measurable[cut[:CLASS_ROWS]] & (cut[:CLASS_ROWS] > 0), 255, 0).astype(np.uint8)
    return pixels, mask, class_mask


def write_synthetic_bam(root: Path, n: int = 8, seed: int = 0) -> Path:
    """``n`` synthetic micrographs with their masks in the BAM layout under ``root``."""
    root = Path(root)
    for sub in (IMAGES, MASKS, CLASS_MASKS):
        (root / sub).mkdir(parents=True, exist_ok=True)
    gray = np.repeat(np.arange(256, dtype=np.uint16)[None] * 257, 3, axis=0)
    for k in range(n):
        stem = f"syn{k + 1:04d}"
        pixels, mask, class_mask = synthetic_micrograph(seed * 1000 + k)
        tifffile.imwrite(root / IMAGES / f"{stem}.tif", pixels, photometric="palette", colormap=gray,
                         extratags=[(34118, "s", 0, cz_sem_text(), True)])
        tifffile.imwrite(root / MASKS / f"{stem}_m.tif", mask, photometric="minisblack")
        tifffile.imwrite(root / CLASS_MASKS / f"{stem}_cm.tif", class_mask, photometric="minisblack")
    (root / "README.md").write_text("Synthetic stand-in for the BAM TiO2 SEM dataset, made by tests/synthetic_bam.py.\n")
    return root
