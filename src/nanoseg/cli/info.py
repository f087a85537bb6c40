"""``nanoseg info IMAGE...``: size, bit depth, pixel size (nm) and its source, data-bar row, field of view."""

from __future__ import annotations

import json
import sys

from nanoseg.errors import NanosegError, one_line
from nanoseg.io.micrograph import Micrograph, image_options, read_micrograph


def _summary(m: Micrograph) -> dict:
    fov = m.field_of_view_um
    return {
        "path": str(m.path), "name": m.path.name, "width": m.width, "height": m.height,
        "source_dtype": m.source_dtype, "pixel_size_nm": m.pixel_size_nm,
        "pixel_size_source": m.pixel_size_source, "databar_row": m.databar_row,
        "crop_rows_32": m.databar_row // 32 * 32,
        "field_of_view_um": None if fov is None else {"width": fov[0], "height": fov[1]},
        "field_of_view_of": "sample above the data bar",
    }


def _info_item(path, pixel_size, databar_row, max_pixels) -> dict:
    notes: list[str] = []
    item = _summary(read_micrograph(path, pixel_size, databar_row, max_pixels, notes=notes))
    item["notes"] = [n.replace(f"{path}: ", "", 1) for n in notes]
    return item


def _print_item(item: dict) -> None:
    w, h, row = item["width"], item["height"], item["databar_row"]
    if item["pixel_size_nm"] is None:
        size = "unknown: sizes will be in pixels (give --pixel-size, e.g. 7.34nm)"
        fov = "unknown (no pixel size)"
    else:
        size = f"{item['pixel_size_nm']:.3f} nm ({item['pixel_size_source']})"
        fov = "{width:.3f} x {height:.3f} µm (sample above the data bar)".format(**item["field_of_view_um"])
    bar = f"none (row {row} = image height)" if row == h else f"from row {row}"
    print(
        f"{item['name']}\n"
        f"  size           {w} x {h} px, {item['source_dtype']}\n"
        f"  pixel size     {size}\n"
        f"  data bar       {bar}; sample rows 0-{row - 1}, {item['crop_rows_32']} rows in 32-row crops\n"
        f"  field of view  {fov}"
        + "".join(f"\n  note           {note}" for note in item["notes"])
    )


def info_command(args) -> int:
    """``nanoseg info IMAGE... [--pixel-size X] [--databar-row N] [--max-pixels N] [--json]``.

    Every image is described; one that cannot be read is reported on stderr (one line) and skipped.

    Returns
    -------
    int
        0, or 1 when some (not all) images could not be read.

    Raises
    ------
    NanosegError
        For bad options, or when no image could be read.
    """
    options = image_options(args)
    items, failed = [], []
    for path in args.images:
        try:
            items.append(_info_item(path, *options))
        except NanosegError as exc:
            if len(args.images) == 1:
                raise
            print(f"nanoseg: error: {one_line(exc)}", file=sys.stderr)
            failed.append(str(path))
    if not items:
        raise NanosegError(f"none of the {len(failed)} images could be read (see the errors above).")
    if getattr(args, "json", False):
        print(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        for item in items:
            _print_item(item)
    if failed:
        print(f"nanoseg: {len(failed)} of {len(args.images)} images could not be read: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
