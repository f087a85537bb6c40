"""`nanoseg app`: the page's API gives predict's files and numbers, the CLI's messages and serving's limits;
the page itself, driven in headless Chromium, shows predict's particle count and downloads its particles.csv."""

from __future__ import annotations

import io
import json
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image

from nanoseg.cli import build_parser, main
from nanoseg.errors import NanosegError
from nanoseg.model.network import save_model
from nanoseg.io.outputs import MARKER
from nanoseg.cli.predict import predict_command
from tests.conftest import IMAGES, PX_PER_CM
from tests.s3server import free_ports
from tests.io.test_rois import discs_png

THRESHOLD = 0.4  # between the BAM crops' background and particles, and the discs' 60/255 and 190/255


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A 'model' whose probability is the image (deterministic, fast), with watershed splitting."""
    x = keras.Input((None, None, 1))
    return save_model(keras.Model(x, keras.layers.Identity()(x)), tmp_path_factory.mktemp("app") / "model",
                      {"threshold": THRESHOLD, "postprocess": {"split": True, "min_distance_px": 5}})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """discs.png (no pixel size), other.jpg (JPEG, no pixel size)."""
    folder = tmp_path_factory.mktemp("images")
    png = discs_png(folder / "discs.png")
    jpg = folder / "other.jpg"
    Image.open(png).transpose(Image.Transpose.ROTATE_90).save(jpg, quality=95)
    return SimpleNamespace(folder=folder, png=png, jpg=jpg)


@pytest.fixture(scope="module")
def crop(images, bam_dir):
    """crop.tif: 168 sample rows + 32 data-bar rows of a BAM image, pixel size in the TIFF."""
    from nanoseg.io.micrograph import read_micrograph

    mg = read_micrograph(sorted((bam_dir / IMAGES).glob("*.tif"))[0])
    pixels = np.concatenate([mg.pixels[100:268, 200:500], mg.pixels[712:744, 200:500]])
    path = images.folder / "crop.tif"
    tifffile.imwrite(path, (pixels * 255).round().astype(np.uint8), resolution=(PX_PER_CM, PX_PER_CM),
                     resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_folder):
    """The app (create_app over a Workspace) served by uvicorn on a free loopback port, in a thread."""
    import uvicorn

    from nanoseg.app.web import Workspace, create_app
    from nanoseg.inference.loading import load_predictor

    predictor, settings = load_predictor(model_folder)
    ws = Workspace(predictor, settings, tmp_path_factory.mktemp("workspace"), str(model_folder))
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(ws), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not server.started and time.monotonic() < end:
        time.sleep(0.05)
    assert server.started
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", ws=ws)
    server.should_exit = True
    thread.join(30)


# ----------------------------------------------------------------------------- HTTP helpers


def call(method: str, url: str, body: bytes | None = None, content_type: str | None = None):
    """(status, bytes) of one request."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def form(fields: dict, files: dict | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body (what the page's FormData sends)."""
    boundary = secrets.token_hex(12)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for key, (filename, data) in (files or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(app, path: Path, pixel_size: str | None = None, name: str | None = None):
    body, ctype = form({"pixel_size": pixel_size} if pixel_size else {},
                       {"file": (name or path.name, Path(path).read_bytes())})
    status, data = call("POST", app.url + "/api/images", body, ctype)
    return status, json.loads(data)


def get(app, path: str):
    status, data = call("GET", app.url + path)
    assert status == 200, data[:500]
    return data


def clear(app):
    assert call("DELETE", app.url + "/api/images")[0] == 200


def predict(images, model, out: Path, **kw) -> dict:
    args = Namespace(images=[str(i) for i in images], model=str(model), out=str(out), overwrite=False,
                     pixel_size=kw.get("pixel_size"), databar_row=None, tta=False, roi=True)
    assert predict_command(args) == 0
    return json.loads((out / "summary.json").read_text())


def roi_set(data: bytes):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(r.name, r.coordinates().tolist()) for r in (roifile.ImagejRoi.frombytes(zf.read(n))
                                                              for n in zf.namelist())]


# ----------------------------------------------------------------------------- the API


