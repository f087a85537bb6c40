"""The ResNet50 U-Net: shapes, precision, ImageNet weights, save/load."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.model.losses import dice_coefficient, dice_loss
from nanoseg.model.network import build_unet, load_model, save_model
from nanoseg.model.precision import configure_precision, preferred_policy, with_policy
from tests.conftest import WEIGHTS, needs_weights

TINY = (16, 16, 8, 8, 8)


@pytest.fixture(autouse=True)
def float32_policy():
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def tiny():
    keras.mixed_precision.set_global_policy("float32")
    return build_unet(weights=None, decoder_filters=TINY)


def test_output_shape_dtype_and_range(tiny):
    x = np.random.default_rng(0).random((2, 64, 96, 1), dtype=np.float32)
    y = tiny(x).numpy()
    assert y.shape == (2, 64, 96, 1) and y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert tiny.input_shape == (None, None, None, 1)


def test_grayscale_preprocessing_is_resnet_preprocess_input(tiny):
    pre = keras.Model(tiny.input, tiny.get_layer("preprocess").output)
    x = np.random.default_rng(1).random((1, 32, 32, 1), dtype=np.float32)
    expected = keras.applications.resnet50.preprocess_input(np.repeat(x * 255.0, 3, axis=-1))
    np.testing.assert_allclose(pre(x).numpy(), expected, atol=1e-4)


def test_decoder_levels_use_the_documented_skips(tiny):
    enc = tiny.get_layer("encoder")
    assert [t.shape[-1] for t in enc.outputs] == [2048, 1024, 512, 256, 64]
    assert tiny.get_layer("dec1_up").filters == 16 and tiny.get_layer("dec5b_conv").filters == 8


def test_bf16_output_is_float32():
    assert configure_precision(True) == "mixed_bfloat16"
    model = build_unet(weights=None, decoder_filters=TINY)
    assert model.get_layer("dec1a_conv").compute_dtype == "bfloat16"
    y = model(np.zeros((1, 32, 32, 1), np.float32))
    assert y.dtype == "float32"
    f32 = with_policy(model, "float32")
    assert f32.get_layer("dec1a_conv").compute_dtype == "float32"
    np.testing.assert_allclose(f32(np.zeros((1, 32, 32, 1), np.float32)).numpy(), y.numpy(), atol=0.05)


def test_configure_precision_modes():
    assert configure_precision(False) == "float32"
    assert configure_precision("auto") in ("float32", "mixed_bfloat16")
    assert preferred_policy("true") == "mixed_bfloat16"
    with pytest.raises(NanosegError, match="unknown"):
        configure_precision("fast")


def test_variants():
    model = build_unet("instance", weights=None, decoder_filters=TINY)
    y = model(np.random.default_rng(2).random((1, 32, 32, 1), dtype=np.float32)).numpy()
    assert y.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(NanosegError, match="variant"):
        build_unet("unet++", weights=None)
    with pytest.raises(NanosegError, match="decoder_filters"):
        build_unet(weights=None, decoder_filters=(8, 8))


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "resnet.weights.h5"
    with pytest.raises(NanosegError) as err:
        build_unet(weights=str(missing), decoder_filters=TINY)
    assert str(missing) in str(err.value) and "README" in str(err.value)


def test_unreadable_weights_file(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(NanosegError, match="bad.weights.h5"):
        build_unet(weights=str(bad), decoder_filters=TINY)


def test_weights_file_loads_into_the_encoder(tmp_path):
    """The .weights.h5 loading path without ../shared: a file saved from a seeded, randomly initialised trunk."""
    keras.utils.set_random_seed(3)
    trunk = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "resnet50_random_notop.weights.h5"
    trunk.save_weights(path)
    keras.utils.set_random_seed(4)
    encoder = build_unet(weights=str(path), decoder_filters=TINY, input_shape=(64, 64, 1)).get_layer("encoder")
    for name in ("conv1_conv", "conv5_block3_3_conv"):
        np.testing.assert_array_equal(encoder.get_layer(name).kernel.numpy(), trunk.get_layer(name).kernel.numpy())


@needs_weights
def test_imagenet_weights_file_loads():
    model = build_unet(weights=str(WEIGHTS), decoder_filters=TINY, input_shape=(64, 64, 1))
    kernel = model.get_layer("encoder").get_layer("conv1_conv").kernel.numpy()
    with h5py.File(WEIGHTS, "r") as f:
        expected = f["layers/conv2d/vars/0"][()]
    assert np.abs(kernel).max() > 0
    np.testing.assert_array_equal(kernel, expected)
    assert model(np.full((1, 64, 64, 1), 0.5, np.float32)).shape == (1, 64, 64, 1)


def test_save_load_roundtrip_without_custom_objects(tiny, tmp_path):
    tiny.compile(optimizer="adam", loss=dice_loss, metrics=[dice_coefficient])
    folder = save_model(tiny, tmp_path / "m", {"threshold": 0.4, "variant": "paper", "tile": np.int64(256)})
    assert sorted(p.name for p in folder.iterdir()) == ["model.keras", "nanoseg.json"]
    model, meta = load_model(folder)
    assert meta["threshold"] == 0.4 and meta["tile"] == 256 and meta["params"] == tiny.count_params()
    x = np.random.default_rng(3).random((1, 64, 64, 1), dtype=np.float32)
    np.testing.assert_allclose(model(x).numpy(), tiny(x).numpy(), atol=1e-6)
    plain = keras.saving.load_model(folder / "model.keras", compile=False)  # no custom objects
    np.testing.assert_allclose(plain(x).numpy(), tiny(x).numpy(), atol=1e-6)


def test_load_errors(tmp_path):
    with pytest.raises(NanosegError, match="not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanosegError, match="model.keras is missing"):
        load_model(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.keras").write_bytes(b"garbage")
    (broken / "nanoseg.json").write_text("{}")
    with pytest.raises(NanosegError, match="cannot load the model"):
        load_model(broken)
