"""Training input: seeded, augmented random crops as a ``tf.data`` pipeline."""

from __future__ import annotations

import numpy as np

from nanoseg.config import AugmentSettings, check
from nanoseg.errors import NanosegError
from nanoseg.model.targets import dihedral


def _zoom_window(rng, img, mask, crop: int, scale) -> tuple[np.ndarray, np.ndarray, float]:
    """A random ``crop / s``-sized window of ``img`` and ``mask``, ``s`` log-uniform in ``scale``."""
    lo, hi = (float(v) for v in scale)
    h, w = img.shape[:2]
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    size = int(min(round(crop / s), h, w))
    r, c = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return img[r : r + size, c : c + size], mask[r : r + size, c : c + size], crop / size


def degraded(x: np.ndarray, factor: float) -> np.ndarray:
    """``x`` as an image taken at ``1 / factor`` of its magnification and enlarged back by ``--scale auto``:
    shrunk by ``factor`` (anti-aliased), then enlarged to its own shape (bilinear), as
    :func:`nanoseg.inference.rescale.resample_image` does both ways."""
    from skimage.transform import resize

    shape = x.shape[:2]
    small = tuple(max(8, int(round(s / factor))) for s in shape)
    x = resize(x, small, order=1, mode="reflect", anti_aliasing=True, preserve_range=True)
    return resize(x, shape, order=1, mode="reflect", anti_aliasing=False, preserve_range=True).astype(np.float32)


def random_crops(images, targets, crop: int, augment: dict, seed: int, masks=None, zoom_target=None, vectors=None):
    """Endless generator of augmented (image, target) crops, seeded.

    Crops are taken uniformly from images of any size (each at least ``crop``
    in both directions); flips and 90-degree rotations act on image and target
    alike (pure index permutations, so 1-pixel lines in a target stay intact);
    brightness/contrast jitter and intensity inversion (``invert``: its
    probability) act on the image only, and so does resolution degradation
    (``lowres = F``: a share ``lowres_p`` of the crops is :func:`degraded` by a
    factor log-uniform in 1..F, as an image taken at a lower magnification
    looks after ``--scale auto`` enlarged it to the model's pixel size).

    Scale augmentation (``augment["scale"] = [lo, hi]``, applied to a share
    ``scale_p`` of the crops) needs ``masks`` and
    ``zoom_target(mask_window, shape) -> target``: a window of ``crop / s``
    pixels is resampled to ``crop`` (anti-aliased when shrinking, bilinear),
    and its target is made again from the zoomed manual instances
    (:func:`nanoseg.model.targets.zoom_targets`), so the 1-pixel separations survive.

    ``vectors`` = (h, v): target channels holding a vector map (the ``classes3_hv`` head's HoVer maps,
    :data:`nanoseg.model.targets.VECTORS`), turned with the crop by :func:`nanoseg.model.targets.dihedral`.

    ``augment`` is ``train.augment`` of params.yaml; keys it lacks take the defaults of
    :class:`nanoseg.config.AugmentSettings`.
    """
    augment = check(AugmentSettings, augment, "train.augment")
    rng = np.random.default_rng(seed)
    n = len(images)
    scale = augment["scale"]
    if scale and (masks is None or zoom_target is None):
        raise NanosegError("train.augment.scale needs the manual masks and a target maker (nanoseg.model.training.fit).")
    scale_p = float(augment["scale_p"]) if scale else 0.0
    invert = float(augment["invert"])
    lowres = float(augment["lowres"] or 1.0)
    lowres_p = float(augment["lowres_p"]) if lowres > 1.0 else 0.0
    lowres_rng = np.random.default_rng([seed, 1])  # its own stream: the crops are those of the same seed without it
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
        if lowres_p and lowres_rng.random() < lowres_p:
            x = degraded(x, float(np.exp(lowres_rng.uniform(0.0, np.log(lowres)))))
        if augment["flips"]:
            if rng.random() < 0.5:
                x, y = x[:, ::-1], dihedral(y, 0, True, vectors)
            if rng.random() < 0.5:  # an up-down flip = a half turn and a left-right flip
                x, y = x[::-1], dihedral(y, 2, True, vectors)
        if augment["rot90"]:
            k = int(rng.integers(4))
            x, y = np.rot90(x, k), dihedral(y, k, False, vectors)
        b, ct = float(augment["brightness"]), float(augment["contrast"])
        if b or ct:
            gain = 1.0 + rng.uniform(-ct, ct)
            mean = float(x.mean())
            x = np.clip((x - mean) * gain + mean + rng.uniform(-b, b), 0.0, 1.0)
        if invert and rng.random() < invert:
            x = 1.0 - x
        yield np.ascontiguousarray(x, np.float32)[..., None], np.ascontiguousarray(y, np.float32).reshape(crop, crop, -1)


def make_train_dataset(images, targets, crop: int, batch: int, augment: dict, seed: int, masks=None,
                       zoom_target=None, vectors=None):
    """A ``tf.data`` pipeline of random augmented crops, batched and prefetched.

    Parameters
    ----------
    images : list of (H, W) float32 arrays in [0, 1]
    targets : list of (H, W) or (H, W, C) arrays (masks, or derived training targets)
    crop : int
        Crop size in pixels; a multiple of 32 and no larger than the smallest image.
    masks, zoom_target : optional
        For scale augmentation (:func:`random_crops`).
    vectors : (int, int), optional
        Target channels of a vector map (:func:`random_crops`).
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
        lambda: random_crops(images, targets, crop, augment, seed, masks, zoom_target, vectors), output_signature=spec
    )
    return ds.batch(batch, drop_remainder=True).prefetch(2)
