"""Load test: concurrent real HTTP requests to a real `nanoseg serve` with a tiny model. Under the limit all
succeed with identical answers (one shared model, thread-safe); over it the excess get 503 at once; the
server answers /ping, /health and a normal request afterwards."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from tests.served import Served, post_raw
from tests.tiny_model import save_tiny_model

pytestmark = pytest.mark.slow

LIMIT = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    srv = Served(save_tiny_model(root / "model"), root / "server.log", "--max-concurrent", str(LIMIT),
                 "--timeout", "240")
    try:
        yield srv.wait()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def body():
    from nanoseg.serving.payload import example_image

    record = {"image": base64.b64encode(example_image(384)).decode(), "name": "load.png", "pixel_size_nm": 7.34375}
    return json.dumps({"dataframe_records": [record], "params": {"return_images": True}}).encode()


def burst(url: str, body: bytes, n: int) -> list[tuple[int, dict, bytes]]:
    """``n`` requests sent at the same moment from ``n`` threads; their (status, headers, body) in order."""
    start, results = threading.Barrier(n), [None] * n

    def one(i):
        start.wait(30)
        results[i] = post_raw(url, body, timeout=600)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    return results


def test_concurrent_requests_under_the_limit_all_succeed_identically(server, body):
    reference = post_raw(server.url, body)
    assert reference[0] == 200, reference[2][:500]
    results = burst(server.url, body, LIMIT)
    assert [status for status, _, _ in results] == [200] * LIMIT, [r[2][:300] for r in results]
    answers = [json.loads(raw) for _, _, raw in results]
    assert all(a == json.loads(reference[2]) for a in answers)  # masks, labels, tables byte for byte
    assert answers[0]["predictions"][0]["summary"]["n_particles"] > 0


def test_excess_requests_get_503_and_the_server_stays_up(server, body):
    n = 2 * LIMIT
    results = burst(server.url, body, n)
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503}, [r[2][:300] for r in results]
    assert 1 <= statuses.count(200) <= n and statuses.count(503) >= 1, statuses  # 8 at once, 4 slots
    ok = [json.loads(raw) for status, _, raw in results if status == 200]
    assert all(a == ok[0] for a in ok)
    for status, headers, raw in results:
        if status == 503:
            answer = json.loads(raw)
            assert answer["error_code"] == "TEMPORARILY_UNAVAILABLE" and "the server is busy" in answer["message"]
            assert {k.lower(): v for k, v in headers.items()}.get("retry-after") == "2"
    assert server.alive("/ping") and server.alive("/health")
    status, _, raw = post_raw(server.url, body)
    assert status == 200 and json.loads(raw) == ok[0]
    assert server.proc.poll() is None
