"""Dice loss, Dice coefficient and BCE + Dice on known tensors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.losses import bce_dice_loss, bce_loss, dice_coefficient, dice_loss, get_loss


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
    for fn in (dice_loss, dice_coefficient, bce_dice_loss, bce_loss):
        assert keras.backend.standardize_dtype(fn(t, p).dtype) == "float32"


def test_bce_dice_is_sum():
    t = np.array([[1.0, 0.0]], np.float32)
    p = np.array([[0.8, 0.3]], np.float32)
    bce = -(np.log(0.8) + np.log(0.7)) / 2
    assert f(bce_dice_loss(t, p)) == pytest.approx(bce + f(dice_loss(t, p)), rel=1e-5)


def test_get_loss():
    assert get_loss("dice") is dice_loss
    with pytest.raises(NanosegError, match="train.loss"):
        get_loss("focal")
