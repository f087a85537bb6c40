"""The client of a nanoseg server: POST a request, read the answer, save its images and particles.

The request body is :func:`nanoseg.serving.payload.make_request`'s; ``nanoseg request``
(:mod:`nanoseg.cli.request`) prints the summaries.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from nanoseg.errors import NanosegError


def post(url: str, body: dict, timeout: float = 600) -> dict:
    """POST ``body`` as JSON to ``url`` (``/invocations`` appended to a bare address); return the answer."""
    import urllib.error
    import urllib.request

    if not re.search(r"/invocations/?$", url):
        url = url.rstrip("/") + "/invocations"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = _error_message(exc.read().decode(errors="replace"))
        what = "is busy" if exc.code == 503 else "failed" if exc.code >= 500 else "refused the request"
        raise NanosegError(f"{url}: the server {what} (HTTP {exc.code}): {text[:2000]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NanosegError(f"{url}: no answer ({reason}); start the server with `nanoseg serve` "
                           "and check the address.") from None


def _error_message(text: str) -> str:
    """The message of an error answer (nanoseg's, or a plain MLflow server's without the request it repeats)."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict):
        return text
    text = str(data.get("nanoseg_message") or data.get("message") or text)
    if text.startswith("Failed to predict data") and "\nError: " in text:
        text = text.rsplit("\nError: ", 1)[1]  # MLflow's prefix repeats the (truncated) request
    return text


def save_answers(results: list[dict], out: Path, overwrite: bool = False, names: list[str] | None = None) -> None:
    """Write ``<stem>_mask.png``, ``<stem>_labels.tif`` and ``particles.csv`` of the answers to ``out``, each
    file atomically.

    Parameters
    ----------
    results : list of dict
        The server's answers, in the order of the images sent.
    out : Path
        Folder, created if needed.
    overwrite : bool
        Replace files that exist already (otherwise refused, before anything is written).
    names : list of str, optional
        The images' own file names (default: the names in the answers); they name the files.

    Raises
    ------
    NanosegError
        Two images with the same stem, or existing files without ``overwrite`` (:func:`nanoseg.io.outputs.check_answer_files`).
    """
    import pandas as pd

    from nanoseg.atomic import write_bytes, write_with
    from nanoseg.io.outputs import check_answer_files

    names = list(names) if names is not None else [r["name"] for r in results]
    check_answer_files(out, names, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, r in zip(names, results):
        stem = Path(name).stem
        if r.get("mask_png"):
            write_bytes(out / f"{stem}_mask.png", base64.b64decode(r["mask_png"]))
            write_bytes(out / f"{stem}_labels.tif", base64.b64decode(r["labels_tif"]))
        rows += r["particles"]
    write_with(out / "particles.csv", lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
