"""Training losses and metrics for the segmentation network.

Soft Dice (the paper's loss, ``train.loss: dice``) and a Dice coefficient metric. All
math is done in float32 (``keras.ops``), so they work unchanged when the model
runs under the ``mixed_bfloat16`` policy, with any Keras 3 backend.

The instance variant (:mod:`nanoseg.model.targets`) trains with :class:`InstanceLoss`:
a per-pixel weighted cross-entropy (the weights arrive as the last target
channel: class weights, optionally plus the U-Net border term) plus soft Dice,
for the ``fg_distance`` head an MSE on the normalised distance, and for the ``classes3_hv``
head the HoVer maps' MSE plus the MSE of their spatial gradients inside the particles. Its
metrics (:func:`instance_metrics`) report the foreground Dice under the paper
metric's name ``dice_coefficient``, so learning curves compare side by side.
"""

from __future__ import annotations

import keras
from keras import ops

from nanoseg.errors import NanosegError
from nanoseg.model.targets import HEADS


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


# ----------------------------------------------------------------------------- instance variant

_EPS = 1e-7


def _unpack(y_true, y_pred):
    """Split targets (N, H, W, C [+ 1 weight]) into (targets, weights) beside float32 predictions."""
    y_true, y_pred = _as_float32(y_true, y_pred)
    c = y_pred.shape[-1]
    weights = y_true[..., c] if y_true.shape[-1] > c else ops.ones_like(y_true[..., 0])
    return y_true[..., :c], weights, y_pred


def _weighted_mean(values, weights):
    return ops.sum(values * weights) / ops.cast(ops.size(values), "float32")


def _soft_dice(t, p, smooth=1.0):
    return (2.0 * ops.sum(t * p) + smooth) / (ops.sum(t) + ops.sum(p) + smooth)


def classes3_loss(y_true, y_pred, smooth=1.0):
    """Pixel-weighted categorical cross-entropy + (1 - mean soft Dice of the 3 classes).

    ``y_true`` is (N, H, W, 4): one-hot background / interior / boundary and the
    per-pixel weight; ``y_pred`` the (N, H, W, 3) softmax. The cross-entropy is
    ``sum(w * ce) / n_pixels``, so the weights set how much rare boundary pixels count.
    """
    t, w, p = _unpack(y_true, y_pred)
    ce = -ops.sum(t * ops.log(ops.clip(p, _EPS, 1.0)), axis=-1)
    dice = sum(_soft_dice(t[..., k], p[..., k], smooth) for k in range(3)) / 3.0
    return _weighted_mean(ce, w) + 1.0 - dice


def fg_distance_loss(y_true, y_pred, distance_weight=1.0, smooth=1.0):
    """Pixel-weighted BCE + soft Dice on the foreground channel, plus ``distance_weight`` x MSE of the distance.

    ``y_true`` is (N, H, W, 3): foreground, normalised distance, weight;
    ``y_pred`` the (N, H, W, 2) sigmoid outputs.
    """
    t, w, p = _unpack(y_true, y_pred)
    pf = ops.clip(p[..., 0], _EPS, 1.0 - _EPS)
    bce = -(t[..., 0] * ops.log(pf) + (1.0 - t[..., 0]) * ops.log(1.0 - pf))
    mse = ops.mean(ops.square(p[..., 1] - t[..., 1]))
    return _weighted_mean(bce, w) + 1.0 - _soft_dice(t[..., 0], p[..., 0], smooth) + distance_weight * mse


def hv_loss(t_hv, p_hv, focus):
    """HoVer-Net's loss of the horizontal/vertical maps: MSE over all pixels + MSE of the maps'
    finite-difference gradients (both maps, both axes) on neighbour pairs inside ``focus`` (the particles
    with the lines between them), so the jump across a contact line is learnt, not smoothed over.

    ``t_hv``, ``p_hv``: (N, H, W, 2) encoded (v + 1) / 2; ``focus``: (N, H, W) 0/1.
    """
    d = p_hv - t_hv
    mse = ops.mean(ops.square(d))
    f = focus[..., None]
    gx, fx = d[:, :, 1:] - d[:, :, :-1], f[:, :, 1:] * f[:, :, :-1]
    gy, fy = d[:, 1:] - d[:, :-1], f[:, 1:] * f[:, :-1]
    msge = (ops.sum(fx * ops.square(gx)) + ops.sum(fy * ops.square(gy))) / (
        2.0 * (ops.sum(fx) + ops.sum(fy)) + _EPS)
    return mse + msge


