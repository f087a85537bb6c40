"""Starting and stopping the tools nanoseg runs: one place for every child process.

``nanoseg serve`` (uvicorn), ``nanoseg data`` (DVC), the scripts (``mlflow ui``, Chromium,
``nanoseg app``) and the tests (``mlflow server``, ``weed``, ``nanoseg serve``) start tools through
this module, so that

* every child finds the tools of *this* interpreter: :func:`child_env` puts its ``bin`` folder first
  on ``PATH``, also when the virtual environment is not activated
  (``env -i PATH=/usr/bin:/bin .venv/bin/nanoseg serve``), and a tool that starts another one by name
  (MLflow starts ``uvicorn``, DVC runs its stage commands) finds the venv's;
* a server runs in its own process group (:func:`start`), and :func:`stop` ends all of it — the
  process, its group and whatever it started (uvicorn workers), waiting until none is left, because a
  supervisor can exit before its worker has released the port;
* :func:`wait_for_url` waits for a server to answer, failing at once when it exits.

Only the standard library and psutil; nothing here imports the rest of nanoseg but its errors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from nanoseg.errors import NanosegError


def bin_dirs() -> list[str]:
    """The folders holding this interpreter's command-line tools: the environment's scripts folder
    (``.venv/bin``) and the folder of ``sys.executable`` (the same one in a venv), not resolved."""
    dirs = []
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        if d and d not in dirs:
            dirs.append(d)
    return dirs


def child_env(extra: dict | None = None, base: dict | None = None) -> dict:
    """``base`` (default ``os.environ``) updated with ``extra``, with :func:`bin_dirs` first on ``PATH``."""
    env = dict(os.environ if base is None else base)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p not in bin_dirs()]
    env["PATH"] = os.pathsep.join([*bin_dirs(), *rest])
    return env


def tool(name: str) -> str:
    """The path of command ``name`` next to this interpreter (``.venv/bin/dvc``), else ``name`` itself
    (looked up on the child's ``PATH``)."""
    for d in bin_dirs():
        path = Path(d) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return name


def run(cmd: list, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` with :func:`child_env` (``env`` adds to it)."""
    return subprocess.run([str(c) for c in cmd], env=child_env(env), **kwargs)


def start(cmd: list, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group) with :func:`child_env` (``env`` adds to it).

    Other keyword arguments go to :class:`subprocess.Popen` (``stdout``, ``cwd``, ``pass_fds``, ...).
    """
    return subprocess.Popen([str(c) for c in cmd], env=child_env(env), start_new_session=True, **kwargs)


def family(proc: subprocess.Popen | int) -> list:
    """The live processes ``proc`` stands for, besides itself: its descendants and, when it leads a
    process group, the other members of that group (also those whose parent has already exited)."""
    import psutil

    pid = proc if isinstance(proc, int) else proc.pid
    if not pid or pid <= 0:
        return []
    found = {}
    try:
        found.update({p.pid: p for p in psutil.Process(pid).children(recursive=True)})
    except psutil.Error:
        pass
    if _leads_group(pid):
        for p in psutil.process_iter():
            try:
                if p.pid != pid and os.getpgid(p.pid) == pid:
                    found.setdefault(p.pid, p)
            except (OSError, psutil.Error):
                continue
    return [p for p in found.values() if _live(p)]


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:  # gone: its group may live on (a supervisor that exited before its worker)
        return True


def _live(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_all(proc: subprocess.Popen, signum: int, known: dict | None = None) -> bool:
    """Send ``signum`` to ``proc`` and its :func:`family` (found first: the children of a process that
    exits go to another parent); return whether any of them was running. ``known`` (pid -> process)
    collects the processes seen."""
    import psutil

    others = {p.pid: p for p in family(proc)}
    if known is not None:
        known.update(others)
        others = {pid: p for pid, p in known.items() if _live(p)}
    sent = False
    if proc.poll() is None:
        try:
            proc.send_signal(signum)
            sent = True
        except ProcessLookupError:
            pass
    for p in others.values():
        try:
            p.send_signal(signum)  # psutil checks the process is still the one found (no reused pid)
            sent = True
        except psutil.Error:
            continue
    return sent


def running(proc: subprocess.Popen, known: dict | None = None) -> bool:
    """Whether ``proc``, any process of its :func:`family` or of ``known`` is still alive."""
    if proc.poll() is None:
        return True
    seen = {p.pid: p for p in family(proc)}
    if known is not None:
        known.update(seen)
        seen = known
    return any(_live(p) for p in seen.values())


def stop(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """Stop ``proc`` and its :func:`family`: SIGTERM, then SIGKILL to what is left after ``timeout`` s.

    Returns when none of them is left (or 10 s after the SIGKILL): a server started with
    :func:`start` has released its port by then. Descendants in other sessions are followed even
    after their parent has exited.
    """
    if proc is None:
        return
    known: dict = {}
    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if not signal_all(proc, signum, known):
            break
        end = time.monotonic() + wait
        while time.monotonic() < end and running(proc, known):
            time.sleep(0.2)
        if not running(proc, known):
            break
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def wait_for_url(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0, what: str | None = None,
                 log: Path | None = None) -> None:
    """Wait until ``url`` answers HTTP 200.

    Raises :class:`NanosegError` when ``proc`` exits first or ``timeout`` seconds pass, with the last
    3000 characters of ``log`` if given.
    """
    import urllib.request

    what = what or (" ".join(map(str, proc.args[:3])) if proc is not None else url)
    end = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            problem = f"{what} exited (status {proc.returncode}) before answering at {url}"
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            problem = f"{what} did not answer at {url} within {timeout:.0f} s"
            break
        time.sleep(0.5)
    tail = Path(log).read_text(errors="replace")[-3000:] if log and Path(log).is_file() else ""
    raise NanosegError(problem + (f"; its log ends:\n{tail}" if tail else "."))
