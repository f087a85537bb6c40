#!/usr/bin/env python
"""Drive the ``nanoseg app`` page in headless Chromium and save a screenshot (docs/app.png).

    python scripts/app_screenshot.py IMAGE... [--model URI] [--out docs/app.png] [--size 1400x1900]

Starts ``nanoseg app`` on a free 127.0.0.1 port, gives IMAGE... to the page's file input (through the
DevTools protocol, as a user's drop would), waits until every image is analysed, clicks the largest
measurable particle of the first image and saves the whole page. :class:`Page` and :class:`AppServer`
are also what ``tests/app/test_app.py`` drives the page with. Needs Chromium (Debian:
``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ui_screenshot import DevTools, _free_port, find_browser  # noqa: E402

from nanoseg.errors import NanosegError, report_errors  # noqa: E402
from nanoseg import processes  # noqa: E402


class AppServer:
    """``nanoseg app --model MODEL --port PORT`` in its own process group, output to ``log``."""

    def __init__(self, model, log: Path, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        cmd = [sys.executable, "-m", "nanoseg", "app", "--model", str(model), "--port", str(self.port)]
        with self.log.open("w") as out:
            self.proc = processes.start(cmd, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 300) -> "AppServer":
        processes.wait_for_url(self.url + "/api/info", self.proc, timeout, what="nanoseg app", log=self.log)
        return self

    def stop(self) -> None:
        processes.stop(self.proc)


class Page:
    """One tab of headless Chromium (DevTools protocol over a pipe, :class:`ui_screenshot.DevTools`)."""

    def __init__(self, profile: str, size=(1400, 1900), browser: str | None = None):
        self.chrome = DevTools(browser or find_browser(), profile, size)
        self.size = size
        target = self.chrome.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.chrome.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False)

    def send(self, method: str, timeout: float = 60, **params):
        return self.chrome.send(method, self.session, timeout=timeout, **params)

    def open(self, url: str, ready: str = "document.body && document.body.dataset.ready === '1'",
             timeout: float = 60) -> None:
        self.send("Page.navigate", url=url)
        self.wait(ready, timeout, f"{url} to load")

    def eval(self, expression: str):
        """The value of a JavaScript expression (awaited if it is a promise)."""
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise NanosegError(f"page script failed: {reply['exceptionDetails'].get('text')} in {expression[:200]}")
        return reply["result"].get("value")

    def wait(self, expression: str, timeout: float, what: str):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.25)
        raise NanosegError(f"the page did not show {what} within {timeout:.0f} s "
                           f"(status: {self.eval('document.body.innerText.slice(0, 2000)')!r})")

    def set_files(self, selector: str, paths) -> None:
        """Choose files in an ``<input type=file>`` as a user would (fires its change event)."""
        root = self.send("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise NanosegError(f"no {selector} on the page")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(Path(p).resolve()) for p in paths])

    def click(self, x: float, y: float) -> None:
        """A real left click at page coordinates (x, y) of the viewport."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def allow_downloads(self, folder: Path) -> None:
        self.chrome.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(Path(folder).resolve()),
                         eventsEnabled=True)

    def screenshot(self, out: Path, full_page: bool = True) -> Path:
        height = int(self.eval("document.documentElement.scrollHeight")) if full_page else self.size[1]
        self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=height, deviceScaleFactor=1,
                  mobile=False)
        time.sleep(0.5)
        png = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                  deviceScaleFactor=1, mobile=False)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(png)
        tmp.replace(out)
        return out

    def close(self) -> None:
        self.chrome.close()


def drop_images(page: Page, paths, timeout: float = 600) -> str:
    """Give ``paths`` to the page's file input and wait until the page says it is done; return the status."""
    page.eval("document.getElementById('status').dataset.state = 'idle'")
    page.set_files("#files", paths)
    page.wait("document.getElementById('status').dataset.state === 'done' && document.body.dataset.psd === 'ready'",
              timeout, f"the results of {len(paths)} image(s)")
    return page.eval("document.getElementById('status').textContent")


def click_largest_particle(page: Page, card: int = 0) -> int:
    """Click (a real mouse click) the largest measurable particle of the ``card``-th image; return its id."""
    where = page.eval(f"""(() => {{
        const card = document.querySelectorAll('.card')[{card}];
        const rows = card.result.particles.filter(p => p.measurable);
        if (!rows.length) return null;
        const p = rows.reduce((a, b) => (b.area_px > a.area_px ? b : a));
        const img = card.querySelector('img');
        img.scrollIntoView({{block: 'center'}});
        const r = img.getBoundingClientRect();
        const s = r.width / card.result.width;
        return {{id: p.id, x: r.left + (p.centroid_col_px + 0.5) * s, y: r.top + (p.centroid_row_px + 0.5) * s}};
    }})()""")
    if not where:
        raise NanosegError("the image has no measurable particle to click")
    page.click(where["x"], where["y"])
    page.wait(f"document.querySelectorAll('.card')[{card}].dataset.selected === '{where['id']}'", 10,
              f"particle {where['id']}'s measurements")
    return int(where["id"])


@report_errors
def main(argv=None) -> int:
    from nanoseg.serving.service import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model for `nanoseg app` (default {DEFAULT_MODEL})")
    p.add_argument("--out", default="docs/app.png", help="PNG to write (default docs/app.png)")
    p.add_argument("--size", default="1400x1900", help="window WIDTHxHEIGHT in px (default 1400x1900)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the results (default 600)")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="nanoseg-app-shot-") as tmp:
        server = AppServer(args.model, Path(tmp) / "app.log")
        page = None
        try:
            server.wait()
            page = Page(str(Path(tmp) / "profile"), size)
            page.open(server.url + "/")
            status = drop_images(page, args.images, args.timeout)
            pid = click_largest_particle(page)
            page.eval("window.scrollTo(0, 0)")
            out = page.screenshot(Path(args.out))
        finally:
            if page is not None:
                page.close()
            server.stop()
    print(json.dumps({"out": str(out), "status": status, "clicked_particle": pid}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
