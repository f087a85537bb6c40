"""Dice loss, Dice coefficient and the instance losses on known tensors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.model.losses import dice_coefficient, dice_loss


def f(x):
    return float(keras.ops.convert_to_numpy(x))


def test_dice_known_values():
    t = np.array([[1, 1, 0, 0]], np.float32)
    p = np.array([[1, 0, 1, 0]], np.float32)
    assert f(dice_coefficient(t, p, smooth=0.0)) == pytest.approx(0.5)
    assert f(dice_loss(t, p, smooth=0.0)) == pytest.approx(0.5)
    assert f(dice_loss(t, t)) == pytest.approx(0.0)
    assert f(dice_loss(t, 1 - t, smooth=0.0)) == pytest.approx(1.0)
    # soft Dice with smoothing: (2 * 0.5 + 1) / (1 + 1.5 + 1)
    assert f(dice_coefficient([[1.0, 0.0]], [[0.5, 1.0]])) == pytest.approx(2.0 / 3.5)


def test_dice_is_over_the_whole_batch():
    t = np.zeros((2, 4, 4, 1), np.float32)
    t[0] = 1
    p = t.copy()
    # sample 1 is empty in both: the batch-level Dice is perfect, not the mean of per-sample scores
    assert f(dice_coefficient(t, p, smooth=0.0)) == pytest.approx(1.0)
    assert f(dice_loss(np.zeros((1, 3)), np.zeros((1, 3)))) == pytest.approx(0.0)


def test_bfloat16_inputs_give_float32():
    t = keras.ops.cast(np.array([[1.0, 0.0, 1.0]]), "bfloat16")
    p = keras.ops.cast(np.array([[0.9, 0.1, 0.8]]), "bfloat16")
    for fn in (dice_loss, dice_coefficient):
        assert keras.backend.standardize_dtype(fn(t, p).dtype) == "float32"


# ----------------------------------------------------------------------------- instance variant


def _classes3_batch():
    from nanoseg.model.targets import make_targets

    mask = np.zeros((16, 16), bool)
    mask[2:14, 2:8] = mask[2:14, 9:14] = True  # two blocks apart by a 1-px line (column 8)
    onehot = make_targets(mask, "classes3")
    return onehot[None], mask


def test_classes3_loss_weights_make_boundary_errors_cost_more():
    from nanoseg.model.losses import InstanceLoss, classes3_loss

    onehot, _ = _classes3_batch()
    good = 0.9 * onehot + 0.1 / 3
    bad_boundary = good.copy()
    b = onehot[..., 2] == 1
    bad_boundary[b] = [0.1, 0.8, 0.1]  # boundary pixels predicted interior
    ones = np.ones(onehot.shape[:-1] + (1,), np.float32)
    heavy = np.where(b[..., None], 10.0, 1.0).astype(np.float32)
    plain = f(classes3_loss(np.concatenate([onehot, ones], -1), bad_boundary))
    weighted = f(classes3_loss(np.concatenate([onehot, heavy], -1), bad_boundary))
    assert f(classes3_loss(np.concatenate([onehot, ones], -1), good)) < plain < weighted
    # weights count: the cross-entropy part is sum(w * ce) / n
    ce = -np.sum(onehot * np.log(bad_boundary), -1)
    assert weighted - plain == pytest.approx(float(((heavy[..., 0] - 1) * ce).mean()), rel=1e-4)
    # without a weight channel every pixel weighs 1
    assert f(classes3_loss(onehot, bad_boundary)) == pytest.approx(plain, rel=1e-6)
    loss = InstanceLoss("classes3")
    assert f(loss(np.concatenate([onehot, ones], -1), bad_boundary)) == pytest.approx(plain, rel=1e-5)


def test_fg_distance_loss_and_config():
    from nanoseg.model.losses import InstanceLoss, dice_loss, fg_distance_loss

    t = np.zeros((1, 4, 4, 3), np.float32)
    t[..., 0, :2, 0] = 1.0
    t[..., 1] = t[..., 0] * 0.5
    t[..., 2] = 1.0
    p = np.stack([np.full((1, 4, 4), 0.5), np.zeros((1, 4, 4))], -1).astype(np.float32)
    bce = np.log(2.0)
    mse = (0.5**2 * 2) / 16
    expected = bce + f(dice_loss(t[..., 0], p[..., 0])) + 3.0 * mse
    assert f(fg_distance_loss(t, p, distance_weight=3.0)) == pytest.approx(expected, rel=1e-5)
    loss = InstanceLoss("fg_distance", distance_weight=3.0)
    assert f(loss(t, p)) == pytest.approx(expected, rel=1e-5)
    again = InstanceLoss.from_config(loss.get_config())
    assert again.head == "fg_distance" and again.distance_weight == 3.0
    with pytest.raises(NanosegError, match="head"):
        InstanceLoss("unet3")


def test_instance_losses_and_metrics_are_float32_under_bfloat16():
    from nanoseg.model.losses import classes3_loss, fg_distance_loss, instance_training_metrics

    onehot, _ = _classes3_batch()
    t = keras.ops.cast(np.concatenate([onehot, np.ones_like(onehot[..., :1])], -1), "bfloat16")
    p = keras.ops.cast(0.8 * onehot + 0.2 / 3, "bfloat16")
    assert keras.backend.standardize_dtype(classes3_loss(t, p).dtype) == "float32"
    assert keras.backend.standardize_dtype(fg_distance_loss(t[..., 1:], p[..., 1:]).dtype) == "float32"
    names = [m.name for m in instance_training_metrics("classes3")]
    assert names == ["dice_coefficient", "boundary_dice"]
    fg_dice = instance_training_metrics("classes3")[0]
    fg_dice.update_state(np.concatenate([onehot, np.ones_like(onehot[..., :1])], -1), onehot)
    assert f(fg_dice.result()) == pytest.approx(1.0)
    assert [m.name for m in instance_training_metrics("fg_distance")] == ["dice_coefficient", "distance_mae"]


def test_classes3_hv_loss_is_classes3_plus_the_hover_terms():
    from nanoseg.model.losses import InstanceLoss, classes3_hv_loss, classes3_loss, hv_loss, instance_training_metrics

    onehot, _ = _classes3_batch()
    rng = np.random.default_rng(0)
    hv_t = rng.random(onehot.shape[:-1] + (2,)).astype(np.float32)
    w = np.ones(onehot.shape[:-1] + (1,), np.float32)
    p3 = 0.8 * onehot + 0.2 / 3
    y_true = np.concatenate([onehot, hv_t, w], -1)
    exact = np.concatenate([p3, hv_t], -1).astype(np.float32)
    c3 = f(classes3_loss(np.concatenate([onehot, w], -1), p3))
    assert f(classes3_hv_loss(y_true, exact, hv_weight=2.0)) == pytest.approx(c3, rel=1e-5)  # maps right: no hv term
    shifted = exact.copy()
    shifted[..., 3:] += 0.1  # a constant offset: MSE 0.01, the gradients stay right
    assert f(hv_loss(hv_t, shifted[..., 3:], 1.0 - onehot[..., 0])) == pytest.approx(0.01, rel=1e-3)
    assert f(classes3_hv_loss(y_true, shifted, hv_weight=2.0)) == pytest.approx(c3 + 0.02, rel=1e-4)
    bumpy = exact.copy()
    bumpy[:, ::2, :, 3] += 0.1  # alternate rows: MSE 0.0025, and the gradients from row to row are wrong too
    focus = 1.0 - onehot[..., 0]
    assert f(hv_loss(hv_t, bumpy[..., 3:], focus)) > 1.5 * 0.0025
    loss = InstanceLoss.from_config(InstanceLoss("classes3_hv", hv_weight=2.0).get_config())
    assert loss.head == "classes3_hv" and loss.hv_weight == 2.0
    assert f(loss(y_true, shifted)) == pytest.approx(c3 + 0.02, rel=1e-4)
    assert [m.name for m in instance_training_metrics("classes3_hv")] == ["dice_coefficient", "boundary_dice", "hv_mae"]
