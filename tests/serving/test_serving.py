"""Serving over HTTP: the real `nanoseg serve` on loopback answers like `nanoseg predict`, refuses malformed
requests with 4xx and a one-line message, `nanoseg request` / `nanoseg serve` wrap it; models logged as code
(and versions pickled before) load; the service is thread-safe with a concurrency limit; the guard's answers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nanoseg import cli
from nanoseg.errors import NanosegError
from nanoseg.serving import pyfunc
from tests.conftest import IMAGES, write_small_dataset
from tests.served import Served, post
from tests.tiny_model import champion_store

pytestmark = pytest.mark.slow

# python_model.pkl of every version registered before models from code: a reference to nanoseg.tracking.NanosegPyfunc
LEGACY_PICKLE = (b"\x80\x05\x95)\x00\x00\x00\x00\x00\x00\x00\x8c\x10nanoseg.tracking\x94\x8c\rNanosegPyfunc\x94"
                 b"\x93\x94)\x81\x94.")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tmp MLflow store holding a tiny untrained model registered as nanoseg@champion."""
    with champion_store(tmp_path_factory.mktemp("serving")) as store:
        yield store


@pytest.fixture(scope="module")
def images(tmp_path_factory, bam_dir):
    """A TIFF with its pixel size (TIFF resolution) and a PNG without one, cut from the BAM(-layout) images."""
    from PIL import Image

    data = write_small_dataset(bam_dir, tmp_path_factory.mktemp("images"), n=2)
    tif, other = sorted((data / IMAGES).glob("*.tif"))
    png = other.with_suffix(".png")
    Image.open(other).save(png)
    return tif, png


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """`nanoseg serve` (default model models:/nanoseg@champion) on the store."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = Served("models:/nanoseg@champion", log, "--max-concurrent", "2", env={"MLFLOW_TRACKING_URI": store["uri"]})
    try:
        yield srv.wait()
    finally:
        srv.stop()


def test_answers_match_nanoseg_predict(server, store, images, tmp_path):
    import tifffile
    from PIL import Image

    from nanoseg.serving.payload import decode_labels, decode_mask, make_request

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
    from nanoseg import processes

    server.stop()
    assert server.proc.poll() is not None and not processes.running(server.proc)  # uvicorn and its workers too
    assert not server.alive()


def test_serve_without_the_venv_on_path(store, images, tmp_path):
    """`.venv/bin/nanoseg serve` from a bare environment (cron, systemd: `env -i PATH=/usr/bin:/bin`) starts
    its server with the venv's tools and answers a real request; stopping it leaves no process behind."""
    from nanoseg import processes
    from nanoseg.serving.payload import make_request

    script = processes.tool("nanoseg")
    assert Path(script).is_file(), "the nanoseg script next to the interpreter (pip install -e .)"
    bare = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)), "LC_ALL": "C.UTF-8",
            **{k: os.environ[k] for k in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL") if k in os.environ}}
    srv = Served(store["folder"], tmp_path / "bare.log", "--workers", "2", command=[script], base_env=bare,
                 env={"MLFLOW_TRACKING_URI": store["uri"]})
    try:
        srv.wait()
        status, reply = post(srv.url, json.dumps(make_request(images[:1])).encode())
        assert status == 200 and reply["predictions"][0]["summary"]["n_particles"] > 0, reply
        assert processes.family(srv.proc)  # uvicorn (and its 2 workers) under `nanoseg serve`
    finally:
        srv.stop()
    assert not processes.running(srv.proc) and not srv.alive()


class FakeServer:
    """What Popen would start: records the command, "exits" at once."""

    calls: list = []

    def __init__(self, cmd, env, start_new_session):
        self.calls.append((cmd, env))
        self.pid = -1

    def wait(self, timeout=None):
        return 0

    poll = wait


def test_serve_command_runs_uvicorn_with_explicit_limits(store, monkeypatch, tmp_path, capsys):
    """`nanoseg serve`: uvicorn running nanoseg's guard over MLflow's scoring app, with explicit workers,
    concurrency limit and timeout, pickles refused, the store's password masked in what it prints."""
    from nanoseg import processes

    monkeypatch.setattr(processes.subprocess, "Popen", FakeServer)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    assert cli.main(["serve", "--port", "5099", "--workers", "3", "--max-concurrent", "4", "--timeout", "90"]) == 0
    cmd, env = FakeServer.calls[-1]
    assert cmd[1:] == ["-m", "uvicorn", "--factory", "nanoseg.serving.server:create_app", "--host", "127.0.0.1", "--port",
                       "5099", "--workers", "3", "--no-server-header", "--timeout-graceful-shutdown", "10"]
    assert env["NANOSEG_SERVE_MAX_CONCURRENT"] == "4" and env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] == "90"
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false" and env["MLFLOW_TRACKING_URI"] == store["uri"]
    assert env["PATH"].split(os.pathsep)[: len(processes.bin_dirs())] == processes.bin_dirs()  # the venv's tools first
    assert "3 worker(s) x 4 request(s) at once, timeout 90 s" in capsys.readouterr().out

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cr3t-pw@127.0.0.1:9/")  # not used by a model folder
    assert cli.main(["serve", "--model", str(store["folder"])]) == 0  # a plain model folder is wrapped, as code
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "http://alice:***@127.0.0.1:9/" in out
    cmd, env = FakeServer.calls[-1]
    assert env["NANOSEG_SERVE_MAX_CONCURRENT"] == "2" and env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] == "300"
    assert cmd[cmd.index("--workers") + 1] == "1" and "nanoseg-serve-" in env["NANOSEG_SERVE_MODEL"]  # the defaults
    with pytest.raises(NanosegError, match="--workers 0"):
        cli.main.__wrapped__(["serve", "--model", str(store["folder"]), "--workers", "0"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(NanosegError, match="models:/nanoseg@champion: not found in the model registry"):
        cli.main.__wrapped__(["serve"])


def _legacy_version(folder) -> str:
    """Register ``folder`` the way publish did before models from code: a pickled pyfunc naming
    nanoseg.tracking.NanosegPyfunc. Returns the version."""
    import mlflow
    from mlflow.utils.file_utils import local_file_uri_to_path

    from nanoseg import tracking
    from nanoseg.serving.pyfunc import NanosegPyfunc

    with warnings.catch_warnings(), tracking.start_run("publish-legacy"):
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(name="model", python_model=NanosegPyfunc(),
                                       artifacts={pyfunc.MODEL_ARTIFACT: str(folder)},
                                       signature=pyfunc.pyfunc_signature(), registered_model_name="nanoseg")
    local = Path(local_file_uri_to_path(mlflow.get_logged_model(info.model_id).artifact_location))
    assert (local / "python_model.pkl").is_file()
    (local / "python_model.pkl").write_bytes(LEGACY_PICKLE)
    return str(info.registered_model_version)


def test_models_from_code_and_pickled_versions_load(store, monkeypatch, tmp_path):
    """A version logged as code loads (pickles refused) and predicts; one pickled the old way still loads with
    MLflow, and `nanoseg serve` serves its weights through this nanoseg's code without unpickling it."""
    import mlflow

    from nanoseg.serving.payload import input_example

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    mlflow.set_tracking_uri(store["uri"])
    source = mlflow.artifacts.download_artifacts("models:/nanoseg@champion", dst_path=str(tmp_path / "code"))
    flavor = mlflow.models.Model.load(source).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert pyfunc.is_own_code(source) and not list(tmp_path.rglob("*.pkl"))
    with monkeypatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        model = mlflow.pyfunc.load_model("models:/nanoseg@champion")
        new = model.predict(input_example(), params={"return_images": False})
    assert new[0]["name"] == "example.png" and new[0]["summary"]["n_particles"] == len(new[0]["particles"]) > 0

    version = _legacy_version(store["folder"])
    old = mlflow.pyfunc.load_model(f"models:/nanoseg/{version}")  # pickles allowed: MLflow's default
    assert type(old.unwrap_python_model()).__name__ == "NanosegPyfunc"
    assert old.predict(input_example(), params={"return_images": False}) == new
    local, note = pyfunc.servable_model(f"models:/nanoseg/{version}", tmp_path / "serve")
    assert "is a pickled pyfunc (logged before models from code)" in note and pyfunc.is_own_code(local)
    with monkeypatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        with pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
            mlflow.pyfunc.load_model(f"models:/nanoseg/{version}")
        assert mlflow.pyfunc.load_model(str(local)).predict(input_example(), params={"return_images": False}) == new
    edited = tmp_path / "edited"
    shutil.copytree(source, edited)
    (edited / "served_model.py").write_text("raise SystemExit('registry code must never run')\n")
    local, note = pyfunc.servable_model(str(edited), tmp_path / "serve2")
    assert "holds code other than this nanoseg's" in note and pyfunc.is_own_code(local)


# served_model.py as every version registered before nanoseg's subpackages holds it (it imports nanoseg.pyfunc)
PRE_MOVE_SERVED_MODEL = '''"""The served model's code, logged with every model version (MLflow "models from code").

``mlflow.pyfunc.log_model(python_model=<this file>, ...)`` copies this file into the model; loading
the model runs it, and :func:`mlflow.models.set_model` hands MLflow the model object. Nothing is
pickled: the model version holds this text, the weights (``artifacts/<folder>/model.keras``, loaded
by Keras in safe mode) and ``nanoseg.json``. The code itself is the installed nanoseg's
(:class:`nanoseg.pyfunc.NanosegPyfunc`); ``nanoseg serve`` serves a version through this file only
when the copy in the registry is byte for byte this one (:func:`nanoseg.tracking.servable_model`).
"""

import mlflow

from nanoseg.pyfunc import NanosegPyfunc

mlflow.models.set_model(NanosegPyfunc())
'''


def test_versions_registered_before_the_subpackages_load_and_serve(store, monkeypatch, tmp_path):
    """A version logged with the pre-move served_model.py (``from nanoseg.pyfunc import NanosegPyfunc``) loads
    with plain MLflow (pickles refused) and answers like the current code; `nanoseg serve` serves it as is."""
    import hashlib

    import mlflow

    from nanoseg import tracking
    from nanoseg.serving.payload import input_example

    assert hashlib.sha256(PRE_MOVE_SERVED_MODEL.encode()).hexdigest() in pyfunc.LEGACY_MODEL_CODE
    code = tmp_path / "served_model.py"
    code.write_text(PRE_MOVE_SERVED_MODEL)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    mlflow.set_tracking_uri(store["uri"])
    with warnings.catch_warnings(), tracking.start_run("publish-pre-move"):
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                       artifacts={pyfunc.MODEL_ARTIFACT: str(store["folder"])},
                                       signature=pyfunc.pyfunc_signature(), registered_model_name="nanoseg")
    uri = f"models:/nanoseg/{info.registered_model_version}"
    old = mlflow.pyfunc.load_model(uri).predict(input_example(), params={"return_images": False})
    new = mlflow.pyfunc.load_model("models:/nanoseg@champion").predict(input_example(), params={"return_images": False})
    assert old == new and old[0]["summary"]["n_particles"] > 0
    local, note = pyfunc.servable_model(uri, tmp_path / "serve")
    assert note is None and (local / "served_model.py").read_text() == PRE_MOVE_SERVED_MODEL  # served as it is


# ----------------------------------------------------------------------------- thread safety, limits, errors


def test_service_limits_concurrent_requests(monkeypatch):
    from nanoseg.serving import service as serving
    from nanoseg.serving.payload import ServerBusy

    service = serving.Service(None, {"threshold": 0.5}, max_concurrent=1)
    started, release = threading.Event(), threading.Event()

    def answer(model_input, return_images, params):  # the work of one request, held until released
        started.set()
        release.wait(30)
        return ["done"]

    monkeypatch.setattr(service, "_answer", answer)
    results = []
    worker = threading.Thread(target=lambda: results.append(service.predict([{"image": "x"}])))
    worker.start()
    assert started.wait(30)
    with pytest.raises(ServerBusy, match="answers 1 request"):
        service.predict([{"image": "x"}])
    release.set()
    worker.join(30)
    assert results == [["done"]] and service.predict([{"image": "x"}]) == ["done"]  # the slot is free again
    with pytest.raises(NanosegError, match="at least 1"):
        serving.Service(None, {}, max_concurrent=0)


def test_reads_change_no_process_wide_state(tmp_path):
    """Each thread's tifffile messages go to its own list; a missing pixel size becomes a note, not a warning."""
    import tifffile

    from nanoseg.io.micrograph import quiet_tifffile, read_micrograph

    logger = logging.getLogger("tifffile")
    handlers, propagate, filters = list(logger.handlers), logger.propagate, list(logger.filters)
    seen, barrier = {}, threading.Barrier(4)

    def log(i):
        with quiet_tifffile() as got:
            barrier.wait(10)
            logger.warning("message %d", i)
            barrier.wait(10)
        seen[i] = got

    threads = [threading.Thread(target=log, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == {i: [f"message {i}"] for i in range(4)}
    assert (list(logger.handlers), logger.propagate, list(logger.filters)) == (handlers, propagate, filters)

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.full((40, 50), 128, np.uint8))
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mg = read_micrograph(path, notes=notes)
    assert mg.pixel_size_nm is None and len(notes) == 1 and "no pixel size" in notes[0]


def test_served_errors_are_one_line_with_the_right_status():
    from nanoseg.serving.payload import RequestError, ServerBusy
    from nanoseg.serving.pyfunc import served_error

    bad = served_error(RequestError("image 1 (a\nb.tif): not an image"))
    assert bad.get_http_status_code() == 400 and bad.message == "image 1 (a b.tif): not an image"
    assert served_error(ServerBusy("busy")).get_http_status_code() == 503
    fault = served_error(KeyError("threshold"))
    body = json.loads(fault.serialize_as_json())
    assert fault.get_http_status_code() == 500 and "internal error" in body["nanoseg_message"]
    assert "Traceback" not in fault.serialize_as_json() and "stack_trace" not in body
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    assert key not in served_error(RequestError(f"s3://b/k with {key}")).message


def call(app, body: bytes = b"{}", path: str = "/invocations") -> tuple[int, dict, bytes]:
    """Run one request through an ASGI app: (status, headers, body)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-type", b"application/json")]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def fake_app(status: int, body: bytes, raise_after: bool = False, hold: asyncio.Event | None = None):
    async def app(scope, receive, send):
        await receive()
        if hold is not None:
            await hold.wait()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
        if raise_after:
            raise RuntimeError("boom")

    return app


def test_guard_cleans_error_answers():
    from nanoseg.serving.server import Guard

    trace = json.dumps({"error_code": "BAD_REQUEST", "message": "Encountered an unexpected error", "stack_trace":
                        "Traceback (most recent call last):\n  File \"x.py\", line 1"}).encode()
    status, headers, body = call(Guard(fake_app(500, trace), 2, 60))
    answer = json.loads(body)
    assert status == 500 and set(answer) == {"error_code", "message"} and "internal error" in answer["message"]
    assert b"Traceback" not in body and b"x.py" not in body and headers[b"content-type"] == b"application/json"
    status, _, body = call(Guard(fake_app(500, b"Internal Server Error", raise_after=True), 2, 60))
    assert status == 500 and b"internal error" in body
    status, _, body = call(Guard(fake_app(504, b"Request processing time exceeded limit"), 2, 60))
    assert status == 504 and "timeout (60 s)" in json.loads(body)["message"]
    prefixed = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "Failed to predict data '<the whole "
                           "request>'. \nError: image 1: bad", "nanoseg_message": "image 1: bad"}).encode()
    status, _, body = call(Guard(fake_app(400, prefixed), 2, 60))
    assert status == 400 and json.loads(body) == {"error_code": "INVALID_PARAMETER_VALUE", "message": "image 1: bad"}
    status, _, body = call(Guard(fake_app(200, b"ok"), 2, 60), path="/ping")
    assert (status, body) == (200, b"ok")
    status, _, body = call(Guard(fake_app(200, b"{}"), 2, 60), b'{"dataframe_records": [{"image": "x", "pixel": 1}]}')
    assert status == 400 and "unknown field(s) ['pixel']" in json.loads(body)["message"]


def test_guard_answers_503_when_full():
    from nanoseg.serving.server import Guard

    async def scenario():
        hold = asyncio.Event()
        guard = Guard(fake_app(200, b"{}", hold=hold), 1, 60)
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": []}
        busy = asyncio.create_task(guard(scope, receive, send))
        await asyncio.sleep(0.05)
        extra = []

        async def send_extra(message):
            extra.append(message)

        await guard(scope, receive, send_extra)
        hold.set()
        await busy
        return sent, extra

    sent, extra = asyncio.run(scenario())
    assert sent[0]["status"] == 200 and extra[0]["status"] == 503
    assert (b"retry-after", b"2") in extra[0]["headers"] and b"the server is busy" in extra[1]["body"]


# ----------------------------------------------------------------------------- without a server


def test_image_size_reads_the_real_layout():
    """A planar RGB TIFF page (3 x H x W) is H x W, not 3 x H; a PNG bomb's size comes from its header."""
    import tifffile

    from nanoseg.serving.payload import RequestError, image_size, read_upload
    from tests.io.test_layout import png_header

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
    from nanoseg.cli import request

    sent = []

    def fake_post(url, body, timeout=600):
        sent.append(body)
        return {"predictions": [_fake_answer(r["name"]) for r in body["dataframe_records"]]}

    monkeypatch.setattr(request, "post", fake_post)
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
