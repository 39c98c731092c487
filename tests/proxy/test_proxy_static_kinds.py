"""The static credential kinds (inject_query, basic_auth, path_prefix), alone and combined,
through a real bureau-proxy to an upstream that records what it receives and echoes it back
(in JSON, text, chunks three bytes long, a redirect and a cookie): the upstream gets the
credential, and the workload sees only ``*`` where it was echoed, with the framing intact.
What cleaning cannot see through (a compressed body, binary bodies) is shown as it is; a
header-only route is cleaned like the others."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
from processes import RunningProxy, proxy, unix_request
from raw_http import Conn
from recording_upstream import RecordingUpstream

# Each holds characters a query or a path must escape.
KEY = "query-canary/4f+e=a&b"
KEY_SENT = "query-canary%2F4f%2Be%3Da%26b"
USER = "user-canary-71"
PASSWORD = "basic-canary:9d?2"
BOT = "123456:path-canary-AbC/9"
HEADER = "header-canary-5e0c"
CANARIES = (KEY, USER, PASSWORD, BOT, HEADER)


def _payload(url: str) -> dict[str, Any]:
    return {
        "principal": "@t/fleet/prod/agent/alpha:bureau.local",
        "services": {
            "query": {"upstream_url": url + "/v2", "inject_query": {"api_key": "KEY"}},
            "basic": {
                "upstream_url": url,
                "basic_auth": {"username": "USER", "password": "PASSWORD"},
            },
            "path": {"upstream_url": url + "/api", "path_prefix": "/bot{BOT}"},
            "all": {
                "upstream_url": url,
                "inject_headers": {"X-Key": "HEADER"},
                "inject_query": {"key": "KEY"},
                "path_prefix": "/u/{USER}/t",
                "basic_auth": {"username": "USER", "password": "PASSWORD"},
            },
            "headers": {"upstream_url": url, "inject_headers": {"X-Key": "HEADER"}},
        },
        "credentials": {
            "KEY": KEY,
            "USER": USER,
            "PASSWORD": PASSWORD,
            "BOT": BOT,
            "HEADER": HEADER,
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as recording:
        yield recording


@pytest.fixture(scope="module")
def running(
    upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    sock = tmp_path_factory.mktemp("static") / "p.sock"
    with proxy(_payload(upstream.url), sock) as started:
        yield started


def _get(running: RunningProxy, target: str, **headers: str) -> Any:
    return unix_request(running.socket, "GET", target, headers=headers)


def _no_canary(data: bytes | str) -> None:
    text = data if isinstance(data, str) else data.decode("latin-1")
    for canary in CANARIES:
        for form in (canary, json.dumps(canary)[1:-1], base64.b64encode(canary.encode()).decode()):
            assert form not in text, canary


def test_inject_query_adds_the_escaped_parameter(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    reply = _get(running, "/http/query/items/7")
    assert reply.status == 200
    seen = upstream.last()
    assert seen.target == f"/v2/items/7?api_key={KEY_SENT}"
    _no_canary(reply.body)
    # Echoed back, the value is stars of the same length, escaped as it was sent.
    assert reply.json()["query"] == "api_key=" + "*" * len(KEY_SENT)


@pytest.mark.parametrize(
    "sent",
    ["api_key=mine", "API_KEY=mine", "api%5Fkey=mine", "api%5fkey", "Api_Key=a&api_key=b"],
)
def test_inject_query_replaces_the_parameter_the_workload_sent(
    running: RunningProxy, upstream: RecordingUpstream, sent: str
) -> None:
    """Whatever spelling of the parameter the workload sends is dropped: a server
    would read it as the same parameter, and might take the workload's over ours."""
    assert _get(running, f"/http/query/items?a=1&{sent}&b=%2F").status == 200
    assert upstream.last().query == f"a=1&b=%2F&api_key={KEY_SENT}"


