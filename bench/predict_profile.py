"""Where the time of ``nanoseg predict`` goes, end to end, with the published model (issue 16 item 5).

Runs ``nanoseg predict``'s own code in this process (:func:`nanoseg.cli.predict.predict_command`) on the
test images, with a timer around each step of the path — the step functions are wrapped where
the path looks them up, nothing else changes:

* ``read``: :func:`nanoseg.io.micrograph.read_micrograph` (TIFF decode, pixel size, data bar)
* ``forward``: :meth:`nanoseg.inference.predictor.Predictor.probability` (polarity and zoom excluded)
* ``decode``: :func:`nanoseg.postprocess.decode.segment` (threshold / watershed decoder)
* ``measure``: :func:`nanoseg.measure.particles.particle_table` (regionprops, nm)
* ``image files``: :func:`nanoseg.report.results.write_image_files` (mask PNG, labels TIFF, overlay PNG)
* ``run files``: :func:`nanoseg.report.results.write_run_files` (particles.csv, psd.png, bootstrap fit)
* ``other``: everything else inside the command (polarity, zoom, checks, the output folder)

Model loading is timed apart (once per run, not per image). Each configuration is a fresh process
(``--config``), so the second one does not find TensorFlow warm. Reported per image: wall seconds
and, for the forward pass, CPU seconds (all threads; on a shared machine they vary less than wall).

Configurations: ``default`` (what users run); ``tiles`` (the single mirror-padded pass turned off:
overlapping 512 x 512 tiles); ``xla`` (the traced forward compiled with XLA, ``jit_compile=True``).
In the default configuration the forward pass is split further: the shared ImageNet encoder alone on
the same padded input, timed after the run (an ensemble of fold models whose encoders are identical
runs it once and repeats only the decoders).

Usage::

    python bench/predict_profile.py [--model models/final] [--images 6]

Writes ``bench/results/predict_profile.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEPS = ("read", "forward", "decode", "measure", "image files", "run files")
CONFIGS = ("default", "tiles", "xla")


def test_images(n: int) -> list[Path]:
    """The first ``n`` images of the prepared test split (``prepared/manifest.csv``), else of ../shared."""
    import csv

    manifest = REPO / "prepared/manifest.csv"
    if manifest.is_file():
        with manifest.open() as fh:
            paths = [REPO / r["image_path"] for r in csv.DictReader(fh) if r["split"] == "test"]
        if paths:
            return paths[:n]
    bam = REPO.parent / "shared/datasets/bam-tio2/Electron Microscopy Images/SEM"
    return sorted(bam.glob("*.tif"))[:n]


class Timers:
    def __init__(self):
        self.wall = {s: 0.0 for s in STEPS}
        self.cpu = {s: 0.0 for s in STEPS}

    def wrap(self, owner, name: str, step: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.wall[step] += time.perf_counter() - w
                self.cpu[step] += time.process_time() - c

        setattr(owner, name, timed)


def run_config(config: str, model: str, paths: list[Path]) -> dict:
    """One configuration in this process: load the model, predict ``paths`` as ``nanoseg predict`` does."""
    import nanoseg.cli.predict as cli_predict
    import nanoseg.inference.loading as loading
    import nanoseg.io.micrograph as micrograph
    import nanoseg.measure.particles as particles
    import nanoseg.postprocess.decode as decode
    import nanoseg.report.results as results
    from nanoseg.inference.predictor import Predictor
    from nanoseg.machine import cpu_model

    timers = Timers()
    timers.wrap(micrograph, "read_micrograph", "read")
    timers.wrap(Predictor, "probability", "forward")
    timers.wrap(decode, "segment", "decode")
    timers.wrap(particles, "particle_table", "measure")
    timers.wrap(cli_predict, "write_image_files", "image files")
    timers.wrap(cli_predict, "write_run_files", "run files")
    original_load = loading.load_predictor
    loaded = {}

    def load(ref, **kw):
        w = time.perf_counter()
        predictor, settings = original_load(ref, **kw)
        if config == "tiles":
            predictor.single_pass = False
        if config == "xla":
            import tensorflow as tf

            model = predictor.model
            predictor._forward = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32),
                                             jit_compile=True,
                                             input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
        loaded["predictor"] = predictor
        loaded["s"] = time.perf_counter() - w
        return predictor, settings

    cli_predict.load_predictor = load
    with tempfile.TemporaryDirectory(prefix="nanoseg-profile-") as tmp:
        args = SimpleNamespace(images=[str(p) for p in paths], model=model, out=str(Path(tmp) / "out"),
                               overwrite=False, pixel_size=None, databar_row=None, max_pixels=None, tta=False,
                               spread=False, roi=False, scale="auto", polarity="auto")
        w0, c0 = time.perf_counter(), time.process_time()
        rc = cli_predict.predict_command(args)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        summary = json.loads((Path(tmp) / "out/summary.json").read_text())
    n = len(paths)
    wall -= loaded["s"]
    encoder = _encoder_seconds(loaded["predictor"], paths[0]) if config == "default" else None
    steps = {s: timers.wall[s] / n for s in STEPS}
    steps["other"] = max(0.0, wall / n - sum(steps.values()))
    return {"config": config, "rc": rc, "images": n, "load_s": loaded["s"], "per_image_s": wall / n,
            "cpu_per_image_s": (cpu - 0) / n, "steps_s": steps, "forward_cpu_s": timers.cpu["forward"] / n,
            "particles": [i["particles"] for i in summary["images"]], "encoder_s": encoder, "cpu": cpu_model(),
            "cpus": os.cpu_count()}


def _encoder_seconds(predictor, path: Path) -> dict | None:
    """Wall and CPU seconds (best of 3) of the model's ``encoder`` layer alone on the padded single-pass input
    of ``path``, and of the whole model on the same input; None for a model without such a layer."""
    import numpy as np
    import tensorflow as tf

    from nanoseg.io.micrograph import read_micrograph

    try:
        encoder = predictor.model.get_layer("encoder")
    except ValueError:
        return None
    rows, cols = predictor._tile_for(read_micrograph(path).sample.shape)
    x = np.zeros((1, rows, cols, 1), np.float32)
    spec = [tf.TensorSpec((None, None, None, 1), tf.float32)]
    runs = {"encoder": tf.function(lambda t: encoder(tf.concat([t, t, t], -1), training=False), input_signature=spec),
            "model": predictor._forward}
    out = {"input": [rows, cols]}
    for name, fn in runs.items():
        fn(x)
        best = (float("inf"), float("inf"))
        for _ in range(3):
            w, c = time.perf_counter(), time.process_time()
            fn(x)
            best = min(best, (time.perf_counter() - w, time.process_time() - c))
        out[name] = {"wall_s": best[0], "cpu_s": best[1]}
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Where `nanoseg predict`'s time goes ({result['model']})", "",
             f"{meta['cpu']}, {meta['cpus']} CPUs, {meta['date']}; load average before {meta['load_before']}, "
             f"after {meta['load_after']}. {result['images']} test images (1024 x 768 with data bar), one fresh "
             "process per configuration, model loading excluded (column *load*). Seconds per image; ratios to "
             "the default's end-to-end time.", "",
             "| configuration | end to end | " + " | ".join(STEPS) + " | other | forward CPU s | load s | "
             "particles equal |", "| --- | ---: | " + " | ".join("---:" for _ in STEPS) + " | ---: | ---: | ---: | --- |"]
    base = result["runs"][0]
    for r in result["runs"]:
        cells = [f"{r['steps_s'][s]:.2f} ({r['steps_s'][s] / base['per_image_s']:.0%})" for s in (*STEPS, "other")]
        same = "yes" if r["particles"] == base["particles"] else f"no {r['particles']}"
        lines.append(f"| {r['config']} | {r['per_image_s']:.2f} ({r['per_image_s'] / base['per_image_s']:.2f}x) | "
                     + " | ".join(cells) + f" | {r['forward_cpu_s']:.1f} | {r['load_s']:.1f} | {same} |")
    enc = base.get("encoder_s")
    if enc:
        rows, cols = enc["input"]
        e, m = enc["encoder"], enc["model"]
        lines += ["", f"The forward pass of the default configuration, split (one {rows} x {cols} mirror-padded "
                  f"input, best of 3): whole model {m['wall_s']:.2f} s ({m['cpu_s']:.1f} CPU s), the ImageNet "
                  f"encoder alone {e['wall_s']:.2f} s ({e['cpu_s']:.1f} CPU s, {e['wall_s'] / m['wall_s']:.0%}); "
                  f"the decoders take the other {1 - e['wall_s'] / m['wall_s']:.0%}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models/final"))
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--config", help=argparse.SUPPRESS)  # one configuration, in this process
    ap.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.config:
        print(json.dumps(run_config(args.config, args.model, [Path(p) for p in args.paths])))
        return 0
    from nanoseg.machine import cpu_model

    paths = test_images(args.images)
    load_before = os.getloadavg()
    runs = []
    for config in args.configs.split(","):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--config", config, "--paths",
                              *map(str, paths)], capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr[-3000:])
            return out.returncode
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{config}: {runs[-1]['per_image_s']:.2f} s/image", file=sys.stderr)
    result = {"model": args.model, "images": len(paths), "runs": runs,
              "meta": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "load_before": [round(x, 1) for x in load_before],
                       "load_after": [round(x, 1) for x in os.getloadavg()]}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/predict_profile.json").write_text(json.dumps(result, indent=1))
    (HERE / "results/predict_profile.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
