"""Forward pass on another engine (issue 16, item 5): OpenVINO against TensorFlow, same model, same input.

The model is exported with Keras 3's own ``model.export(..., format="openvino")`` and compiled for the CPU in
float32 (``INFERENCE_PRECISION_HINT f32``: the same numbers as TensorFlow's float32 pass, not bf16). Both
engines run the input ``nanoseg predict`` makes of a 1024 x 768 micrograph (one mirror-padded 800 x 1088
pass); best of ``--runs`` after a warm-up; the largest absolute difference of the two outputs is reported.
OpenVINO is not a dependency of nanoseg: ``pip install openvino`` first.

    python bench/predict_engine.py --model bench/.work/lowres/none/cv/fold_0/model

Writes bench/results/predict_engine.json and .md (machine and date in the file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, runs: int) -> tuple[float, list[float]]:
    """Warm-up call, then the fastest of ``runs`` timed calls (seconds) and all of them."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    import keras
    import openvino as ov
    import tensorflow as tf

    from nanoseg.machine import cpu_model
    from nanoseg.model.network import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/final")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    model, meta = load_model(ROOT / args.model)
    x = np.random.default_rng(0).random((1, 800, 1088, 1), dtype=np.float32)
    forward = tf.function(lambda t: tf.cast(model(t, training=False), tf.float32),  # as Predictor runs it
                          input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
    y_tf = forward(x).numpy()
    tf_s, tf_runs = best_of(lambda: forward(x).numpy(), args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model.export(f"{tmp}/model.xml", format="openvino", verbose=False,
                     input_signature=[keras.InputSpec(shape=(None, None, None, 1), dtype="float32")])
        export_s = time.perf_counter() - start
        compiled = ov.Core().compile_model(f"{tmp}/model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                         "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        run = lambda: request.infer({0: x})[compiled.output(0)]  # noqa: E731
        y_ov = run()
        ov_s, ov_runs = best_of(run, args.runs)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores", "model": args.model,
              "members": meta.get("members"), "input": list(x.shape), "tensorflow": tf.__version__,
              "openvino": ov.__version__, "tf_s": tf_s, "tf_runs": tf_runs, "ov_s": ov_s, "ov_runs": ov_runs,
              "export_s": export_s, "max_abs_diff": float(np.abs(y_ov - y_tf).max())}
    (ROOT / "bench/results/predict_engine.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Forward pass: OpenVINO vs TensorFlow ({record['date']}, {record['machine']})", "",
             f"Model `{args.model}`, input {record['input']} (a 1024 x 768 micrograph's mirror-padded pass), float32 "
             f"on both; TensorFlow {record['tensorflow']}, OpenVINO {record['openvino']}; best of {args.runs} after a "
             "warm-up.", "",
             "| engine | s / pass | runs (s) | vs TensorFlow |", "|---|---:|---|---:|",
             f"| TensorFlow (traced tf.function, as Predictor) | {tf_s:.2f} | "
             f"{', '.join(f'{t:.2f}' for t in tf_runs)} | 1.00x |",
             f"| OpenVINO (Keras export, CPU, f32) | {ov_s:.2f} | {', '.join(f'{t:.2f}' for t in ov_runs)} | "
             f"{tf_s / ov_s:.2f}x |", "",
             f"Export to OpenVINO IR: {export_s:.1f} s (once per model). Largest absolute difference of the "
             f"outputs: {record['max_abs_diff']:.1e}."]
    (ROOT / "bench/results/predict_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
