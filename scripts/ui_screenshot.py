#!/usr/bin/env python
"""Screenshot of the MLflow UI's run comparison page, taken with headless Chromium.

    python scripts/ui_screenshot.py [--out reports/mlflow_ui.png] [--runs ID ...] [--url http://127.0.0.1:5000]

Starts ``mlflow ui`` on 127.0.0.1 (a free port) over the project's store (the
same URI as ``make ui``: ``MLFLOW_TRACKING_URI``, else ``mlruns/mlflow.db``),
unless ``--url`` names a running one. It compares, by default, the fold runs
of the newest cross-validation run (else the newest runs of the experiment) and
saves what Chromium shows after the page settled (``--virtual-time-budget``).
Needs Chromium (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

from nanoseg.errors import NanosegError, report_errors  # noqa: E402
from nanoseg import processes  # noqa: E402

# best effort, MLflow 3 UI: close the assistant side panel so the runs get the width
TIDY_JS = ("document.querySelectorAll('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
           ".forEach(b => b.click())")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--disable-dev-shm-usage", "--disable-extensions"]


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise NanosegError("no Chromium found (looked for " + ", ".join(BROWSERS) + "); install it, e.g. "
                       "`apt-get install -y chromium` on Debian.")


def pick_runs(experiment: str, max_runs: int = 10, run_ids=None) -> tuple[str, list]:
    """(experiment id, runs sorted by name): ``run_ids``, else the newest cv run's folds, else the newest runs."""
    import mlflow

    from nanoseg import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise NanosegError(f"{tracking.tracking_uri()}: no experiment {experiment!r}; run the pipeline "
                           "(dvc repro) or `nanoseg tune` first.")
    search = dict(experiment_ids=[exp.experiment_id], order_by=["attributes.start_time DESC"], output_format="list")
    if run_ids:
        runs = [mlflow.get_run(r) for r in run_ids]
    else:
        parents = [r for r in mlflow.search_runs(filter_string="tags.stage = 'cv'", max_results=50, **search)
                   if "mlflow.parentRunId" not in r.data.tags]
        runs = []
        if parents:
            runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
                                      max_results=max_runs, **search)
        runs = runs or mlflow.search_runs(max_results=max_runs, **search)
    if not runs:
        raise NanosegError(f"experiment {experiment!r} holds no runs yet; nothing to compare.")
    return exp.experiment_id, sorted(runs, key=lambda r: r.info.run_name)


