"""``nanoseg predict IMAGE... --model M --out DIR``: segment images, measure every particle, write the results.

Each image is read (:func:`nanoseg.io.micrograph.read_micrograph`), analysed
(:func:`nanoseg.inference.analyze.analyze`) and its files written (:func:`nanoseg.report.results.write_image_files`:
``<stem>_mask.png``, ``_labels.tif``, ``_overlay.png``, and with ``--tta`` / ``--spread`` / ``--roi``
``_uncertainty.tif``, ``_spread.tif``, ``_rois.zip``); the run gets ``particles.csv``, ``summary.json`` and
``psd.png`` (:func:`nanoseg.report.results.write_run_files`). With ``--scale auto`` (the default) an image whose
pixel size differs by more than 10 % from the model's training pixel size is resampled to it for inference
and the labels mapped back (:mod:`nanoseg.inference.rescale`); particles are always measured on the input grid
with its own pixel size. With ``--polarity auto`` (the default) images of dark particles on a bright background
are recognised and inverted before inference (:mod:`nanoseg.inference.polarity`).

Output goes to a temporary folder next to ``--out`` that is renamed into place at the end, so an interrupted
run leaves nothing half-written; every file in it is written atomically (:mod:`nanoseg.atomic`) and the folder
carries a ``.nanoseg-output`` marker listing them: ``--overwrite`` replaces only such a folder, never one
holding other files or the inputs (:mod:`nanoseg.io.outputs`).

Every argument is checked, and every image's header (:func:`nanoseg.io.micrograph.probe_image`: pixel
limit ``--max-pixels``, stacks, decompression bombs), before the model is loaded. An image that fails
is reported on one line and skipped; the others are analysed, ``summary.json`` lists the failures
(``failed``) and the command exits with status 1.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from nanoseg import __version__
from nanoseg.errors import NanosegError
from nanoseg.inference.analyze import analyze
from nanoseg.inference.loading import load_predictor
from nanoseg.io.outputs import check_replaceable, replace_folder, write_marker
from nanoseg.report.results import IMAGE_OUTPUTS, run_summary, write_image_files, write_run_files


def _read(path, args):
    """The micrograph and the notes its reading raised (bit depth, missing or implausible pixel size)."""
    from nanoseg.io.micrograph import read_micrograph

    notes: list[str] = []  # collected, not warned: no process-wide warning filters (the server runs this in threads)
    mg = read_micrograph(path, pixel_size=args.pixel_size, databar_row=args.databar_row,
                         max_pixels=getattr(args, "max_pixels", None), notes=notes)
    return mg, notes


def predict_file(predictor, settings, path, out_dir: Path, args):
    """Read one image file, :func:`~nanoseg.inference.analyze.analyze` it, write its files to ``out_dir``;
    return (table, info)."""
    mg, notes = _read(path, args)
    result = analyze(predictor, settings, mg, getattr(args, "scale", "auto"), getattr(args, "polarity", "auto"),
                     spread=bool(getattr(args, "spread", False)), notes=notes)
    write_image_files(result, out_dir, roi=bool(getattr(args, "roi", False)))
    return result.table, result.info


def _check_arguments(args) -> list[Path]:
    """Everything that can be checked without the model and without decoding an image; parsed values are
    stored back into ``args``. Returns the input paths."""
    from nanoseg.io.micrograph import image_options
    from nanoseg.io.outputs import duplicate_stems
    from nanoseg.inference.polarity import parse_polarity
    from nanoseg.inference.rescale import parse_scale

    paths = [Path(p) for p in args.images]
    args.pixel_size, args.databar_row, args.max_pixels = image_options(args)
    args.scale = parse_scale(getattr(args, "scale", "auto"))
    args.polarity = parse_polarity(getattr(args, "polarity", "auto"))
    check_replaceable(Path(args.out), paths, bool(getattr(args, "overwrite", False)))
    dupes = duplicate_stems(paths)
    if dupes:
        raise NanosegError(f"several input images are named {dupes}; their outputs would overwrite each other. "
                           "Predict them in separate runs (different --out).")
    return paths


def _report_failure(failures: list, path: Path, exc: BaseException, many: bool) -> None:
    from tqdm import tqdm

    from nanoseg.errors import one_line

    if isinstance(exc, MemoryError):
        message = f"{path}: not enough memory to analyse this image; lower --max-pixels or split the image."
    elif isinstance(exc, NanosegError):
        message = one_line(exc)
    else:  # a bug or an unforeseen file: the other images are still analysed
        message = f"{path}: unexpected error ({type(exc).__name__}: {one_line(exc)}); please report it with the file."
    failures.append({"image": path.name, "path": str(path), "error": message})
    if many:
        tqdm.write(f"nanoseg: error: {message}", file=sys.stderr)


def _probe_all(paths: list[Path], max_pixels: int, failures: list) -> list[Path]:
    """The inputs whose header passes :func:`nanoseg.io.micrograph.probe_image`; the others go to ``failures``."""
    from nanoseg.io.micrograph import probe_image

    good = []
    for path in paths:
        try:
            probe_image(path, max_pixels)
            good.append(path)
        except NanosegError as exc:
            _report_failure(failures, path, exc, len(paths) > 1)
    return good


def _none_left(paths: list[Path], failures: list) -> NanosegError:
    if len(paths) == 1:
        return NanosegError(failures[0]["error"])
    return NanosegError(f"none of the {len(paths)} images could be analysed (see the errors above); nothing was "
                        "written.")


def _analyse_all(predictor, settings, paths, tmp: Path, args, failures: list, many: bool):
    from tqdm import tqdm

    tables, infos = [], []
    for path in tqdm(paths, desc="nanoseg predict", unit="image"):
        try:
            table, info = predict_file(predictor, settings, path, tmp, args)
        except Exception as exc:  # noqa: BLE001 - one bad image does not stop the others (MemoryError included)
            for suffix in IMAGE_OUTPUTS:  # what it wrote before failing
                (tmp / f"{path.stem}{suffix}").unlink(missing_ok=True)
            _report_failure(failures, path, exc, many)
            continue
        for note in info["notes"]:
            tqdm.write(f"nanoseg: warning: {note}", file=sys.stderr)
        tables.append(table)
        infos.append(info)
    return tables, infos


def predict_command(args) -> int:
    """``nanoseg predict IMAGES... --model M --out DIR [--overwrite] [--pixel-size X] [--databar-row N] [--tta]
    [--max-pixels N]``.

    See the module docstring for the files written. Post-processing settings
    come from the model's ``nanoseg.json`` (never from a params.yaml in the working folder).
    Arguments and image headers are checked before the model is loaded.

    Returns
    -------
    int
        0 when every image was analysed; 1 when some were skipped (listed on stderr and in
        ``summary.json`` ``failed``).

    Raises
    ------
    NanosegError
        For bad arguments, an output folder that must not be replaced, or when no image could be analysed
        (nothing is written then).
    """
    paths = _check_arguments(args)
    out, many, failures = Path(args.out), len(paths) > 1, []
    readable = _probe_all(paths, args.max_pixels, failures)
    if not readable:
        raise _none_left(paths, failures)
    predictor, settings = load_predictor(args.model, tta=getattr(args, "tta", None))
    if getattr(args, "spread", False) and not predictor.members:
        raise NanosegError(f"{args.model}: --spread needs an ensemble model (train.candidate: ensemble); this one is "
                           "a single network: use --tta for an uncertainty map.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tables, infos = _analyse_all(predictor, settings, readable, tmp, args, failures, many)
        if not infos:
            raise _none_left(paths, failures)
        order = {str(p): i for i, p in enumerate(paths)}
        failures.sort(key=lambda f: order[f["path"]])  # in the order given
        summary = run_summary(tables, infos, failures, settings, args.model, getattr(args, "scale", "auto"),
                              getattr(args, "polarity", "auto"))
        write_run_files(tmp, tables, infos, summary)
        write_marker(tmp, "nanoseg predict", __version__)
        check_replaceable(out, paths, bool(getattr(args, "overwrite", False)))  # still ours after the run?
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{len(infos)} image(s), {summary['n_particles']} particles ({summary['n_measurable']} measurable) -> {out}/")
    if failures:
        print(f"nanoseg: {len(failures)} of {len(paths)} images failed and were skipped: "
              f"{', '.join(f['image'] for f in failures)} (summary.json: failed)", file=sys.stderr)
        return 1
    return 0
