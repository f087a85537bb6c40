"""The segmentation network: the "modified U-Net" of Sanan & Isaac.

A U-Net whose encoder is the ImageNet ResNet50 of ``keras.applications``
(``include_top=False``) and whose decoder upsamples back to full resolution,
joining the encoder features of the same scale (skip connections).

Layers (``H, W`` divisible by 32; ``f = decoder_filters``)::

    input        (H, W, 1)      grayscale in [0, 1] (the raw image)
    preprocess   (H, W, 3)      x255, repeat to 3 channels, subtract the ImageNet
                                BGR mean: exactly ``resnet50.preprocess_input``
    encoder      ResNet50, a nested model named "encoder", outputs
                 conv1_relu        1/2   64 ch   skip 4
                 conv2_block3_out  1/4  256 ch   skip 3
                 conv3_block4_out  1/8  512 ch   skip 2
                 conv4_block6_out  1/16 1024 ch  skip 1
                 conv5_block3_out  1/32 2048 ch  bottleneck
    decoder      level i = 1..5: Conv2DTranspose(f[i-1], 2x2, stride 2)
                 -> concatenate with skip i (level 5, full resolution: the
                 input image) -> 2 x (Conv2D 3x3 -> BatchNorm -> ReLU), f[i-1] filters
    head         Conv2D 1x1 (out_channels) -> sigmoid ("paper", 1 channel; "instance"
                 with head "fg_distance", 2 channels: foreground, normalised
                 distance) or softmax ("instance" with head "classes3", 3
                 channels: background, interior, separating boundary; see
                 :mod:`nanoseg.model.targets`) or both ("instance" with head
                 "classes3_hv", 5 channels: the softmax of classes3 and two
                 sigmoid HoVer maps, :class:`ClassesAndVectors`), computed in
                 float32 even under mixed_bfloat16

Callers and the served model pass raw images in [0, 1]; no preprocessing
outside. The preprocessing uses built-in layers only, so a saved model loads
with plain ``keras.saving.load_model(..., compile=False)`` (no custom objects);
a ``classes3_hv`` model needs this module imported first (its output layer
:class:`ClassesAndVectors` is registered here), as :func:`load_model` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
from keras import layers

from nanoseg.atomic import atomic_path
from nanoseg.errors import NanosegError

SKIPS = ("conv4_block6_out", "conv3_block4_out", "conv2_block3_out", "conv1_relu")
BOTTLENECK = "conv5_block3_out"
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
VARIANTS = ("paper", "instance")
HEADS = {"classes3": (3, "softmax"), "fg_distance": (2, "sigmoid"),  # instance head: channels, activation
         "classes3_hv": (5, "classes3_hv")}
MODEL_FILE = "model.keras"
METADATA_FILE = "nanoseg.json"
_HOW_TO_GET_WEIGHTS = (
    "Point model.weights in params.yaml at the ImageNet ResNet50 file described in "
    "shared/weights/README.md (resnet50_imagenet_notop.weights.h5), or use "
    'weights="imagenet" on a machine with internet access (Keras downloads it).'
)


def _encoder(weights):
    """ResNet50 trunk returning the skip features and the bottleneck."""
    if weights not in (None, "imagenet"):
        path = Path(weights)
        if not path.is_file():
            raise NanosegError(f"{path}: ResNet50 weights file not found. {_HOW_TO_GET_WEIGHTS}")
        weights = str(path)
    try:
        resnet = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=(None, None, 3)
        )
    except Exception as exc:  # OSError/ValueError for bad files; a plain Exception for a failed download
        what = "cannot download" if weights == "imagenet" else "cannot load"
        raise NanosegError(
            f"{weights}: {what} the ResNet50 weights ({type(exc).__name__}: {exc}). {_HOW_TO_GET_WEIGHTS}"
        ) from None
    outputs = [resnet.get_layer(name).output for name in (BOTTLENECK, *SKIPS)]
    return keras.Model(resnet.input, outputs, name="encoder")


@keras.saving.register_keras_serializable(package="nanoseg")
class ClassesAndVectors(layers.Layer):
    """Output activation of the ``classes3_hv`` head: softmax over the first 3 channels
    (background / interior / boundary), sigmoid on the other 2 (the HoVer maps, encoded (v + 1) / 2)."""

    def call(self, x):
        return keras.ops.concatenate([keras.ops.softmax(x[..., :3], axis=-1), keras.ops.sigmoid(x[..., 3:])], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def _conv_bn_relu(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_unet(variant="paper", weights=None, decoder_filters=(256, 128, 64, 32, 16),
               input_shape=(None, None, 1), out_channels=1, head=None) -> keras.Model:
    """Build the ResNet50 U-Net.

    Parameters
    ----------
    variant : {"paper", "instance"}
        "paper": one sigmoid channel (particle probability). "instance": the
        outputs of ``head``.
    weights : None, "imagenet" or path
        Encoder weights: None (random, tests), a ``.weights.h5`` file for
        ``ResNet50(include_top=False)`` (already resolved by the caller), or
        "imagenet" (Keras download, needs internet).
    decoder_filters : sequence of 5 int
        Filters of the decoder levels, from 1/16 up to full resolution.
    input_shape : tuple
        (H, W, 1); H and W None or divisible by 32.
    out_channels : int
        Output channels of the paper variant (instance heads set their own).
    head : {"classes3", "fg_distance", "classes3_hv"}, optional
        Instance variant only (default "classes3"): "classes3" softmax over
        background / interior / boundary; "fg_distance" two sigmoid channels,
        foreground probability and normalised distance to the particle outline;
        "classes3_hv" the classes3 softmax plus two sigmoid HoVer maps (5 channels).

    Returns
    -------
    keras.Model
        Input (N, H, W, 1) grayscale in [0, 1]; output (N, H, W, out_channels)
        float32 probabilities. Uses the current global dtype policy (see
        :func:`nanoseg.model.precision.configure_precision`).
    """
    if variant not in VARIANTS:
        raise NanosegError(f"model variant {variant!r} is unknown; use one of {VARIANTS} (params.yaml model.variant).")
    decoder_filters = tuple(int(f) for f in decoder_filters)
    if len(decoder_filters) != 5 or min(decoder_filters) < 1:
        raise NanosegError(
            f"model.decoder_filters must be 5 positive integers (1/16 ... full resolution), got {decoder_filters}."
        )
    act = "sigmoid"
    if variant == "instance":
        head = head or "classes3"
        if head not in HEADS:
            raise NanosegError(f"instance head {head!r} is unknown; use one of {tuple(HEADS)} "
                               "(params.yaml instance.head).")
        out_channels, act = HEADS[head]
    image = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Concatenate(name="gray_to_rgb", dtype="float32")([image, image, image])
    x = layers.Rescaling(255.0, offset=[-m for m in IMAGENET_BGR_MEAN], name="preprocess", dtype="float32")(x)
    x, *skips = _encoder(weights)(x)
    for level, (filters, skip) in enumerate(zip(decoder_filters, [*skips, image]), start=1):
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
        x = _conv_bn_relu(x, filters, f"dec{level}a")
        x = _conv_bn_relu(x, filters, f"dec{level}b")
    x = layers.Conv2D(out_channels, 1, name="head", dtype="float32")(x)
    if act == "classes3_hv":
        out = ClassesAndVectors(name="probability", dtype="float32")(x)
    else:
        out = layers.Activation(act, name="probability", dtype="float32")(x)
    return keras.Model(image, out, name=f"nanoseg_unet_{variant}")


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_model(model, folder, metadata: dict) -> Path:
    """Save ``model`` and its settings to ``folder``.

    Writes ``folder/model.keras`` and ``folder/nanoseg.json`` (``metadata``
    plus keras version and parameter count). Both files are written under temporary
    names (:func:`nanoseg.atomic.atomic_path`) and renamed only when both are complete, so a
    failure leaves no half-written model.

    Returns
    -------
    Path
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"keras_version": keras.__version__, "params": int(model.count_params()),
            "dtype_policy": model.dtype_policy.name, **dict(metadata)}
    with atomic_path(folder / MODEL_FILE) as tmp_model, atomic_path(folder / METADATA_FILE) as tmp_meta:
        model.save(tmp_model)
        tmp_meta.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    return folder


def load_model(folder):
    """Load a model saved by :func:`save_model`, for inference.

    Parameters
    ----------
    folder : path-like
        The model folder (or its ``model.keras`` file).

    Returns
    -------
    model : keras.Model
        Not compiled (no custom losses needed).
    metadata : dict
        The content of ``nanoseg.json``.
    """
    folder = Path(folder)
    if folder.is_file() and folder.name == MODEL_FILE:
        folder = folder.parent
    hint = "train one (dvc repro / nanoseg train) or pass the folder written by it"
    if not folder.is_dir():
        raise NanosegError(f"{folder}: model folder not found; {hint}.")
    for name in (MODEL_FILE, METADATA_FILE):
        if not (folder / name).is_file():
            raise NanosegError(f"{folder}: not a nanoseg model folder ({name} is missing); {hint}.")
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise NanosegError(f"{folder / METADATA_FILE}: unreadable model settings ({exc}); save the model again.") from None
    try:
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    except Exception as exc:  # keras raises many types for damaged files
        raise NanosegError(
            f"{folder / MODEL_FILE}: cannot load the model ({type(exc).__name__}: {exc}); "
            "the file is damaged or from an incompatible Keras version; save or train it again."
        ) from None
    return model, metadata
