"""The ``nanoseg`` command line.

Each sub-command is a thin wrapper: it parses arguments and calls the ``*_command``
function of its own module in this package (``nanoseg.cli.info``, ``.data``, ``.predict``,
``.batch``, ``.tune``, ``.serve``, ``.app``, ``.request``; the pipeline stages' ``command`` in
``nanoseg.pipeline.stages``), imported lazily, so ``nanoseg info`` does not pay for
importing TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from nanoseg import __version__
from nanoseg.errors import report_errors

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _call(target: str):
    module, func = target.split(":")
    return lambda args: getattr(importlib.import_module(module), func)(args)


def _image_arguments(p: argparse.ArgumentParser) -> None:
    """IMAGE... with the pixel-size, data-bar and size-limit options (``info`` and ``predict``; checked by
    :func:`nanoseg.io.micrograph.image_options` before any image is read)."""
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--pixel-size", help="override the pixel size, e.g. 7.34nm or 0.00734um")
    p.add_argument("--databar-row", help="override the data-bar row: a whole number (the image height means no "
                   "data bar) or auto (default: detected)")
    p.add_argument("--max-pixels", help="largest image accepted, in pixels, e.g. 1e8 or 100M (default "
                   "$NANOSEG_MAX_PIXELS or 8192 x 8192 = 67.1M)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanoseg",
        description="Segment and measure nanoparticles in SEM micrographs.",
    )
    parser.add_argument("--version", action="version", version=f"nanoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="print size, pixel size and data-bar row of SEM images")
    _image_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_call("nanoseg.cli.info:info_command"))

    p = sub.add_parser("data", help="bring the raw dataset into data/ under DVC")
    p.add_argument("--source", help="dataset folder (default: data.source in params.yaml)")
    p.set_defaults(func=_call("nanoseg.cli.data:import_command"))

    for stage in ("prepare", "validate", "cv", "train", "evaluate", "publish"):
        p = sub.add_parser(stage, help=f"run the {stage} pipeline stage alone (dvc repro runs them all)")
        p.set_defaults(func=_call(f"nanoseg.pipeline.stages.{stage}:command"))

    p = sub.add_parser("predict", help="segment SEM images and measure every particle")
    _image_arguments(p)
    p.add_argument("--model", default="models/final",
                   help="saved model folder or MLflow model URI (models:/nanoseg@champion, runs:/...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder written by nanoseg predict (only such a folder)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="8-view test-time augmentation + uncertainty map (default: the model's own setting, "
                        "predict.tta when it was trained; --no-tta turns it off)")
    p.add_argument("--scale", default="auto", help="auto (default: resample to the model's training pixel size when "
                   "it differs by > 10 %%), off, or a zoom factor such as 0.5")
    p.add_argument("--polarity", default="auto", help="auto (default: detected per image), bright (particles "
                   "brighter than the background, SEM) or dark (darker: transmission, TEM bright field)")
    p.add_argument("--spread", action="store_true",
                   help="ensemble models: also write <stem>_spread.tif, the members' disagreement (std)")
    p.add_argument("--roi", action="store_true",
                   help="also write <stem>_rois.zip, a Fiji ROI set with one polygon per particle")
    p.set_defaults(func=_call("nanoseg.cli.predict:predict_command"))

    p = sub.add_parser("batch", help="segment and measure many micrographs on Spark: particles.parquet, "
                       "images.parquet, summary.json, psd.png (a rerun adds only the new files)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, files, quoted globs or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="results folder (created; running again adds the files not done)")
    p.add_argument("--model", help="model URI or saved model folder (default models:/nanoseg@champion)")
    p.add_argument("--master", help="Spark master: local[*] (default), local[N], spark://HOST:PORT or yarn")
    p.add_argument("--partitions", type=int, help="Spark partitions, each committed when finished (default: "
                   "4 images each, at least one per core)")
    p.add_argument("--conf", action="append", metavar="KEY=VALUE", help="a Spark setting, e.g. "
                   "spark.executor.memory=6g (repeatable)")
    p.add_argument("--recursive", action="store_true", help="folders: also the images in their sub-folders")
    p.add_argument("--masks", action="store_true", help="also keep each image's mask (DIR/masks/)")
    p.add_argument("--labels", action="store_true", help="also keep each image's instance labels (DIR/labels/)")
    p.add_argument("--retry-errors", action="store_true", help="analyse the files of error rows again")
    p.add_argument("--overwrite", action="store_true", help="start the folder again when it holds another "
                   "model's results (only a folder nanoseg batch wrote)")
    p.set_defaults(func=_call("nanoseg.cli.batch:batch_command"))

    p = sub.add_parser("tune", help="Optuna search over learning rate and batch size (trials as MLflow runs)")
    p.add_argument("--trials", type=int, help="study size: run until it has this many finished trials "
                   "(default tune.n_trials)")
    p.add_argument("--storage", help="sqlite file or SQLAlchemy URL of the study, e.g. "
                   "postgresql+psycopg2://user@host/db (default tune.storage)")
    p.add_argument("--study", help="study name (default tune.study + profile)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many minutes")
    p.set_defaults(func=_call("nanoseg.cli.tune:tune_command"))

    p = sub.add_parser("serve", help="serve a model over HTTP (MLflow's scoring server on uvicorn; POST /invocations)")
    p.add_argument("--model", help="model URI or saved model folder (default models:/nanoseg@champion)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only: "
                   "put a reverse proxy with authentication in front before binding anything else)")
    p.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    p.add_argument("--workers", type=int, help="server processes, each with its own copy of the model (default 1)")
    p.add_argument("--max-concurrent", type=int, help="requests a worker answers at once; more get HTTP 503 "
                   "(default 2)")
    p.add_argument("--timeout", type=int, help="seconds before a request is answered HTTP 504 (default 300)")
    p.set_defaults(func=_call("nanoseg.cli.serve:serve_command"))

    p = sub.add_parser("app", help="a page for microscopists: drop micrographs, see outlines and sizes (127.0.0.1)")
    p.add_argument("--model", help="model URI or saved model folder (default models:/nanoseg@champion)")
    p.add_argument("--port", type=int, default=5002, help="port on 127.0.0.1 (default 5002)")
    p.set_defaults(func=_call("nanoseg.cli.app:app_command"))

    p = sub.add_parser("request", help="send images to a nanoseg server and print their summaries as JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--url", default="http://127.0.0.1:5001", help="server address (default http://127.0.0.1:5001)")
    p.add_argument("--pixel-size", help="override the pixel size, e.g. 7.34nm")
    p.add_argument("--out", help="also save masks, labels and particles.csv to this folder")
    p.add_argument("--overwrite", action="store_true", help="replace answers already saved in --out")
    p.set_defaults(func=_call("nanoseg.cli.request:request_command"))

    return parser


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
