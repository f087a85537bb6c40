"""Bad requests against a real `nanoseg serve`: each gets its status code and nanoseg's one-line message,
never a stack trace or the request echoed back; a server fault is a 500 with an error id, and the server
keeps answering."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from tests.served import Served, post_raw
from tests.tiny_model import save_tiny_model

pytestmark = pytest.mark.slow


def png(rows: int = 64, cols: int = 64) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(rows * cols) % 251).astype(np.uint8).reshape(rows, cols)).save(buf, format="PNG")
    return buf.getvalue()


def tiff(shape=(64, 64), nan: bool = False) -> bytes:
    import tifffile

    pixels = (np.arange(np.prod(shape)) % 251).reshape(shape)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.where(pixels == 7, np.nan, pixels).astype(np.float32) if nan else pixels.astype(np.uint8))
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD = b64(png())


def records(*rows, **extra) -> bytes:
    return json.dumps({"dataframe_records": list(rows), **extra}).encode()


def image(data: bytes = None, **fields) -> dict:
    return {"image": GOOD if data is None else b64(data), **fields}


JSON_SHAPE = "must be a JSON object with one of"
CASES = [  # id, body, content type, status, message substring
    ("empty body", b"", "application/json", 400, "not valid JSON"),
    ("not JSON", b"{image: nope", "application/json", 400, "not valid JSON"),
    ("not UTF-8", b'\xff\xfe{"dataframe_records": []}', "application/json", 400, "not valid JSON (or not UTF-8)"),
    ("a JSON list", json.dumps([image()]).encode(), "application/json", 400, JSON_SHAPE),
    ("unknown top-level key", json.dumps({"records": [image()]}).encode(), "application/json", 400, JSON_SHAPE),
    ("records not a list", json.dumps({"dataframe_records": "abc"}).encode(), "application/json", 400,
     "must be a list of records"),
    ("no records", records(), "application/json", 400, "missing inputs ['image']"),
    ("no image field", records({"name": "x.tif"}), "application/json", 400, "missing inputs ['image']"),
    ("image null", records({"image": None}), "application/json", 400, "'image' is missing or empty"),
    ("image empty", records({"image": ""}), "application/json", 400, "'image' is missing or empty"),
    ("image a number", records({"image": 12}), "application/json", 400, '"image" is a number'),
    ("not base64", records({"image": "%%% not base64 %%%"}), "application/json", 400, "not valid base64"),
    ("empty data URL", records({"image": "data:image/png;base64,"}), "application/json", 400,
     "the image file is empty"),
    ("a text file", records(image(b"particle sizes\n41.2\n", name="notes.txt")), "application/json", 400,
     "notes.txt): not a TIFF or PNG image"),
    ("truncated TIFF", records(image(tiff()[:200], name="cut.tif")), "application/json", 400,
     "cut.tif): cannot read this TIFF"),
    ("TIFF of NaN", records(image(tiff(nan=True), name="nan.tif")), "application/json", 400,
     "nan.tif): the image holds NaN or infinite values"),
    ("too many pixels", records(image(png(4200, 4200), name="huge.png")), "application/json", 400,
     "4200 x 4200 px (17.6 Mpx), more than the 16.8 Mpx"),
    ("too many images", records(*[image()] * 33), "application/json", 400, "send at most 32 per request"),
    ("unknown field", records(image(pixel_size=7.3)), "application/json", 400, "unknown field(s) ['pixel_size']"),
    ("name not a string", records(image(name=5)), "application/json", 400, '"name" is a number'),
    ("pixel size text", records(image(pixel_size_nm="7nm")), "application/json", 400, '"pixel_size_nm" is a string'),
    ("pixel size negative", records(image(pixel_size_nm=-7.3)), "application/json", 400,
     "pixel_size_nm = -7.3 is not a pixel size"),
    ("pixel size zero", records(image(pixel_size_nm=0)), "application/json", 400, "is not a pixel size"),
    ("pixel size true", records(image(pixel_size_nm=True)), "application/json", 400,
     '"pixel_size_nm" is true/false'),
    ("databar row fraction", records(image(databar_row=10.5)), "application/json", 400,
     "databar_row = 10.5 is not a whole number"),
    ("databar row beyond the image", records(image(databar_row=5000)), "application/json", 400,
     "data-bar row 5000 is not a row of this image"),
    ("unknown parameter", records(image(), params={"return_image": False}), "application/json", 400,
     "unknown parameter(s) ['return_image']"),
    ("return_images not a bool", records(image(), params={"return_images": "no"}), "application/json", 400,
     "return_images = 'no'; give true or false"),
    ("params not an object", records(image(), params=[1]), "application/json", 400, '"params" must be an object'),
    ("text/plain body", b"hello", "text/plain", 415, "Content-Type: application/json"),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("bad-inputs") / "model")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    srv = Served(model, tmp_path_factory.mktemp("bad-inputs-server") / "server.log", "--max-concurrent", "4")
    try:
        yield srv.wait()
    finally:
        srv.stop()


def assert_clean(raw: bytes, request: bytes) -> dict:
    """The error answer is nanoseg's: {"error_code", "message"}, one line, no trace, not the request."""
    answer = json.loads(raw)
    assert set(answer) == {"error_code", "message"}, answer
    message = answer["message"]
    assert "\n" not in message and len(message) <= 400, message
    for trace in ("Traceback", 'File "', "stack_trace", "Failed to predict data", "site-packages"):
        assert trace not in raw.decode(errors="replace"), raw[:500]
    if len(request) > 200:
        assert GOOD[:200] not in raw.decode(errors="replace")  # the request is not echoed
    return answer


@pytest.mark.parametrize("body, content_type, status, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(server, body, content_type, status, message):
    got, _, raw = post_raw(server.url, body, content_type)
    answer = assert_clean(raw, body)
    assert got == status, answer
    assert message in answer["message"], answer


def test_good_request_after_the_bad_ones(server):
    status, _, raw = post_raw(server.url, records(image(name="fine.png"), params={"return_images": False}))
    assert status == 200, raw[:500]
    assert json.loads(raw)["predictions"][0]["name"] == "fine.png"
    assert server.alive("/ping") and server.alive("/health")


def test_server_fault_is_a_500_without_a_trace(model, tmp_path):
    """A model that fails inside (a broken post-processing setting): 500 with an error id, the traceback only in
    the server's log, and the server still up."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    meta = json.loads((broken / "nanoseg.json").read_text())
    meta["postprocess"] = {**meta["postprocess"], "opening_radius": "one"}
    (broken / "nanoseg.json").write_text(json.dumps(meta))
    srv = Served(broken, tmp_path / "server.log", "--max-concurrent", "1")
    try:
        srv.wait()
        body = records(image(name="fine.png"))
        status, _, raw = post_raw(srv.url, body)
        answer = assert_clean(raw, body)
        assert status == 500 and answer["error_code"] == "INTERNAL_ERROR", answer
        error_id = answer["message"].split("internal error ", 1)[1].split(" ", 1)[0]
        assert len(error_id) == 12 and srv.alive("/ping")
    finally:
        srv.stop()
    log = (tmp_path / "server.log").read_text()
    assert f"internal error {error_id}" in log and "Traceback" in log
