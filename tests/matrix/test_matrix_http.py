"""The stdlib Matrix client's retry behaviour, against a real socket that answers 429 the
way Synapse does (the Synapse fixture's raised rate limits never produce one)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bureau.errors import MatrixError, MatrixUnreachable
from bureau.matrix.client import MatrixHTTP
from bureau.secret import Secret


class _Limited(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict[str, str], dict[str, object]]] = []
    seen_auth: list[str] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        status, headers, body = self.answers.pop(0)
        raw = json.dumps(body).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Limited)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_429_waits_as_told_then_succeeds(server: str) -> None:
    limited = {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2500}
    _Limited.answers = [
        (429, {"Retry-After": "3"}, limited),
        (429, {}, limited),
        (200, {}, {"user_id": "@a:b", "device_id": "D"}),
    ]
    _Limited.seen_auth = []
    waits: list[float] = []
    client = MatrixHTTP(server, Secret("tok"), sleep=waits.append)
    assert client.whoami() == ("@a:b", "D")
    assert waits == [3.0, 2.5]
    assert _Limited.seen_auth == ["Bearer tok"] * 3


def test_gives_up_after_max_attempts_with_the_servers_error(server: str) -> None:
    _Limited.answers = [(503, {}, {"errcode": "M_UNKNOWN", "error": "busy"})] * 3
    client = MatrixHTTP(server, Secret("tok"), max_attempts=3, sleep=lambda s: None)
    with pytest.raises(MatrixError, match="check the access token: 503 M_UNKNOWN busy"):
        client.whoami()


def test_unreachable_names_the_homeserver() -> None:
    client = MatrixHTTP("http://127.0.0.1:1", Secret("tok-canary"))
    with pytest.raises(MatrixUnreachable) as info:
        client.whoami()
    assert "cannot reach homeserver http://127.0.0.1:1" in str(info.value)
    assert "tok-canary" not in str(info.value)


def test_the_final_error_carries_the_servers_hint(server: str) -> None:
    """For an outer loop (first boot's until_done) to wait as the server asked."""
    limited = {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2500}
    _Limited.answers = [(429, {"Retry-After": "4"}, limited), (429, {}, limited)]
    waits: list[float] = []
    client = MatrixHTTP(server, Secret("tok"), max_attempts=2, sleep=waits.append)
    with pytest.raises(MatrixError) as info:
        client.whoami()
    assert waits == [4.0]
    assert info.value.status == 429
    assert info.value.retry_after == 2.5
