"""Inference speed of the ResNet50 U-Net on one 1024x768 SEM image (model only).

Compares :class:`nanoseg.inference.predictor.Predictor` (a traced ``tf.function``) in its
default mode (an image no bigger than a batch of tiles goes through in one
mirror-padded pass, 832 x 1088 here) and forced to overlapping tiles for a few
tile/overlap choices, with plain ``model.predict`` on the whole image (768 x 1024
is already a multiple of 32, so it needs no padding), in float32 and mixed
bfloat16.

The configurations are timed round-robin (each repeat runs every configuration
once) so that load from other processes on a shared machine spreads evenly over
them; the best run counts. The CPU seconds of the process (all threads) per
image are reported too: on a busy machine they vary less than wall time. Peak memory per configuration is the process's peak
resident set (VmHWM) during its runs, reset before each configuration through
``/proc/self/clear_refs``; the whole run's peak is
``resource.getrusage(RUSAGE_SELF).ru_maxrss``.

Usage::

    python bench/predict_speed.py [--repeats 2]

Writes ``bench/results/predict_speed.json`` and ``bench/results/predict_speed.md``.
Decoder (256, 128, 64, 32, 16), random weights (speed does not depend on them).
Runtime about 3 minutes on 2 idle CPU cores (6 minutes with --repeats 3 on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
SHAPE = (768, 1024)
# (precision, method, tile, overlap)
CONFIGS = [
    ("float32", "model.predict", None, None),
    ("float32", "Predictor single pass", 512, 64),
    ("float32", "Predictor tiles", 512, 64),
    ("float32", "Predictor tiles", 256, 32),
    ("mixed_bfloat16", "model.predict", None, None),
    ("mixed_bfloat16", "Predictor single pass", 512, 64),
]


def _image():
    import numpy as np

    bam = HERE.parents[1] / "shared/datasets/bam-tio2/Electron Microscopy Images/SEM"
    files = sorted(bam.glob("*.tif"))
    if files:
        from nanoseg.io.micrograph import read_micrograph

        return read_micrograph(files[0]).pixels[: SHAPE[0], : SHAPE[1]], files[0].name
    return np.random.default_rng(0).random(SHAPE, dtype=np.float32), "random"


def _peak_mib(reset=False):
    """The process's peak RSS in MiB since the last reset (Linux), or None."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _runner(models, precision, method, tile, overlap, image):
    import numpy as np

    from nanoseg.inference.predictor import Predictor

    model = models[precision]
    batch = image[None, ..., None].astype(np.float32)
    if method == "model.predict":
        return lambda: model.predict(batch, batch_size=1, verbose=0)
    predictor = Predictor(model, tile=tile, overlap=overlap, batch=4, single_pass=method.endswith("single pass"))
    return lambda: predictor.probability(image)


def run(repeats=2) -> dict:
    """Time every configuration; return ``{"meta": ..., "results": [...]}``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from nanoseg.model.network import build_unet

    image, name = _image()
    models = {}
    for precision in sorted({c[0] for c in CONFIGS}):
        keras.mixed_precision.set_global_policy(precision)
        models[precision] = build_unet(weights=None, decoder_filters=(256, 128, 64, 32, 16))
    keras.mixed_precision.set_global_policy("float32")
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows, runners = [], []
    for precision, method, tile, overlap in CONFIGS:
        fn = _runner(models, precision, method, tile, overlap, image)
        _peak_mib(reset=True)
        start = time.perf_counter()
        out = fn()  # warm-up: tracing, oneDNN kernel selection
        first = time.perf_counter() - start
        assert np.asarray(out).squeeze().shape == SHAPE
        rows.append({"precision": precision, "method": method, "tile": tile, "overlap": overlap,
                     "first_call_seconds": round(first, 3), "seconds_all": [], "peak_rss_mib": _peak_mib()})
        runners.append(fn)
        print(f"warm-up {precision} {method} {tile or ''}: {first:.2f} s", flush=True)
    for _ in range(repeats):
        for row, fn in zip(rows, runners):
            _peak_mib(reset=True)
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            row["seconds_all"].append(round(time.perf_counter() - start, 3))
            row.setdefault("cpu_seconds_all", []).append(round(time.process_time() - cpu, 2))
            peak = _peak_mib()
            if peak is not None:
                row["peak_rss_mib"] = round(max(peak, row["peak_rss_mib"] or 0))
    for row in rows:
        row["seconds_per_image"] = min(row["seconds_all"])
        row["cpu_seconds_per_image"] = min(row["cpu_seconds_all"])
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    meta = {"cpu": cpu or platform.processor(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "repeats": repeats, "date": time.strftime("%Y-%m-%d %H:%M"),
            "image": name, "image_shape": list(SHAPE), "decoder_filters": [256, 128, 64, 32, 16],
            "params": int(models["float32"].count_params()),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "rss_after_building_models_mib": round(rss_built),
            "peak_rss_whole_run_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    return {"meta": meta, "results": rows}


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Predict speed: ResNet50 U-Net, one {SHAPE[1]}x{SHAPE[0]} image, model only", "",
             f"{meta['cpu']}, {meta['cpus']} CPUs, TensorFlow {meta['tensorflow']}, {meta['date']}; "
             f"load average at the end {', '.join(f'{x:.1f}' for x in meta['load_average'] or [])}. "
             f"Best of {meta['repeats']} round-robin runs after a warm-up. Peak RSS: the process's peak "
             f"during that configuration (both models loaded: {meta['rss_after_building_models_mib']} MiB "
             f"before any prediction; whole run {meta['peak_rss_whole_run_mib']} MiB).", "",
             "| precision | method | tile / overlap | s / image | runs (s) | CPU s / image | first call s "
             "| peak RSS MiB |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in result["results"]:
        tiles = f"{r['tile']} / {r['overlap']}" if r["tile"] else "-"
        lines.append(f"| {r['precision']} | {r['method']} | {tiles} | {r['seconds_per_image']:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in r['seconds_all'])} | {r['cpu_seconds_per_image']:.1f} | "
                     f"{r['first_call_seconds']:.2f} | "
                     f"{r['peak_rss_mib']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    result = run(args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "predict_speed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
