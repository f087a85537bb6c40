"""Stopping a process group: a server started with ``start_new_session`` and every worker it forked."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except PermissionError:
        return True
    except OSError:  # no such group (or not a valid group id)
        return False
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop ``proc``'s process group (started with ``start_new_session``): SIGTERM, then SIGKILL.

    Returns only when no process of the group is left: ``mlflow models serve`` exits before its
    uvicorn worker has closed the port, so waiting for ``proc`` alone is not enough.
    """
    import time

    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        if not _group_alive(proc.pid):
            break
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()
            if not _group_alive(proc.pid):
                break
            time.sleep(0.2)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
