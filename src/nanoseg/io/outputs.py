"""Output folders that nanoseg owns: what ``--out`` may replace, and what ``request --out`` may overwrite.

``nanoseg predict --out DIR`` builds its results in a temporary folder next to ``DIR`` and renames it
into place at the end; the folder holds a marker file, :data:`MARKER` (``.nanoseg-output``, JSON: the
command, the nanoseg version and the files written). ``--overwrite`` replaces an existing ``DIR`` only
when :func:`check_replaceable` finds it is such a folder and nothing else: a folder without the
marker, or with files or folders the marker does not list (notes, the input images, a model ...), or
holding one of this run's input images, or the working folder itself, is refused with a one-line
message, with or without ``--overwrite``. An empty folder may be replaced.

``nanoseg request --out DIR`` writes ``<stem>_mask.png``, ``<stem>_labels.tif`` and ``particles.csv``
into ``DIR`` (created if needed); :func:`check_answer_files` refuses two images with the same stem
(their answers would overwrite each other) and, unless ``--overwrite``, files that already exist.

Every file is written atomically (:mod:`nanoseg.atomic`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from nanoseg.atomic import folder_mode, write_json
from nanoseg.errors import NanosegError

__all__ = ["MARKER", "check_replaceable", "write_marker", "replace_folder", "duplicate_stems",
           "answer_files", "check_answer_files"]

MARKER = ".nanoseg-output"


def _shown(names, n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder nanoseg wrote, or None (absent or unreadable)."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def check_replaceable(out: Path, inputs=(), overwrite: bool = False, command: str = "nanoseg predict") -> None:
    """Refuse an ``--out`` folder that must not be replaced (see the module docstring).

    Parameters
    ----------
    out : Path
        The output folder; it need not exist.
    inputs : iterable of Path
        This run's input files: a folder holding one of them is never replaced.
    overwrite : bool
        ``--overwrite`` was given.

    Raises
    ------
    NanosegError
        Naming the folder, what is wrong and what to do.
    """
    out = Path(out)
    if out.is_symlink():
        raise NanosegError(f"{out}: is a symbolic link; give a real folder as --out.")
    if not out.exists():
        return
    if not out.is_dir():
        raise NanosegError(f"{out}: exists and is not a folder; choose another --out.")
    held = [str(p) for p in inputs if _inside(Path(p), out)]
    if held:
        raise NanosegError(f"{out}: holds the input image(s) {_shown(held)}; the output folder is replaced as a "
                           "whole, so choose another --out.")
    if _inside(Path.cwd(), out):
        raise NanosegError(f"{out}: is (or holds) the working folder; choose another --out.")
    if not overwrite:
        raise NanosegError(f"{out}: output folder already exists; pass --overwrite to replace it or choose "
                           "another --out.")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    marker = read_marker(out)
    if marker is None:
        raise NanosegError(f"{out}: not a folder written by {command} (no valid {MARKER} file), so --overwrite "
                           f"does not replace it; move its files away or choose another --out.")
    foreign = entries - set(map(str, marker["files"])) - {MARKER}
    if foreign:
        raise NanosegError(f"{out}: holds files {command} did not write ({_shown(foreign)}), so --overwrite does "
                           "not replace it; move them away or choose another --out.")


def write_marker(folder: Path, command: str, version: str) -> Path:
    """Write :data:`MARKER` into ``folder``, listing the files in it (call it last)."""
    files = sorted(p.name for p in Path(folder).iterdir() if p.name != MARKER)
    return write_json(Path(folder) / MARKER, {"written_by": command, "nanoseg_version": version, "files": files})


def replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an existing ``out`` (checked by
    :func:`check_replaceable`) is moved aside first and deleted after the rename."""
    os.chmod(tmp, folder_mode())  # mkdtemp makes 0700 folders
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def duplicate_stems(names) -> list[str]:
    """Stems that occur more than once in ``names`` (paths or file names)."""
    counts = Counter(Path(str(n)).stem for n in names)
    return sorted(s for s, k in counts.items() if k > 1)


def answer_files(names) -> list[str]:
    """The files ``nanoseg request --out`` writes for images ``names``."""
    stems = [Path(str(n)).stem for n in names]
    return [f for s in stems for f in (f"{s}_mask.png", f"{s}_labels.tif")] + ["particles.csv"]


def check_answer_files(out: Path, names, overwrite: bool = False) -> None:
    """Refuse to write answers for ``names`` into ``out`` when two share a stem, or (unless ``overwrite``)
    when some of their files exist already.

    Raises
    ------
    NanosegError
    """
    out = Path(out)
    dupes = duplicate_stems(names)
    if dupes:
        raise NanosegError(f"several images are named {dupes}; their answers would overwrite each other in {out}: "
                           "send them in separate requests (different --out) or rename them.")
    if out.exists() and not out.is_dir():
        raise NanosegError(f"{out}: exists and is not a folder; choose another --out.")
    existing = [f for f in answer_files(names) if (out / f).exists()]
    if existing and not overwrite:
        raise NanosegError(f"{out}: already holds {_shown(existing)}; pass --overwrite to replace them or choose "
                           "another --out.")