def classes3_hv_loss(y_true, y_pred, hv_weight=1.0):
    """:func:`classes3_loss` on the first 3 channels + ``hv_weight`` x :func:`hv_loss` on the HoVer maps.

    ``y_true`` is (N, H, W, 6): one-hot background / interior / boundary, h, v (encoded (v + 1) / 2)
    and the per-pixel weight; ``y_pred`` the (N, H, W, 5) output of :class:`nanoseg.model.network.ClassesAndVectors`.
    """
    t, w, p = _unpack(y_true, y_pred)
    classes = classes3_loss(ops.concatenate([t[..., :3], w[..., None]], axis=-1), p[..., :3])
    return classes + hv_weight * hv_loss(t[..., 3:], p[..., 3:], 1.0 - t[..., 0])


@keras.saving.register_keras_serializable(package="nanoseg")
class InstanceLoss(keras.losses.Loss):
    """The instance variant's loss for ``head`` (:func:`classes3_loss`, :func:`fg_distance_loss` or
    :func:`classes3_hv_loss`)."""

    def __init__(self, head="classes3", distance_weight=1.0, hv_weight=1.0, name="instance_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if head not in HEADS:
            raise NanosegError(f"instance head {head!r} is unknown; use one of {HEADS}.")
        self.head, self.distance_weight, self.hv_weight = head, float(distance_weight), float(hv_weight)

    def call(self, y_true, y_pred):
        if self.head == "classes3":
            return classes3_loss(y_true, y_pred)
        if self.head == "classes3_hv":
            return classes3_hv_loss(y_true, y_pred, self.hv_weight)
        return fg_distance_loss(y_true, y_pred, self.distance_weight)

    def get_config(self):
        return {**super().get_config(), "head": self.head, "distance_weight": self.distance_weight,
                "hv_weight": self.hv_weight}


def _fg_classes3(y_true, y_pred):
    t, _, p = _unpack(y_true, y_pred)
    return dice_coefficient(1.0 - t[..., 0], 1.0 - p[..., 0])


def _fg_fg_distance(y_true, y_pred):
    t, _, p = _unpack(y_true, y_pred)
    return dice_coefficient(t[..., 0], p[..., 0])


def _boundary_dice(y_true, y_pred):
    t, _, p = _unpack(y_true, y_pred)
    return dice_coefficient(t[..., 2], p[..., 2])


def _distance_mae(y_true, y_pred):
    t, _, p = _unpack(y_true, y_pred)
    return ops.mean(ops.abs(p[..., 1] - t[..., 1]))


def _hv_mae(y_true, y_pred):
    t, _, p = _unpack(y_true, y_pred)
    return ops.mean(ops.abs(p[..., 3:] - t[..., 3:]))


def instance_training_metrics(head):
    """Training metrics of an instance head: foreground Dice (named ``dice_coefficient``) and
    ``boundary_dice`` (classes3, classes3_hv; plus ``hv_mae``) or ``distance_mae`` (fg_distance)."""
    wrap = keras.metrics.MeanMetricWrapper
    if head == "classes3":
        return [wrap(_fg_classes3, name="dice_coefficient"), wrap(_boundary_dice, name="boundary_dice")]
    if head == "classes3_hv":
        return [wrap(_fg_classes3, name="dice_coefficient"), wrap(_boundary_dice, name="boundary_dice"),
                wrap(_hv_mae, name="hv_mae")]
    return [wrap(_fg_fg_distance, name="dice_coefficient"), wrap(_distance_mae, name="distance_mae")]
