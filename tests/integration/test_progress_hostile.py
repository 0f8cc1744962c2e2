"""The controller's /progress reader against a hostile trainer: a real HTTP server on 127.0.0.1.

The trainer image is the job author's, so node 0's port answers whatever its author wants. Each
case here is one trick, served over a real socket to the real reader
(:func:`controller.progress.read_progress`): a redirect to another address, a body trickled one
byte at a time, a body far over the size cap, non-finite and out-of-range numbers, oversized
strings and maps. None may be followed, pin the reader past its deadline, or reach
``status.progress`` (:func:`controller.status.progress_status` must never raise on what it gets);
a bad answer is logged once per job, not on every pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.progress import read_progress
from controller.status import progress_status
from kubeclip.api.progress import STRING_MAX

GOOD = {"phase": "training", "epoch": 1, "epochs": 2, "step": 5, "totalSteps": 10, "loss": 1.25, "updatedAt": 1.7e9}


class _Server:
    """A loopback HTTP server whose GET handler is ``answer(handler)``; counts the requests it got."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the reader hung up: as it should
                    answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/progress"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], _Server]]:
    servers: list[_Server] = []

    def start(answer: Callable[[BaseHTTPRequestHandler], None]) -> _Server:
        servers.append(_Server(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _json(body: bytes | str, status: int = 200, headers: dict[str, str] | None = None):
    raw = body.encode() if isinstance(body, str) else body

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    return answer


def test_a_well_formed_answer_is_read(serve):
    server = serve(_json(json.dumps(GOOD)))
    got = read_progress(server.url, 2.0, job="ns/good")
    assert got == GOOD
    assert progress_status(got)["summary"] == "epoch 1/2 step 5/10"


def test_a_redirect_is_not_followed(serve):
    # Stands in for a cloud metadata address: the controller must never fetch it for the trainer.
    target = serve(_json(json.dumps(GOOD)))
    hostile = serve(_json(b"", status=302, headers={"Location": target.url}))
    assert read_progress(hostile.url, 2.0, job="ns/redirect") is None
    assert hostile.hits == 1
    assert target.hits == 0, "the reader followed the redirect"


def test_a_body_trickled_byte_by_byte_is_cut_at_the_one_deadline(serve):
    body = json.dumps(GOOD).encode()

    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.flush()
        for i in range(len(body)):  # each byte well inside a per-read timeout, the whole far beyond
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()
            time.sleep(0.2)

    server = serve(trickle)
    t0 = time.monotonic()
    assert read_progress(server.url, 1.0, job="ns/trickle") is None
    assert time.monotonic() - t0 < 2.0, "the reader waited past its deadline"


def test_headers_trickled_byte_by_byte_are_cut_at_the_one_deadline(serve):
    def trickle(h: BaseHTTPRequestHandler) -> None:
        for b in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"a" * 200:
            h.wfile.write(bytes([b]))
            h.wfile.flush()
            time.sleep(0.2)

    server = serve(trickle)
    t0 = time.monotonic()
    assert read_progress(server.url, 1.0, job="ns/slow-headers") is None
    assert time.monotonic() - t0 < 2.0


def test_a_body_over_the_size_cap_is_refused(serve):
    # Valid JSON the old reader (1 MiB cap) accepted: a message field of 200 KiB.
    server = serve(_json(json.dumps({**GOOD, "message": "x" * (200 * 1024)})))
    assert read_progress(server.url, 2.0, job="ns/huge") is None


def test_an_endless_body_is_cut_at_the_size_cap(serve):
    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        chunk = b" " * 65536
        for _ in range(1024):  # 64 MiB, fast
            h.wfile.write(chunk)

    server = serve(endless)
    t0 = time.monotonic()
    assert read_progress(server.url, 5.0, job="ns/endless") is None
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize(
    "body",
    [
        '{"phase": "training", "etaSeconds": Infinity}',
        '{"phase": "training", "loss": NaN}',
        '{"phase": "training", "updatedAt": 1e20}',
        '{"phase": "training", "etaSeconds": 1e300}',
        '{"phase": "training", "step": 100000000000000000000000}',
        '{"phase": "training", "step": -1}',
        '{"phase": "training", "eval": {"image_to_text_R@1": 1e400}}',
        '{"phase": "training", "lastCheckpoint": {"path": "c", "step": 1, "time": 1e20}}',
        '{"phase": "hacked"}',
        "[1, 2, 3]",
        "not json",
    ],
)
def test_numbers_out_of_range_and_malformed_documents_are_ignored(serve, body):
    server = serve(_json(body))
    assert read_progress(server.url, 2.0, job="ns/numbers") is None


def test_oversized_strings_and_maps_are_bounded(serve):
    # Under the size cap, so only the model's bounds stand between these and status.progress.
    small = {**GOOD, "message": "m" * 40_000, "modelPath": "p" * 3000, "skippedCheckpoints": ["s" * 2000] * 10}
    server = serve(_json(json.dumps(small)))
    got = read_progress(server.url, 2.0, job="ns/strings")
    assert got is not None
    assert len(got["message"]) <= STRING_MAX
    assert len(got["modelPath"]) <= STRING_MAX
    assert all(len(s) <= STRING_MAX for s in got["skippedCheckpoints"])
    many_keys = serve(_json(json.dumps({**GOOD, "eval": {f"k{i}": 0.5 for i in range(1000)}})))
    assert read_progress(many_keys.url, 2.0, job="ns/keys") is None


def test_a_bad_answer_is_logged_once_per_job(serve, caplog):
    server = serve(_json('{"etaSeconds": Infinity}'))
    with caplog.at_level(logging.DEBUG, logger="controller.progress"):
        for _ in range(5):
            assert read_progress(server.url, 2.0, job="ns/once") is None
        assert read_progress(server.url, 2.0, job="ns/other") is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert "Infinity is not a number" in warnings[0].getMessage()


def test_a_closed_port_is_just_no_progress(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.DEBUG, logger="controller.progress"):
        assert read_progress(f"http://127.0.0.1:{port}/progress", 1.0, job="ns/closed") is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
