"""Numeric precision: mixed bfloat16 where the hardware runs it fast (AMX CPUs, recent GPUs), else float32.

:func:`configure_precision` sets the Keras policy for models built afterwards (training);
:func:`preferred_policy` and :func:`with_policy` run a saved model in the policy that is fast here (inference).
"""

from __future__ import annotations

from pathlib import Path

import keras

from nanoseg.errors import NanosegError


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def configure_precision(mode="auto") -> str:
    """Set the global Keras dtype policy for the models built afterwards.

    Parameters
    ----------
    mode : "auto", bool or str
        True / "true" / "mixed_bfloat16": mixed bfloat16. False / "false" /
        "float32": float32. "auto": mixed bfloat16 when the hardware runs it
        fast, else float32.

    Returns
    -------
    str
        The policy name set ("mixed_bfloat16" or "float32").

    Notes
    -----
    "auto" picks bfloat16 on a GPU with compute capability >= 8 and on CPUs
    with native bf16 instructions (/proc/cpuinfo flag avx512_bf16 or amx_bf16),
    where oneDNN runs bf16 convolutions faster than float32. Elsewhere it keeps
    float32: on an AVX2-only CPU (AMD EPYC, 2 cores, no AVX-512) the ResNet50
    U-Net ran 1.7-2.4x slower in bf16 for inference (one 512x512 tile, runs
    interleaved: 2.5-3.7 s vs 1.2-2.2 s; idle machine 1.65 s vs 0.69 s) and
    several times slower for a training step, because bf16 is emulated there;
    with avx512f alone oneDNN also emulates bf16, so it is not counted as fast.
    Pass True to force bf16 (e.g. to check a bf16-trained model).
    """
    policy = preferred_policy(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def preferred_policy(mode="auto") -> str:
    """The policy name :func:`configure_precision` would set, without setting it."""
    text = str(mode).strip().lower()
    if text in ("true", "1", "yes", "mixed_bfloat16", "bf16", "bfloat16"):
        return "mixed_bfloat16"
    if text in ("false", "0", "no", "float32", "fp32"):
        return "float32"
    if text == "auto":
        return "mixed_bfloat16" if _bf16_is_fast() else "float32"
    raise NanosegError(f"precision {mode!r} is unknown; use auto, true or false (params.yaml train.mixed_bf16).")


def _replace_policy(config, old, new):
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name") == old:
            return {**config, "config": {**config["config"], "name": new}}
        return {k: _replace_policy(v, old, new) for k, v in config.items()}
    if isinstance(config, list):
        return [_replace_policy(v, old, new) for v in config]
    return config


def with_policy(model, policy: str):
    """Return ``model`` computing in ``policy`` ("float32" or "mixed_bfloat16").

    Layers pinned to float32 (preprocessing, head) stay float32; the weights are
    copied (they are float32 under both policies). Returns ``model`` itself when
    nothing changes. Use it to run a model trained in bf16 on a CPU without
    fast bf16 (or the reverse).
    """
    old = "float32" if policy == "mixed_bfloat16" else "mixed_bfloat16"
    config = _replace_policy(model.get_config(), old, policy)
    if config == model.get_config():
        return model
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def _bf16_is_fast() -> bool:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        return tuple(capability) >= (8, 0)
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
