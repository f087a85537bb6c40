"""Serving over HTTP: the real `mlflow models serve` on loopback answers like `nanoseg predict`,
refuses malformed requests with 4xx and a message, and `nanoseg request` / `nanoseg serve` wrap it."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nanoseg import cli
from nanoseg.errors import NanosegError
from tests.conftest import IMAGES, write_small_dataset
from tests.s3server import free_ports
from tests.test_registry import save_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tmp MLflow store holding a tiny untrained model registered as nanoseg@champion."""
    from nanoseg import tracking
    from nanoseg.serving import input_example

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlruns/mlflow.db'}"
    folder = save_tiny_model(root / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.setup()
        with tracking.start_run("publish-test"):
            info = tracking.log_pyfunc(folder, input_example())
        tracking.set_alias(info.registered_model_version)
        yield {"root": root, "uri": uri, "folder": folder}


@pytest.fixture(scope="module")
def images(tmp_path_factory, bam_dir):
    """A TIFF with its pixel size (TIFF resolution) and a PNG without one, cut from the BAM images."""
    from PIL import Image

    data = write_small_dataset(tmp_path_factory.mktemp("images"), n=2)
    tif, other = sorted((data / IMAGES).glob("*.tif"))
    png = other.with_suffix(".png")
    Image.open(other).save(png)
    return tif, png


class Server:
    """The documented command, started on loopback in its own process group."""

    def __init__(self, store, log: Path):
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/nanoseg@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self, timeout=240):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        pytest.fail(f"the server did not answer /ping in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self):
        from nanoseg.serving import stop_process_group

        stop_process_group(self.proc)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    srv = Server(store, tmp_path_factory.mktemp("server") / "server.log")
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


def post(url, body: bytes, content_type="application/json"):
    req = urllib.request.Request(url + "/invocations", data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:  # e.g. 415 answers in plain text
            return exc.code, {"message": text.decode(errors="replace")}


def test_answers_match_nanoseg_predict(server, store, images, tmp_path):
    import tifffile
    from PIL import Image

    from nanoseg.serving import decode_labels, decode_mask, make_request

    status, reply = post(server.url, json.dumps(make_request(images)).encode())
    assert status == 200, reply
    answers = {a["name"]: a for a in reply["predictions"]}
    assert list(answers) == [p.name for p in images]

    out = tmp_path / "pred"
    assert cli.main(["predict", *map(str, images), "--model", str(store["folder"]), "--out", str(out)]) == 0
    table = pd.read_csv(out / "particles.csv")
    tif, png = (answers[p.name] for p in images)
    assert tif["unit"] == "nm" and tif["pixel_size_nm"] == pytest.approx(7.34375) and png["unit"] == "px"
    for path in images:
        a = answers[path.name]
        mask = np.asarray(Image.open(out / f"{path.stem}_mask.png")) > 0
        assert np.array_equal(decode_mask(a["mask_png"]), mask)
        assert np.array_equal(decode_labels(a["labels_tif"]), tifffile.imread(out / f"{path.stem}_labels.tif"))
        rows = table[table["image"] == path.name].dropna(axis=1, how="all").reset_index(drop=True)
        got = pd.DataFrame(a["particles"])
        assert a["summary"]["n_particles"] == len(got) == len(rows) > 0
        assert (a["width"], a["height"]) == mask.shape[::-1] and a["databar_row"] < a["height"]
        for col in rows.columns:
            if col == "image":
                continue
            assert np.allclose(got[col].astype(float), rows[col].astype(float), equal_nan=True), col
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_particles"] == sum(a["summary"]["n_particles"] for a in answers.values())


def test_request_command_prints_summaries(server, images, tmp_path, capsys):
    png = images[1]
    assert cli.main(["request", "--url", server.url, str(png), "--pixel-size", "7.34375nm",
                     "--out", str(tmp_path / "got")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["name"] == png.name and summary[0]["unit"] == "nm"
    assert summary[0]["pixel_size_nm"] == pytest.approx(7.34375)
    assert summary[0]["n_particles"] >= summary[0]["n_measurable"] >= 0 and "median_ecd" in summary[0]
    assert (tmp_path / "got" / f"{png.stem}_mask.png").is_file()
    assert "ecd_nm" in pd.read_csv(tmp_path / "got/particles.csv").columns


def test_malformed_requests_get_400_with_a_message(server, tmp_path):
    from PIL import Image

    def record(data: bytes, **kw):
        return json.dumps({"dataframe_records": [{"image": base64.b64encode(data).decode(), **kw}]}).encode()

    buf = io.BytesIO()
    Image.fromarray(np.zeros((6000, 6000), np.uint8)).save(buf, format="PNG")  # 36 Mpx, 35 kB
    cases = {
        "not an image": (record(b"this is not an image", name="notes.tif"), "not a TIFF or PNG image"),
        "not base64": (json.dumps({"inputs": [{"image": "%%%"}]}).encode(), "not valid base64"),
        "empty body": (b"", "valid JSON"),
        "huge image": (record(buf.getvalue(), name="huge.png"), "more than the 16.8 Mpx"),
        "no image field": (json.dumps({"dataframe_records": [{"name": "x.tif"}]}).encode(), "missing inputs"),
        "bad databar row": (record(b"x", databar_row=1.5), "databar_row"),
    }
    for what, (body, message) in cases.items():
        status, reply = post(server.url, body)
        assert 400 <= status < 500, (what, status, reply)
        assert message in reply.get("message", ""), (what, reply)
    status, _ = post(server.url, b"x", content_type="text/plain")
    assert status == 415
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    with pytest.raises(NanosegError, match=r"HTTP 400\): .*notes.tif.*not a TIFF or PNG image"):
        cli.main.__wrapped__(["request", "--url", server.url, str(bad)])


def test_server_stops(server):
    server.stop()
    assert server.proc.poll() is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "/ping", timeout=2)


def test_serve_command_runs_mlflow_models_serve(store, monkeypatch, tmp_path):
    """`nanoseg serve` is the documented `mlflow models serve` on the project's store."""
    from nanoseg import serving

    calls = []

    class FakeServer:  # what Popen would start: records the command, "exits" at once
        def __init__(self, cmd, env, start_new_session):
            calls.append((cmd, env))
            self.pid = -1

        def wait(self, timeout=None):
            return 0

        poll = wait

    monkeypatch.setattr(serving.subprocess, "Popen", FakeServer)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    assert cli.main(["serve", "--port", "5099"]) == 0
    cmd, env = calls[-1]
    assert cmd[1:] == ["-m", "mlflow", "models", "serve", "-m", "models:/nanoseg@champion", "--env-manager",
                       "local", "-h", "127.0.0.1", "-p", "5099"]
    assert env["MLFLOW_TRACKING_URI"] == store["uri"]
    assert cli.main(["serve", "--model", str(store["folder"])]) == 0  # a plain model folder is wrapped
    assert calls[-1][0][calls[-1][0].index("-m", 3) + 1] != str(store["folder"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(NanosegError, match="models:/nanoseg@champion: not found in the model registry"):
        cli.main.__wrapped__(["serve"])


# ----------------------------------------------------------------------------- without a server


def test_image_size_reads_the_real_layout():
    """A planar RGB TIFF page (3 x H x W) is H x W, not 3 x H; a PNG bomb's size comes from its header."""
    import tifffile

    from nanoseg.serving import RequestError, image_size, read_upload
    from tests.test_layout import png_header

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((3, 600, 500), np.uint8), photometric="rgb", planarconfig="separate")
    assert image_size(buf.getvalue()) == (600, 500)
    record = {"image": base64.b64encode(buf.getvalue()).decode(), "name": "planar.tif"}
    with pytest.raises(RequestError, match=r"planar.tif\): the image is 500 x 600 px \(0.3 Mpx\), more than the 0.2"):
        read_upload(record, 0, max_pixels=200_000)
    assert read_upload(record, 0, max_pixels=300_000)[1] == "planar.tif"
    bomb = png_header(30000, 30000)
    assert image_size(bomb) == (30000, 30000)
    with pytest.raises(RequestError, match=r"30000 x 30000 px \(900.0 Mpx\).*\(a decompression bomb\?\)"):
        read_upload({"image": base64.b64encode(bomb).decode()}, 0)
    stack = io.BytesIO()
    tifffile.imwrite(stack, np.zeros((5, 30, 40), np.uint8))
    with pytest.raises(RequestError, match="image 1: a stack of 5 images"):
        read_upload({"image": base64.b64encode(stack.getvalue()).decode()}, 0)


def _fake_answer(name: str) -> dict:
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png, format="PNG")
    return {"name": name, "unit": "px", "pixel_size_nm": None, "summary": {"n_particles": 0},
            "particles": [{"image": name, "id": 1, "area_px": 3}],
            "mask_png": base64.b64encode(png.getvalue()).decode(), "labels_tif": base64.b64encode(b"II*\x00").decode()}


def test_request_out_refuses_collisions_and_existing_answers(tmp_path, monkeypatch, capsys):
    from nanoseg import serving

    sent = []

    def fake_post(url, body, timeout=600):
        sent.append(body)
        return {"predictions": [_fake_answer(r["name"]) for r in body["dataframe_records"]]}

    monkeypatch.setattr(serving, "post", fake_post)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = tmp_path / "a" / "x.tif", tmp_path / "b" / "x.png"
    one.write_bytes(b"II*\x00")
    two.write_bytes(b"\x89PNG")
    out = tmp_path / "got"
    with pytest.raises(NanosegError, match=r"several images are named \['x'\]"):
        cli.main.__wrapped__(["request", str(one), str(two), "--out", str(out), "--overwrite"])
    assert not sent and not out.exists()  # refused before anything was sent
    assert cli.main(["request", str(one), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["particles.csv", "x_labels.tif", "x_mask.png"]
    before = (out / "particles.csv").read_text()
    with pytest.raises(NanosegError, match=r"got: already holds particles.csv, x_labels.tif, x_mask.png; pass "
                                           r"--overwrite"):
        cli.main.__wrapped__(["request", str(one), "--out", str(out)])
    assert len(sent) == 1 and (out / "particles.csv").read_text() == before
    assert cli.main(["request", str(one), "--out", str(out), "--overwrite"]) == 0
    assert len(sent) == 2 and not [p for p in out.iterdir() if ".tmp" in p.name]
    capsys.readouterr()