def default_axes(runs: list, params=None, metrics=None) -> tuple[list[str], list[str]]:
    """(parameters, metrics) for the compare plot: the compared set of :mod:`nanoseg.tracking` that the runs hold."""
    from nanoseg import tracking

    if params is None:
        held = [k for k in ("fold", *tracking.COMPARE_PARAMS) if all(k in r.data.params for r in runs)]
        params = [k for k in held if len({r.data.params[k] for r in runs}) > 1] or held[:1]
    if metrics is None:
        metrics = []
        for prefix in ("val_", "test_"):
            metrics = [prefix + m for m in tracking.COMPARE_METRICS
                       if all(prefix + m in r.data.metrics for r in runs)]
            if metrics:
                break
    return list(params), list(metrics)


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return f"{base.rstrip('/')}/#/compare-runs?{query}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(port: int, log: Path, timeout: float = 120):
    """``mlflow ui`` over the project's store on 127.0.0.1:port; returns (process, base URL)."""
    from nanoseg import tracking

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking.tracking_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner for a screenshot
    with log.open("w") as out:
        proc = processes.start(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        processes.wait_for_url(base + "/health", proc, timeout, what="mlflow ui", log=log)
    except NanosegError:
        processes.stop(proc)
        raise
    return proc, base




class DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (the DevTools protocol on fds 3/4, no extra packages).

    Chromium's own ``--screenshot --virtual-time-budget`` never returns on the MLflow 3 UI (its
    virtual clock waits forever), so the page is loaded in real time and captured once it shows
    the expected text.
    """

    def __init__(self, browser: str, profile: str, size=(1600, 1800)):
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def fds():  # the protocol pipes are fds 3 (commands) and 4 (answers) of the browser
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome, from_chrome)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        cmd = [browser, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
               f"--window-size={size[0]},{size[1]}", "about:blank"]
        self.proc = processes.start(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=fds, pass_fds=(3, 4))
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id, self.size = b"", 0, size

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\0" not in self._buf:
                ready, _, _ = select.select([self._in], [], [], max(0.0, end - time.monotonic()))
                if not ready:
                    break
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise NanosegError(f"Chromium closed the DevTools pipe during {method}.")
                self._buf += chunk
            if b"\0" not in self._buf:
                break
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise NanosegError(f"Chromium: {method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
        raise NanosegError(f"Chromium did not answer {method} within {timeout:.0f} s.")

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (NanosegError, OSError):
            pass
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        processes.stop(self.proc, timeout=0)  # what is left of Chromium (its helper processes too)


def _key(chrome: DevTools, session: str, key: str, code: int) -> None:
    for kind in ("keyDown", "keyUp"):
        chrome.send("Input.dispatchKeyEvent", session, type=kind, key=key, code=key, windowsVirtualKeyCode=code,
                    nativeVirtualKeyCode=code)


def choose_axes(chrome: DevTools, session: str, params: list[str], metrics: list[str]) -> list[str]:
    """Set the compare page's parallel-coordinates axes: "Clear All", then each key typed into the Parameters
    and Metrics boxes and its option clicked (Enter when no option has exactly that name), as a user would. The page defaults to the first three
    differing parameters in alphabetical order and the first metric, which are rarely the ones that decide.
    Returns the keys the boxes show afterwards."""
    chrome.send("Runtime.evaluate", session,
                expression="document.querySelector('[data-testid=\"clear-button\"]')?.click()")
    time.sleep(0.5)
    for index, keys in ((0, params), (1, metrics)):
        for name in keys:
            chrome.send("Runtime.evaluate", session, expression=(
                f"(() => {{ const i = document.querySelectorAll('input[role=combobox]')[{index}];"
                " if (i) { i.focus(); i.click(); } })()"))
            chrome.send("Input.insertText", session, text=name)
            time.sleep(0.4)
            # the option named exactly so (typing "val_dice" also offers val_dice_coefficient, maybe first)
            picked = chrome.send("Runtime.evaluate", session, returnByValue=True, expression=(
                "(() => { const o = [...document.querySelectorAll('[class*=select-item-option]')]"
                f".find(e => e.getAttribute('title') === {json.dumps(name)} || e.innerText.trim() === {json.dumps(name)});"
                " if (!o) return false; o.scrollIntoView({block: 'nearest'});"
                " const r = o.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"))
            at = picked["result"].get("value")
            if at:
                for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                    chrome.send("Input.dispatchMouseEvent", session, type=kind, x=at[0], y=at[1], button="left",
                                clickCount=1)
            else:
                _key(chrome, session, "Enter", 13)
            time.sleep(0.3)
        _key(chrome, session, "Escape", 27)
    chrome.send("Runtime.evaluate", session, expression="document.activeElement?.blur()")
    shown = chrome.send("Runtime.evaluate", session, returnByValue=True, expression=(
        "[...document.querySelectorAll('[class*=select-selection-item-content]')].map(e => e.innerText)"))
    return shown["result"].get("value") or []


def screenshot(url: str, out: Path, size=(1600, 1800), wait_for=(), timeout: float = 60, settle: float = 3.0,
               browser: str | None = None, axes: tuple[list[str], list[str]] | None = None) -> tuple[Path, list[str]]:
    """Save what headless Chromium shows at ``url`` to ``out`` (PNG), once the page text holds ``wait_for``;
    ``axes`` = (parameters, metrics) of the parallel-coordinates plot (:func:`choose_axes`).
    Returns (the PNG, the axis keys the page shows)."""
    browser = browser or find_browser()
    with tempfile.TemporaryDirectory(prefix="nanoseg-chromium-") as profile:
        chrome = DevTools(browser, profile, size)
        try:
            target = chrome.send("Target.createTarget", url="about:blank")["targetId"]
            session = chrome.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            chrome.send("Emulation.setDeviceMetricsOverride", session, width=size[0], height=size[1],
                        deviceScaleFactor=1, mobile=False)
            chrome.send("Page.navigate", session, url=url)
            end, text = time.monotonic() + timeout, ""
            while time.monotonic() < end:
                text = chrome.send("Runtime.evaluate", session, returnByValue=True,
                                   expression="document.body ? document.body.innerText : ''")["result"].get("value", "")
                if text and all(w in text for w in wait_for):
                    break
                time.sleep(0.5)
            else:
                missing = [w for w in wait_for if w not in text]
                raise NanosegError(f"{url}: the page did not show {missing} within {timeout:.0f} s.")
            chrome.send("Runtime.evaluate", session, expression=TIDY_JS)
            shown = choose_axes(chrome, session, *axes) if axes else []
            time.sleep(settle)  # let charts draw
            png = base64.b64decode(chrome.send("Page.captureScreenshot", session, format="png")["data"])
        finally:
            chrome.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(out)
    return out, shown


@report_errors
def main(argv=None) -> int:
    from nanoseg import tracking

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/mlflow_ui.png", help="PNG to write (default reports/mlflow_ui.png)")
    p.add_argument("--url", help="a running MLflow UI (default: start one over the project's store)")
    p.add_argument("--runs", nargs="+", metavar="RUN_ID", help="runs to compare (default: the newest cv folds)")
    p.add_argument("--experiment", default=tracking.EXPERIMENT)
    p.add_argument("--max-runs", type=int, default=10)
    p.add_argument("--params", nargs="*", default=None, metavar="KEY",
                   help="parameters on the plot's axes (default: those of nanoseg.tracking.COMPARE_PARAMS that the "
                        "runs hold and that differ between them, else fold)")
    p.add_argument("--metrics", nargs="*", default=None, metavar="KEY",
                   help="metrics on the plot's axes (default: val_ or test_ + nanoseg.tracking.COMPARE_METRICS, "
                        "those the runs hold)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for the page (default 60)")
    p.add_argument("--size", default="1600x1800", help="window WIDTHxHEIGHT in px (default 1600x1800: "
                   "tall enough for the metrics table)")
    args = p.parse_args(argv)
    browser = find_browser()
    exp_id, runs = pick_runs(args.experiment, args.max_runs, args.runs)
    names = [r.info.run_name for r in runs if r.info.run_name]
    proc = None
    with tempfile.TemporaryDirectory(prefix="nanoseg-ui-") as tmp:
        try:
            base = args.url
            if not base:
                proc, base = start_ui(_free_port(), Path(tmp) / "mlflow-ui.log")
            url = compare_url(base, exp_id, [r.info.run_id for r in runs])
            size = tuple(int(v) for v in args.size.lower().split("x"))
            axes = default_axes(runs, args.params, args.metrics)
            out, shown = screenshot(url, Path(args.out), size, wait_for=names, timeout=args.timeout, browser=browser,
                                    axes=axes)
        finally:
            if proc is not None:
                processes.stop(proc)
    print(f"{out}: {len(runs)} runs of experiment {args.experiment!r} compared ({url}); "
          f"plot axes: {', '.join(shown) or 'the page defaults'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
