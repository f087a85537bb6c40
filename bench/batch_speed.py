"""Throughput of ``nanoseg batch`` on Spark against sequential ``nanoseg predict``, on the same images.

Configurations, each a fresh process timed end to end (start-up, model loading and writing included),
on the same cropped micrographs and the same model:

* ``nanoseg predict IMAGES`` — one process, TensorFlow on every core;
* ``nanoseg batch DIR --master local[1]`` and ``--master local[2]`` — the mapInPandas executors
  (model loaded once per executor process, the cores shared by the tasks running at once);
* MLflow's own ``mlflow.pyfunc.spark_udf`` (``env_manager="local"``) on ``local[2]`` over the same
  ``binaryFile`` rows (base64, the served model's request format), as the alternative it was measured
  against (``--skip-udf`` leaves it out).

Reported: wall seconds, images/s end to end, and the seconds the per-image code itself took
(``predict_one``: ``summary.json`` / ``images.parquet`` ``seconds``), so start-up can be told from
per-image work. The particle counts of every configuration are checked against predict's.

Usage::

    python bench/batch_speed.py [--model models/final] [--label TEXT] [--images 8] [--skip-udf]

Images: crops of 512 x 384 px of the sample area (plus the data bar) of the held-out test images of
``prepared/split.json`` (two per image), or of the first images of the dataset folder; pixel size as
TIFF resolution. Writes ``bench/results/batch_speed.json`` and ``bench/results/batch_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nanoseg.machine import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BAM = REPO.parent / "shared/datasets/bam-tio2"
CROP = (384, 512)  # rows, cols of the sample area kept
PX_PER_CM = 1e7 / 7.34375


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` crops (two windows per image) of the test images, 8-bit TIFF with their data bar."""
    import numpy as np
    import tifffile

    from nanoseg.io.micrograph import read_micrograph

    images = BAM / "Electron Microscopy Images/SEM"
    split = REPO / "prepared/split.json"
    if not split.is_file():
        split = REPO.parent / "main/prepared/split.json"
    stems = json.loads(split.read_text())["test"] if split.is_file() else []
    files = [images / f"{s}.tif" for s in stems if (images / f"{s}.tif").is_file()] or sorted(images.glob("*.tif"))
    if not files:
        raise SystemExit(f"no images in {images}: the benchmark needs the BAM dataset (../shared)")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        mg = read_micrograph(files[(k // 2) % len(files)])
        rows, cols = CROP
        r0 = 0 if k % 2 == 0 else max(0, mg.databar_row - rows)
        c0 = 0 if k % 2 == 0 else max(0, mg.width - cols)
        sample = mg.pixels[r0 : r0 + rows, c0 : c0 + cols]
        bar = mg.pixels[mg.databar_row :, c0 : c0 + cols]
        path = folder / f"crop{k:02d}_{files[(k // 2) % len(files)].stem}.tif"
        tifffile.imwrite(path, (np.concatenate([sample, bar]) * 255).round().astype(np.uint8),
                         resolution=(PX_PER_CM, PX_PER_CM), resolutionunit="CENTIMETER")
        out.append(path)
    return out


def _timed(cmd: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return wall


def udf_run(folder: str, pyfunc: str) -> None:
    """The spark_udf configuration (run in its own process by :func:`main`): prints the counts as JSON."""
    import warnings

    import mlflow
    from pyspark.sql import functions as F

    from nanoseg.pipeline.batch import spark_session

    warnings.simplefilter("ignore", FutureWarning)
    spark = spark_session("local[2]", {"spark.sql.chunkBase64String.enabled": "false"},
                          Path(tempfile.gettempdir()) / "nanoseg-bench-udf-spark.log")
    try:
        frame = (spark.read.format("binaryFile").load(folder)
                 .select(F.base64("content").alias("image"), F.element_at(F.split("path", "/"), -1).alias("name")))
        udf = mlflow.pyfunc.spark_udf(spark, pyfunc, env_manager="local",
                                      result_type="name string, width long, height long, unit string")
        rows = frame.select(udf("image", "name").alias("r")).select("r.*").collect()
        print(json.dumps({"images": len(rows)}))
    finally:
        spark.stop()


def run(model: str, n: int, skip_udf: bool, label: str | None = None) -> dict:
    import pandas as pd

    from nanoseg import tracking

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "2",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    nanoseg = [sys.executable, "-m", "nanoseg"]
    results, load_before = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nanoseg-bench-batch-") as tmp:
        tmp = Path(tmp)
        files = make_images(tmp / "images", n)
        wall = _timed([*nanoseg, "predict", *map(str, files), "--model", model, "--out", str(tmp / "predict")], env,
                      tmp / "predict.log")
        summary = json.loads((tmp / "predict" / "summary.json").read_text())
        counts = {i["image"]: i["particles"] for i in summary["images"]}
        results.append({"config": "nanoseg predict (sequential, 1 process)", "wall_s": wall,
                        "per_image_s": sum(i["seconds"] for i in summary["images"]), "counts_equal": True})
        for master in ("local[1]", "local[2]"):
            out = tmp / f"batch-{master[6]}"
            wall = _timed([*nanoseg, "batch", str(tmp / "images"), "--out", str(out), "--model", model, "--master",
                           master], env, tmp / f"batch-{master[6]}.log")
            table = pd.read_parquet(out / "images.parquet")
            results.append({"config": f"nanoseg batch --master {master} (mapInPandas)", "wall_s": wall,
                            "per_image_s": float(table["seconds"].sum()),
                            "counts_equal": dict(zip(table["image"], table["n_particles"])) == counts})
        if not skip_udf:
            folder = Path(model) if Path(model).is_dir() else tracking.download_model(model, tmp / "model")
            from nanoseg.serving.pyfunc import save_pyfunc

            pyfunc = save_pyfunc(folder, tmp / "pyfunc")
            wall = _timed([sys.executable, __file__, "--udf-run", str(tmp / "images"), str(pyfunc)], env,
                          tmp / "udf.log")
            results.append({"config": "mlflow.pyfunc.spark_udf, local[2] (env_manager local)", "wall_s": wall,
                            "per_image_s": None, "counts_equal": None})
    for r in results:
        r["images_per_s"] = n / r["wall_s"]
    return {"images": n, "image_px": f"{CROP[1]} x {CROP[0]} + data bar", "model": label or f"`{model}`",
            "results": results,
            "meta": {"cpu": cpu_model(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "load_average_before": load_before, "load_average_after": os.getloadavg(),
                     "python": platform.python_version()}}


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# nanoseg batch: images/s on Spark against sequential nanoseg predict",
        "",
        f"`python bench/batch_speed.py`, {meta['date']}, {meta['cpu']} ({meta['cpus']} cores, shared with other "
        f"jobs: load average {', '.join(f'{x:.1f}' for x in meta['load_average_before'])} before, "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average_after'])} after — read the numbers as relative). "
        f"{result['images']} crops of {result['image_px']} of the test images, model {result['model']}. "
        "Each configuration is one fresh process timed end to end (start-up, model loading, writing); "
        "'per-image code' is the time `predict_one` itself took, summed over the images (in the executors for "
        "the batch: several run at once).",
        "",
        "| configuration | wall (s) | images/s | per-image code (s, summed) | particle counts = predict's |",
        "| --- | --- | --- | --- | --- |",
    ]
    steady = []
    for r in result["results"]:
        code = "–" if r["per_image_s"] is None else f"{r['per_image_s']:.1f}"
        same = "–" if r["counts_equal"] is None else ("yes" if r["counts_equal"] else "**no**")
        lines.append(f"| {r['config']} | {r['wall_s']:.1f} | {r['images_per_s']:.3f} | {code} | {same} |")
        tasks = 2 if "local[2]" in r["config"] else 1
        if r["per_image_s"]:
            steady.append(f"{r['config'].split(' (')[0]} {result['images'] * tasks / r['per_image_s']:.2f}")
    if steady:
        lines += ["", "Images/s of the per-image code alone (start-up left out; two tasks at once on local[2]): "
                  + ", ".join(steady) + ". The rest of each wall time is start-up: the JVM, the executors' Python "
                  "workers importing TensorFlow and loading the model (once per executor process), and writing the "
                  "tables; it is paid once per run, so it matters less the more images a batch holds."]
    walls = {r["config"]: r["wall_s"] for r in result["results"]}
    udf = next((w for c, w in walls.items() if c.startswith("mlflow.pyfunc.spark_udf")), None)
    mapped = next((w for c, w in walls.items() if "local[2] (mapInPandas)" in c), None)
    if udf and mapped:
        lines += ["", f"On local[2], MLflow's `spark_udf` took {udf:.1f} s against {mapped:.1f} s for the "
                  f"mapInPandas executors ({(udf / mapped - 1) * 100:+.0f} %) on the same files and model: "
                  + ("the mapInPandas path is the faster one here" if mapped < udf else "spark_udf is the faster one "
                     "here") + ". (The spark_udf returns only fields of primitive type, not the particle rows, and "
                  "one bad file fails its whole Arrow batch: the pyfunc checks every image of a request first.)"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models/final"),
                        help="saved model folder or MLflow URI (default models/final)")
    parser.add_argument("--label", help="how the report names the model (default: the --model value)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--skip-udf", action="store_true", help="leave out the mlflow.pyfunc.spark_udf configuration")
    parser.add_argument("--udf-run", nargs=2, metavar=("FOLDER", "PYFUNC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.udf_run:
        udf_run(*args.udf_run)
        return 0
    result = run(args.model, args.images, args.skip_udf, args.label)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/batch_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results/batch_speed.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