def test_same_files_and_numbers_as_predict(app, images, crop, model_folder, tmp_path):
    clear(app)
    results = [upload(app, p) for p in (crop, images.png)]
    assert [s for s, _ in results] == [200, 200], results
    summary = predict([crop, images.png], model_folder, tmp_path / "pred")
    out = tmp_path / "pred"
    assert get(app, "/api/particles.csv").decode() == (out / "particles.csv").read_text()
    psd = json.loads(get(app, "/api/psd"))
    assert psd["ecd_distribution"] == summary["ecd_distribution"] and psd["unit"] == summary["unit"] == "px"
    assert psd["n_particles"] == summary["n_particles"] and psd["n_measurable"] == summary["n_measurable"]
    for (_, res), info in zip(results, summary["images"]):
        stem = Path(res["name"]).stem
        assert res["summary"]["n_particles"] == info["particles"] > 0
        assert res["summary"]["n_measurable"] == info["measurable"]
        assert (res["databar_row"], res["pixel_size_nm"]) == (info["databar_row"], info["pixel_size_nm"])
        assert set(res["files"]) == {f"{stem}_{s}" for s in ("labels.tif", "mask.png", "overlay.png", "rois.zip")}
        base = f"/api/images/{res['id']}/files/{stem}"
        labels = tifffile.imread(io.BytesIO(get(app, base + "_labels.tif")))
        np.testing.assert_array_equal(labels, tifffile.imread(out / f"{stem}_labels.tif"))
        assert get(app, base + "_overlay.png") == (out / f"{stem}_overlay.png").read_bytes()
        rois = roi_set(get(app, base + "_rois.zip"))
        assert rois == roi_set((out / f"{stem}_rois.zip").read_bytes())
        assert [int(n) for n, _ in rois] == [p["id"] for p in res["particles"]]
        assert [res["outlines"][n] for n, _ in rois] == [c for _, c in rois]  # the page draws the ROI polygons
    with zipfile.ZipFile(io.BytesIO(get(app, "/api/results.zip"))) as zf:
        names = {n.split("/", 1)[1] for n in zf.namelist()}
        assert names == {p.name for p in out.iterdir()} - {MARKER}  # the zip: the results, not the folder marker
        assert zf.read("nanoseg-results/particles.csv").decode() == (out / "particles.csv").read_text()
        zipped = json.loads(zf.read("nanoseg-results/summary.json"))
        assert zipped["ecd_distribution"] == summary["ecd_distribution"]
    assert get(app, "/api/psd.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_jpeg_and_pixel_size_override_like_predict(app, images, model_folder, tmp_path):
    clear(app)
    status, res = upload(app, images.jpg, pixel_size="6.5nm")
    assert status == 200 and res["unit"] == "nm" and res["pixel_size_source"] == "override"
    summary = predict([images.jpg], model_folder, tmp_path / "pred", pixel_size="6.5nm")
    assert get(app, "/api/particles.csv").decode() == (tmp_path / "pred/particles.csv").read_text()
    assert res["summary"]["n_particles"] == summary["n_particles"] > 0


def cli_message(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("nanoseg: error: ")]
    return lines[-1][len("nanoseg: error: "):]


def test_bad_uploads_get_the_cli_messages(app, images, model_folder, tmp_path, monkeypatch, capsys):
    clear(app)
    monkeypatch.chdir(tmp_path)
    tif = io.BytesIO()
    tifffile.imwrite(tif, np.zeros((64, 64), np.uint8))
    bad = {"notes.tif": b"not an image\n", "empty.png": b"", "cut.tif": tif.getvalue()[:200],
           "table.csv": b"a,b\n1,2\n"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        expected = cli_message(capsys, "predict", name, "--model", str(model_folder), "--out", f"out-{name}")
        status, answer = upload(app, tmp_path / name)
        assert status == 400 and answer["message"] == expected, name
        assert name in expected and "\n" not in expected
    expected = cli_message(capsys, "predict", str(images.png), "--model", str(model_folder), "--out", "o",
                           "--pixel-size", "7 parsecs")
    status, answer = upload(app, images.png, pixel_size="7 parsecs")
    assert status == 400 and answer["message"] == expected
    assert json.loads(get(app, "/api/images")) == []  # nothing refused stays on the page


def test_limits_as_in_serving(app, images):
    from nanoseg.serving.payload import MAX_IMAGE_BYTES, MAX_IMAGES, MAX_PIXELS

    ws = app.ws
    assert (ws.max_images, ws.max_bytes, ws.max_pixels) == (MAX_IMAGES, MAX_IMAGE_BYTES, MAX_PIXELS)
    limits = json.loads(get(app, "/api/info"))["limits"]
    assert limits == {"max_images": MAX_IMAGES, "max_image_bytes": MAX_IMAGE_BYTES, "max_pixels": MAX_PIXELS}
    clear(app)
    try:
        ws.max_pixels = 150 * 150
        status, answer = upload(app, images.png)
        assert status == 400 and answer["message"].startswith("discs.png: the image is 200 x 200 px")
        assert "this server accepts; send a smaller image." in answer["message"]
        ws.max_pixels, ws.max_bytes = MAX_PIXELS, 100
        status, answer = upload(app, images.png)
        assert status == 400 and "discs.png: the image file is larger than" in answer["message"]
        ws.max_bytes, ws.max_images = MAX_IMAGE_BYTES, 1
        assert upload(app, images.png)[0] == 200
        status, answer = upload(app, images.jpg)
        assert status == 400 and "already holds 1 images" in answer["message"]
        ws.max_images = MAX_IMAGES
        status, answer = upload(app, images.jpg, name="discs.jpg")
        assert status == 400 and "an image named 'discs' is already on the page" in answer["message"]
    finally:
        ws.max_images, ws.max_bytes, ws.max_pixels = MAX_IMAGES, MAX_IMAGE_BYTES, MAX_PIXELS
    assert len(json.loads(get(app, "/api/images"))) == 1


def test_rerun_with_another_pixel_size_and_remove(app, images):
    clear(app)
    status, res = upload(app, images.png)
    assert status == 200 and res["unit"] == "px" and any("no pixel size" in n for n in res["notes"])
    rerun = f"/api/images/{res['id']}/rerun"
    status, data = call("POST", app.url + rerun, *form({"pixel_size": "5nm"}))
    again = json.loads(data)
    assert status == 200 and again["unit"] == "nm" and again["pixel_size_override"] == "5nm"
    assert len(again["particles"]) == len(res["particles"])
    np.testing.assert_allclose([p["ecd_nm"] for p in again["particles"]],
                               [5 * p["ecd_px"] for p in res["particles"]], rtol=1e-12)
    status, data = call("POST", app.url + rerun, *form({"pixel_size": "abc"}))
    assert status == 400 and "cannot read the pixel size 'abc'" in json.loads(data)["message"]
    assert json.loads(get(app, "/api/images"))[0]["unit"] == "nm"  # a refused re-run keeps the result
    assert call("DELETE", f"{app.url}/api/images/{res['id']}")[0] == 200
    status, data = call("GET", f"{app.url}/api/images/{res['id']}/view.png")
    assert status == 404 and "no image" in json.loads(data)["message"]
    status, data = call("GET", f"{app.url}/api/images/nope/files/..%2Fsecret")
    assert status == 404


def test_page_and_static_files_are_local(app):
    html = get(app, "/").decode()
    assert "/static/app.js" in html and "/static/style.css" in html
    for asset in ("app.js", "style.css"):
        text = get(app, f"/static/{asset}").decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "https://" not in html and "http://" not in html


def test_cli_defaults_and_busy_port():
    from nanoseg.app.web import DEFAULT_PORT
    from nanoseg.cli.app import check_port
    from nanoseg.serving.service import DEFAULT_MODEL

    args = build_parser().parse_args(["app"])
    assert args.model is None and args.port == DEFAULT_PORT == 5002  # app_command: None -> DEFAULT_MODEL
    assert DEFAULT_MODEL == "models:/nanoseg@champion"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(NanosegError, match="another --port"):
            check_port(s.getsockname()[1])


# ----------------------------------------------------------------------------- the page in Chromium


def test_page_in_headless_chromium(images, crop, model_folder, tmp_path):
    """Drop a TIFF and a PNG on the page, wait, compare with predict, click a particle, download particles.csv."""
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    from scripts.app_screenshot import AppServer, Page, click_largest_particle, drop_images

    summary = predict([crop, images.png], model_folder, tmp_path / "pred")
    server = AppServer(model_folder, tmp_path / "app.log")  # the command: nanoseg app --model ... --port ...
    page = None
    try:
        server.wait()
        page = Page(str(tmp_path / "profile"), size=(1400, 1600))
        page.open(server.url + "/")
        status = drop_images(page, [crop, images.png], timeout=600)
        assert status.startswith("Done: 2 image(s)"), status
        counts = page.eval("[...document.querySelectorAll('.card')].map(c => Number(c.dataset.particles))")
        assert counts == [i["particles"] for i in summary["images"]]
        assert int(page.eval("document.body.dataset.total")) == summary["n_particles"]
        assert page.eval("document.querySelectorAll('.card polygon').length") == summary["n_particles"]
        assert page.eval("document.querySelectorAll('.card svg rect.databar').length") == 1  # the crop's data bar
        assert page.eval("document.querySelector('#psd .fit') !== null")
        pid = click_largest_particle(page, 0)
        details = page.eval("document.querySelector('.card .measure').innerText")
        assert f"particle id\t{pid}" in details and "ECD (nm)" in details
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        page.allow_downloads(downloads)
        page.eval("document.getElementById('download-csv').click()")
        end = time.monotonic() + 30
        while not (downloads / "particles.csv").is_file() and time.monotonic() < end:
            time.sleep(0.2)
        assert (downloads / "particles.csv").read_text() == (tmp_path / "pred/particles.csv").read_text()
        shot = page.screenshot(tmp_path / "app.png")
        assert len(Image.open(shot).convert("RGB").getcolors(1 << 24) or []) > 200
    finally:
        if page is not None:
            page.close()
        server.stop()
