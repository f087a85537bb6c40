"""A tiny untrained ResNet50 U-Net saved like the train stage saves one, and an MLflow store holding it as
``nanoseg@champion``: the model the registry, serving and batch tests run."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

META = {"variant": "paper", "threshold": 0.5, "tile": 256, "overlap": 32, "mlflow_run_id": "train-run",
        "postprocess": {"opening_radius": 1, "min_area_nm2": 200.0, "split": False, "min_distance_px": 5}}


def save_tiny_model(folder):
    """An untrained ResNet50 U-Net with a tiny decoder, saved like the train stage does.

    The last decoder level is set by hand to pass the input image through, so the model
    thresholds brightness (particles are bright): its masks hold particles, as a trained one's do.
    """
    from nanoseg.model.network import build_unet, save_model
    from nanoseg.model.precision import configure_precision

    configure_precision(False)
    model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8, 8))
    for name, source in (("dec5a_conv", 8), ("dec5b_conv", 0)):  # dec5a sees [upsampled (8), image (1)]
        kernel = np.zeros(model.get_layer(name).kernel.shape, np.float32)
        kernel[1, 1, source, 0] = 1.0
        model.get_layer(name).kernel.assign(kernel)
    head = model.get_layer("head")
    kernel = np.zeros(head.kernel.shape, np.float32)
    kernel[0, 0, 0, 0] = 40.0
    head.kernel.assign(kernel)
    head.bias.assign(np.array([-40.0 * 0.45], np.float32))  # probability = sigmoid(40 (image - 0.45))
    return save_model(model, folder, META)


@contextmanager
def champion_store(root: Path):
    """A sqlite MLflow store under ``root`` with :func:`save_tiny_model`'s model logged as the served pyfunc and
    registered as ``nanoseg@champion``; ``MLFLOW_TRACKING_URI`` points at it while the context is open.

    Yields ``{"root", "uri", "folder"}``.
    """
    from nanoseg import tracking
    from nanoseg.serving.payload import input_example
    from nanoseg.serving.pyfunc import log_pyfunc

    uri = f"sqlite:///{root / 'mlruns/mlflow.db'}"
    folder = save_tiny_model(root / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.setup()
        with tracking.start_run("publish-test"):
            info = log_pyfunc(folder, input_example())
        tracking.set_alias(info.registered_model_version)
        yield {"root": root, "uri": uri, "folder": folder}
