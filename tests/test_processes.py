"""nanoseg.processes: children find the venv's tools without the venv on PATH; a process group stops entirely."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from nanoseg import processes
from nanoseg.errors import NanosegError

BARE = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})}


def test_child_env_puts_the_interpreters_tools_first():
    env = processes.child_env({"X_NANOSEG": 1}, base={"PATH": f"/usr/bin:{processes.bin_dirs()[0]}:/bin"})
    dirs = env["PATH"].split(os.pathsep)
    assert dirs[: len(processes.bin_dirs())] == processes.bin_dirs() and dirs.count(processes.bin_dirs()[0]) == 1
    assert dirs[len(processes.bin_dirs()):] == ["/usr/bin", "/bin"] and env["X_NANOSEG"] == "1"
    assert processes.child_env(base={})["PATH"].startswith(processes.bin_dirs()[0])
    assert processes.tool("dvc") == os.path.join(processes.bin_dirs()[0], "dvc")  # the venv's, whatever PATH says
    assert processes.tool("no-such-tool-here") == "no-such-tool-here"


def test_tools_by_name_from_a_bare_environment(tmp_path):
    """What `env -i PATH=/usr/bin:/bin .venv/bin/nanoseg ...` does: the children it starts by name (dvc,
    mlflow, uvicorn) are the venv's ones."""
    code = textwrap.dedent("""
        import shutil, sys
        from nanoseg import processes
        assert shutil.which("dvc") is None or not shutil.which("dvc").startswith(sys.prefix)  # not on PATH
        for name in ("dvc", "mlflow", "uvicorn"):
            out = processes.run([name, "--version"], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, (name, out.stderr[-500:])
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=BARE, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


TREE = textwrap.dedent("""
    import os, subprocess, sys, time
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    own = subprocess.Popen(sleep, start_new_session=True)   # a descendant in its own session (uvicorn's way)
    if os.fork() == 0:                                       # a group member whose parent exits: an orphan
        if os.fork() == 0:
            time.sleep(600)
        os._exit(0)
    print(own.pid, flush=True)
    time.sleep(600)
""")


def test_stop_ends_the_group_descendants_and_orphans(tmp_path):
    proc = processes.start([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    own = int(proc.stdout.readline())
    deadline = time.monotonic() + 30
    while len(processes.family(proc)) < 2 and time.monotonic() < deadline:  # the orphan and the other session
        time.sleep(0.1)
    family = processes.family(proc)
    assert own in {p.pid for p in family} and len(family) >= 2
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(own)  # its own group; the descendant in another
    processes.stop(proc, timeout=10)
    assert proc.poll() is not None and not processes.running(proc)
    for p in family:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE


def test_stop_kills_what_ignores_sigterm():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
    proc = processes.start([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    processes.stop(proc, timeout=1)
    assert proc.returncode == -9 and time.monotonic() - start < 10
    processes.stop(proc)  # stopping a stopped process is a no-op
    processes.stop(None)


def test_wait_for_url_fails_fast_with_the_log(tmp_path):
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = processes.start([sys.executable, "-c", "import sys; print('port in use'); sys.exit(3)"], stdout=out)
    with pytest.raises(NanosegError, match=r"(?s)the server exited \(status 3\) before answering.*port in use"):
        processes.wait_for_url("http://127.0.0.1:9/ping", proc, timeout=60, what="the server", log=log)
    with pytest.raises(NanosegError, match="did not answer at http://127.0.0.1:9/ping within 1 s"):
        processes.wait_for_url("http://127.0.0.1:9/ping", timeout=1)
