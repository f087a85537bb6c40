"""``nanoseg batch INPUT... --out DIR``: many micrographs on Spark, one table and one PSD for the lot.

The work is :func:`nanoseg.pipeline.batch.run_batch`'s (its module docstring lists what DIR holds); this
command passes the arguments and prints the outcome.
"""

from __future__ import annotations

import os
import sys

from nanoseg.pipeline.batch import parse_conf, run_batch


def batch_command(args) -> int:
    """``nanoseg batch INPUT... --out DIR [--model URI] [--master M] [--partitions N] [--recursive] [--masks]
    [--labels] [--retry-errors] [--overwrite] [--conf KEY=VALUE]``.

    Returns
    -------
    int
        0 when every file of the batch is analysed, 1 when some are error rows (``images.parquet``,
        ``summary.json`` ``failed``); an interruption (Ctrl-C) keeps the finished partitions and exits 130.
    """
    summary, run_info, interrupted = run_batch(
        args.inputs, args.out, model=getattr(args, "model", None), master=getattr(args, "master", None),
        partitions=getattr(args, "partitions", None), conf=parse_conf(getattr(args, "conf", None)),
        recursive=bool(getattr(args, "recursive", False)), masks=bool(getattr(args, "masks", False)),
        labels=bool(getattr(args, "labels", False)), retry_errors=bool(getattr(args, "retry_errors", False)),
        overwrite=bool(getattr(args, "overwrite", False)))
    now = run_info["ok"] + run_info["error"]
    out = os.path.abspath(args.out)
    print(f"{summary['n_images']} image(s), {summary['n_particles']} particles ({summary['n_measurable']} "
          f"measurable), {summary['n_failed']} failed -> {out}/ (this run: {now} analysed, "
          f"{run_info['already_done'] + run_info['duplicate']} already done)")
    if interrupted:
        print(f"nanoseg: interrupted; the {now} file(s) finished in this run are kept: run the same command again "
              "to do the rest.", file=sys.stderr)
        return 130
    if summary["n_failed"]:
        print(f"nanoseg: {summary['n_failed']} file(s) could not be analysed (images.parquet status error, "
              "summary.json failed)", file=sys.stderr)
        return 1
    return 0
