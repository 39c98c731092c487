"""bureau-proxy's HTTP/1.1 handling on the wire, byte for byte, against the real echo
upstream: pipelining, body framing both ways, HEAD, 100-continue, and the requests it
must refuse (malformed, smuggling-shaped, CONNECT, oversized, absolute URIs)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import echo_received, echo_upstream, proxy, stars
from raw_http import Conn

TOKEN = "canary-protocol-5d1e"


@pytest.fixture(scope="module")
def proxy_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    sock = tmp_path_factory.mktemp("proto") / "s"
    with echo_upstream() as upstream:
        payload = {
            "principal": "@t/fleet/prod/agent/proto:bureau.local",
            "services": {
                "api": {
                    "upstream_url": upstream,
                    "auth_scheme": "Bearer",
                    "inject_headers": {"Authorization": "TOKEN"},
                }
            },
            "credentials": {"TOKEN": TOKEN},
            "expires_at": None,
        }
        with proxy(payload, sock):
            yield sock


def _credential_reached_the_upstream(seen: dict[str, Any], request_id: str) -> None:
    """The token reached the upstream (its record); its echo showed the workload `*`s."""
    received = echo_received(request_id)
    assert received is not None
    assert received["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert seen["headers"]["authorization"] == f"Bearer {stars(TOKEN)}"


@pytest.fixture
def conn(proxy_socket: Path) -> Iterator[Conn]:
    c = Conn(proxy_socket)
    yield c
    c.close()


def test_pipelined_requests_are_answered_in_order(conn: Conn) -> None:
    conn.send(
        b"GET /http/api/first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /http/api/second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /http/api/third HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    paths = [conn.read().json()["path"] for _ in range(3)]
    assert paths == ["/first", "/second", "/third"]


def test_chunked_request_body_reaches_the_upstream_whole(conn: Conn) -> None:
    body = b"a" * 3000 + b"b" * 5
    chunks = b"bb8\r\n" + body[:3000] + b"\r\n5\r\n" + body[3000:] + b"\r\n0\r\n\r\n"
    conn.send(
        b"POST /http/api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"X-Request-Id: chunked-body\r\n\r\n" + chunks
    )
    seen = conn.read().json()
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    _credential_reached_the_upstream(seen, "chunked-body")


def test_request_trailers_are_dropped(conn: Conn) -> None:
    """The body ends with a bare last chunk upstream: trailers are not forwarded (the echo
    upstream would take one for the end of the body, and the next request would break)."""
    conn.send(
        b"POST /http/api/trailed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"X-Request-Id: trailed\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: one\r\nAuthorization: Bearer forged\r\n\r\n"
        b"GET /http/api/next HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    seen = conn.read().json()
    assert (seen["path"], seen["body_length"]) == ("/trailed", 5)
    assert "x-trailer" not in seen["headers"]
    _credential_reached_the_upstream(seen, "trailed")
    assert conn.read().json()["path"] == "/next"


def test_upstream_framing_is_redone_by_the_proxy(conn: Conn, proxy_socket: Path) -> None:
    conn.send(b"GET /http/api/chunked HTTP/1.1\r\nHost: x\r\n\r\n")
    chunked = conn.read()
    assert chunked.body == b"one two three"
    assert chunked.headers["transfer-encoding"] == "chunked"
    # A body that the upstream ends by closing reaches an HTTP/1.1 client chunked, and the
    # client's connection stays open for the next request.
    conn.send(b"GET /http/api/eof HTTP/1.1\r\nHost: x\r\n\r\n")
    until_close = conn.read()
    assert (until_close.status, until_close.body) == (200, b"until the end")
    assert until_close.headers["transfer-encoding"] == "chunked"
    assert "connection" not in until_close.headers
    conn.send(b"GET /http/api/after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.read().json()["path"] == "/after"
    # An HTTP/1.0 client gets the same body ended by the close.
    old = Conn(proxy_socket)
    old.send(b"GET /http/api/eof HTTP/1.0\r\n\r\n")
    answer = old.read()
    assert answer.body == b"until the end"
    assert answer.headers["connection"] == "close"
    old.close()


def test_head_has_no_body_and_the_connection_goes_on(conn: Conn) -> None:
    conn.send(b"HEAD /http/api/big HTTP/1.1\r\nHost: x\r\n\r\n")
    head = conn.read(head_only=True)
    assert head.status == 200
    assert head.headers["content-length"] == "65536"
    conn.send(b"GET /http/api/next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.read().json()["path"] == "/next"


def test_expect_continue_is_relayed(conn: Conn) -> None:
    conn.send(
        b"POST /http/api/up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert conn.read().status == 100
    conn.send(b"data")
    final = conn.read()
    assert (final.status, final.json()["body_length"]) == (200, 4)


CHUNKED_POST = b"POST /http/api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
        (b"GET /http/api/x HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"POST /http/api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (b"GET /http/api/x HTTP/1.1\r\nX-A : b\r\n\r\n", 400, "malformed HTTP request"),
        (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not supported"),
        (
            b"GET /http/api/x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            501,
            "not supported",
        ),
        (b"GET /http/api/x HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, "too large"),
        # Bad body framing: a 400 in place of the answer, whatever reached the upstream.
        (CHUNKED_POST.replace(b"chunked", b"xchunked") + b"0\r\n\r\n", 400, "malformed"),
        (CHUNKED_POST + b"fffffffffffffffffff\r\n", 400, "malformed HTTP request"),
        (CHUNKED_POST + b"0x5\r\nhello\r\n0\r\n\r\n", 400, "malformed HTTP request"),
        (CHUNKED_POST + b"5\nhello\r\n0\r\n\r\n", 400, "malformed HTTP request"),
        (CHUNKED_POST + b"5\r\nhello\r\n5;x\nworld\r\n0\r\n\r\n", 400, "malformed"),
        # A coding the proxy would drop in re-framing the body.
        (CHUNKED_POST.replace(b"chunked", b"gzip, chunked") + b"0\r\n\r\n", 501, "chunked"),
    ],
)
def test_refused_requests_get_one_answer_and_a_close(
    conn: Conn, request_bytes: bytes, status: int, error: str
) -> None:
    conn.send(request_bytes)
    answer = conn.read()
    assert answer.status == status
    assert error in answer.json()["error"]
    assert answer.headers["connection"] == "close"
    assert conn.closed()


def test_trace_is_refused_before_anything_is_injected(conn: Conn) -> None:
    """An upstream echoes a TRACE back, credentials included: it never gets one."""
    conn.send(b"TRACE /http/api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = conn.read()
    assert (answer.status, answer.json()) == (405, {"error": "TRACE is not supported"})
    conn.send(b"GET /http/api/next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.read().json()["path"] == "/next"


@pytest.mark.parametrize(
    "target",
    [
        b"http://evil.example/http/api/x",
        b"http://user:pw@evil.example/",
        b"//evil.example/http/api/x",
        b"/other/api/x",
        b"*",
    ],
)
def test_a_client_never_picks_the_host(conn: Conn, target: bytes) -> None:
    conn.send(b"GET " + target + b" HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    answer = conn.read()
    assert answer.status in (400, 404), answer.status
    assert TOKEN not in answer.body.decode()


def test_host_header_is_the_upstreams(conn: Conn) -> None:
    conn.send(
        b"GET /http/api/x HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: e\r\n"
        b"X-Request-Id: host\r\n\r\n"
    )
    seen = conn.read().json()
    assert seen["headers"]["host"].startswith("127.0.0.1:")
    _credential_reached_the_upstream(seen, "host")