def test_basic_auth_sends_one_basic_line(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    reply = _get(running, "/http/basic/me", Authorization="Basic d29ya2xvYWQ6b3du")
    assert reply.status == 200
    pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert upstream.last().headers["authorization"] == f"Basic {pair}"
    _no_canary(reply.body)
    assert reply.json()["headers"]["authorization"] == "Basic " + "*" * len(pair)


def test_path_prefix_puts_the_escaped_credential_before_the_path(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    reply = _get(running, "/http/path/sendMessage?chat=1")
    assert reply.status == 200
    # After the upstream URL's own path; the ":" a path may hold stays, the "/" is escaped.
    assert upstream.last().target == "/api/bot123456:path-canary-AbC%2F9/sendMessage?chat=1"
    _no_canary(reply.body)


def test_the_kinds_combine_on_one_route(running: RunningProxy, upstream: RecordingUpstream) -> None:
    reply = _get(running, "/http/all/x?q=1&key=mine", **{"X-Key": "mine"})
    assert reply.status == 200
    seen = upstream.last()
    assert seen.target == f"/u/{USER}/t/x?q=1&key={KEY_SENT}"
    assert seen.headers["x-key"] == HEADER
    assert seen.headers["authorization"].startswith("Basic ")
    _no_canary(reply.body)


@pytest.mark.parametrize("service", ["query", "basic", "path", "all"])
@pytest.mark.parametrize("shape", ["json", "text", "split"])
def test_an_echoed_credential_reaches_the_workload_as_stars_of_its_length(
    running: RunningProxy, upstream: RecordingUpstream, service: str, shape: str
) -> None:
    """In a JSON body, a text body and a chunked body sent three bytes a chunk (every
    secret split across chunks), the framing unchanged: the same length goes out."""
    target = f"/http/{service}/{shape}/x"
    reply = _get(running, target)
    assert reply.status == 200
    _no_canary(reply.body)
    assert b"*****" in reply.body
    seen = upstream.last()
    unclean = json.dumps(
        {
            "method": "GET",
            "path": seen.path,
            "query": seen.query,
            "headers": seen.headers,
            "body": "",
        }
    ).encode()
    if shape != "text":
        assert len(reply.body) == len(unclean)
        # Only the secrets changed: every other byte is the upstream's.
        differs = [i for i, (a, b) in enumerate(zip(reply.body, unclean, strict=True)) if a != b]
        assert all(reply.body[i : i + 1] == b"*" for i in differs)


def test_echoing_headers_are_cleaned_and_the_cookie_still_reaches_the_workload(
    running: RunningProxy,
) -> None:
    for service in ("query", "basic", "all"):
        reply = _get(running, f"/http/{service}/redirect/x?page=2")
        assert reply.status == 302  # never followed
        _no_canary(json.dumps(reply.headers))
        assert reply.headers["set-cookie"].startswith("seen=")
        if service != "basic":
            assert reply.headers["location"].startswith("http://elsewhere.invalid/next?page=2&")
            assert reply.headers["location"].endswith("*" * 8)


def test_an_interim_answer_is_cleaned_too(running: RunningProxy) -> None:
    conn = Conn(running.socket)
    try:
        conn.send(
            b"POST /http/basic/upload HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = conn.read()
        conn.send(b"hello")
        final = conn.read()
    finally:
        conn.close()
    assert interim.status == 100
    pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert interim.headers["x-seen"] == "Basic " + "*" * len(pair)
    assert final.status == 200
    assert final.json()["body"] == "hello"


def test_upstreams_are_asked_for_identity_and_a_compressed_body_passes_as_it_came(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    """Cleaning asks for what it can read; an upstream that compresses anyway is passed
    as it is (the README lists this limit): the bytes are intact, and the secret in them
    is not cleaned."""
    reply = _get(running, "/http/query/gzip/x", **{"Accept-Encoding": "gzip, br"})
    assert upstream.last().headers["accept-encoding"] == "identity"
    assert reply.headers["content-encoding"] == "gzip"
    assert KEY_SENT in gzip.decompress(reply.body).decode()


def test_a_binary_body_is_not_cleaned(running: RunningProxy) -> None:
    reply = _get(running, "/http/query/binary/x")
    assert reply.headers["content-type"] == "application/octet-stream"
    assert KEY_SENT.encode() in reply.body


def test_a_header_only_route_is_cleaned_too(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    """The header reaches the upstream, and its echo shows the workload `*`s of the same
    length; the upstream is asked for bodies it can be seen through (route_kinds.cleans)."""
    reply = _get(running, "/http/headers/x", **{"Accept-Encoding": "gzip"})
    assert upstream.last().headers["x-key"] == HEADER
    assert upstream.last().headers["accept-encoding"] == "identity"
    assert reply.json()["headers"]["x-key"] == "*" * len(HEADER)
    _no_canary(reply.body)


@pytest.mark.parametrize("chunked", [False, True])
def test_held_back_bytes_that_were_not_a_secret_are_sent_at_the_end(
    running: RunningProxy, chunked: bool
) -> None:
    """A body that ends in what could be the start of a secret: held while more may
    come, and sent unchanged when the body ends there (with a length, and chunked)."""
    start = BOT[:9]
    headers = {"X-Chunked": "1"} if chunked else {}
    reply = _get(running, f"/http/path/tail/x?v={start}", **headers)
    assert reply.status == 200
    assert reply.body == f"v={start}".encode()
    assert ("transfer-encoding" in reply.headers) == chunked
