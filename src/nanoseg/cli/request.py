"""``nanoseg request --url URL IMAGE...``: send images to a nanoseg server, print their summaries."""

from __future__ import annotations

import json
from pathlib import Path

from nanoseg.errors import NanosegError
from nanoseg.serving.client import post, save_answers
from nanoseg.serving.payload import make_request


def request_command(args) -> int:
    """``nanoseg request --url URL IMAGE... [--pixel-size X] [--out DIR [--overwrite]]``: print each image's
    summary as JSON; with ``--out`` also save the masks, labels and particles (never over earlier answers
    unless ``--overwrite``, never two images with the same stem: checked before anything is sent)."""
    from nanoseg.io.micrograph import parse_pixel_size
    from nanoseg.io.outputs import check_answer_files

    for p in args.images:
        if not Path(p).is_file():
            raise NanosegError(f"{p}: no such image file; check the path.")
    px = parse_pixel_size(args.pixel_size) if getattr(args, "pixel_size", None) else None
    out = Path(args.out) if getattr(args, "out", None) else None
    overwrite = bool(getattr(args, "overwrite", False))
    if out is not None:
        check_answer_files(out, args.images, overwrite)
    reply = post(args.url, make_request(args.images, px, return_images=out is not None))
    results = reply.get("predictions", reply) if isinstance(reply, dict) else reply
    if out is not None:
        save_answers(results, out, overwrite=overwrite, names=[Path(p).name for p in args.images])
    summary = [{"name": r["name"], "unit": r["unit"], "pixel_size_nm": r["pixel_size_nm"], **r["summary"]}
               for r in results]
    print(json.dumps(summary, indent=2))
    return 0
