"""Write files atomically: a reader sees the old file or the complete new one, never half of it.

Every file nanoseg writes (``nanoseg predict`` and ``nanoseg request`` outputs, the pipeline stages'
metrics, reports, plots and manifests) goes through :func:`atomic_path`: the content is written to a
temporary file in the destination's own folder (same file system, so the rename is atomic), which
replaces the destination with :func:`os.replace` only once it is complete. A failure, or an
interruption, leaves the destination as it was and removes the temporary file.

The temporary file keeps the destination's suffix (``.png``, ``.tif``, ``.keras`` ...), so writers
that choose the format from the name (matplotlib, tifffile, Keras) behave as with the real name, and
it gets the permissions a newly created file would get (``0o666`` minus the umask).

This module imports nothing from nanoseg: every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "write_with", "copy_file", "file_mode",
           "folder_mode"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The permission bits of a newly created file under the current umask (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The permission bits of a newly created folder under the current umask (``0o777 & ~umask``)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error it replaces ``path``.

    Parameters
    ----------
    path : str or PathLike
        The destination. Its folder must exist.

    Yields
    ------
    Path
        A new, empty file ``.<name>.<random>.tmp<suffix>`` in the same folder, to be written (or
        overwritten) by any writer that takes a file name.

    Examples
    --------
    >>> with atomic_path("out/labels.tif") as tmp:  # doctest: +SKIP
    ...     tifffile.imwrite(tmp, labels)
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp)`` on a temporary name and move the result to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return ``path``."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the bytes of ``src`` to ``dst`` atomically; return ``dst``."""
    return write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


def write_json(path: str | os.PathLike, data, indent: int = 2, **kwargs) -> Path:
    """Write ``data`` as JSON (``json.dumps(data, indent=indent, **kwargs)`` and a newline) atomically."""
    return write_text(path, json.dumps(data, indent=indent, **kwargs) + "\n")
