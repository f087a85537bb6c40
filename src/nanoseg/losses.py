"""Training losses and metrics for the segmentation network.

Soft Dice (the paper's loss), a Dice coefficient metric and BCE + Dice. All
math is done in float32 (``keras.ops``), so they work unchanged when the model
runs under the ``mixed_bfloat16`` policy, with any Keras 3 backend.
"""

from __future__ import annotations

import keras
from keras import ops

from nanoseg.errors import NanosegError


def _as_float32(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def dice_coefficient(y_true, y_pred, smooth=1.0):
    """Soft Dice coefficient over the whole batch.

    ``(2 * sum(t * p) + smooth) / (sum(t) + sum(p) + smooth)``, summed over
    every pixel and channel of every sample.

    Parameters
    ----------
    y_true, y_pred : tensor
        Targets in {0, 1} and probabilities in [0, 1], same shape.
    smooth : float
        Added to numerator and denominator (empty masks give 1).

    Returns
    -------
    tensor
        Scalar float32.
    """
    y_true, y_pred = _as_float32(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred)
    total = ops.sum(y_true) + ops.sum(y_pred)
    return (2.0 * intersection + smooth) / (total + smooth)


def dice_loss(y_true, y_pred, smooth=1.0):
    """Soft Dice loss over the batch: ``1 - dice_coefficient``."""
    return 1.0 - dice_coefficient(y_true, y_pred, smooth=smooth)


def bce_loss(y_true, y_pred):
    """Mean binary cross-entropy over the batch (float32 scalar)."""
    y_true, y_pred = _as_float32(y_true, y_pred)
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))


def bce_dice_loss(y_true, y_pred, smooth=1.0):
    """Mean binary cross-entropy plus soft Dice loss (float32 scalar)."""
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred, smooth=smooth)


LOSSES = {"dice": dice_loss, "bce_dice": bce_dice_loss, "bce": bce_loss}


def get_loss(name):
    """Return the loss function named in params.yaml (``train.loss``)."""
    if name not in LOSSES:
        raise NanosegError(f"loss {name!r} is unknown; set train.loss in params.yaml to one of {sorted(LOSSES)}.")
    return LOSSES[name]
