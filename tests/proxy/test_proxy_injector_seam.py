"""The injector seam (bureau/proxy/injectors.py) through a live proxy and a real upstream,
with injectors of the test's own standing in for the kinds to come: one that waits on a
token being fetched (prepare, as OAuth2 will), and one that signs the body and rewrites the
target (body_limit, as SigV4 will). What the exchange does with each is what a new kind
relies on."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_proxy import live_proxy, put_injector, run
from processes import Reply, echo_upstream, unix_request
from raw_http import Conn

from bureau.proxy import server
from bureau.proxy.injectors import Unavailable

SECRET = "seam-canary-93d1"


class FetchedToken:
    """Hands every request one shared future until the test settles it, as a kind that
    fetches its token once for every request waiting (single flight) would."""

    sets = frozenset({b"authorization"})
    body_limit = 0

    def __init__(self, expect: int) -> None:
        self.future: asyncio.Future[None] | None = None
        self.futures_made = 0
        self.token: bytes | None = None
        self.asked = 0
        self.expect = expect
        self.all_asked = asyncio.Event()

    def prepare(self) -> asyncio.Future[None] | None:
        self.asked += 1
        if self.asked >= self.expect:
            self.all_asked.set()
        if self.token is not None:
            return None
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
            self.futures_made += 1
        return self.future

    def settle(self, token: bytes) -> None:
        assert self.future is not None
        self.token = token
        self.future.set_result(None)

    def inject(self, method: bytes, target: bytes, lines: list[bytes], body: bytes | None) -> bytes:
        del method, body
        assert self.token is not None, "inject before the token was there"
        lines.append(b"Authorization: Bearer " + self.token + b"\r\n")
        return target

    def close(self) -> None:
        return None


class SignsBody:
    """Needs the whole body for its header, and moves the target, as a signing kind."""

    sets = frozenset({b"x-body-sha256"})
    body_limit = 1024

    def prepare(self) -> None:
        return None

    def inject(self, method: bytes, target: bytes, lines: list[bytes], body: bytes | None) -> bytes:
        del method
        assert body is not None
        lines.append(b"X-Body-Sha256: " + hashlib.sha256(body).hexdigest().encode() + b"\r\n")
        return target + (b"&" if b"?" in target else b"?") + b"signed=1"

    def close(self) -> None:
        return None


def _payload(upstream: str) -> dict[str, Any]:
    route = {"upstream_url": upstream, "inject_headers": {"Authorization": "TOKEN"}}
    return {
        "principal": "@t/fleet/prod/agent/alpha:bureau.local",
        "services": {"api": route, "token": route, "signed": route},
        "credentials": {"TOKEN": SECRET},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with echo_upstream() as url:
        yield url


def _get(sock: Path, target: str, **headers: str) -> Reply:
    return unix_request(sock, "GET", target, headers=headers)


def test_requests_wait_for_one_shared_fetch_then_carry_its_token(
    upstream: str, tmp_path: Path
) -> None:
    async def test() -> None:
        sock = tmp_path / "p.sock"
        async with live_proxy(_payload(upstream), sock) as proxy:
            fetch = FetchedToken(expect=3)
            put_injector(proxy, "token", fetch)
            calls = [
                asyncio.ensure_future(
                    asyncio.to_thread(_get, sock, f"/http/token/n{i}", Authorization="mine")
                )
                for i in range(3)
            ]
            await asyncio.wait_for(fetch.all_asked.wait(), 30)
            assert fetch.futures_made == 1
            # Each waits with its head unbuilt: nothing of it has gone upstream.
            waiting = [c.queue[0] for c in proxy.clients if c.queue]
            assert len(waiting) == 3
            assert all(e.deferred is not None and e.upstream is None for e in waiting)
            assert not any(c.done() for c in calls)
            fetch.settle(b"minted-1")
            replies = await asyncio.gather(*calls)
            for i, reply in enumerate(replies):
                assert reply.status == 200
                echoed = reply.json()
                assert echoed["path"] == f"/n{i}"
                assert echoed["headers"]["authorization"] == "Bearer minted-1"
            # Once the token is held, the next request goes at once, not through a task.
            assert (await asyncio.to_thread(_get, sock, "/http/token/again")).status == 200

    run(test)


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        (Unavailable("token endpoint answered 503"), "token endpoint answered 503"),
        (RuntimeError(f"leaked {SECRET}"), "credential unavailable"),
    ],
)
def test_a_failed_fetch_is_a_503_that_names_no_secret(
    upstream: str, tmp_path: Path, failure: Exception, shown: str
) -> None:
    async def test() -> None:
        sock = tmp_path / "p.sock"
        async with live_proxy(_payload(upstream), sock) as proxy:
            fetch = FetchedToken(expect=2)
            put_injector(proxy, "token", fetch)
            calls = [asyncio.to_thread(_get, sock, f"/http/token/{i}") for i in range(2)]
            gathered = asyncio.gather(*calls)
            await asyncio.wait_for(fetch.all_asked.wait(), 30)
            assert fetch.future is not None
            fetch.future.set_exception(failure)
            for reply in await gathered:
                assert reply.status == 503
                assert reply.json() == {"error": f"'token': {shown}"}
                assert SECRET.encode() not in reply.body
            # The connection still serves: the next route's request goes through.
            assert (await asyncio.to_thread(_get, sock, "/http/api/x")).status == 200

    run(test)


def test_a_fetch_that_never_ends_is_a_503_and_stays_shared(
    upstream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "PREPARE_TIMEOUT", 0.2)

    async def test() -> None:
        sock = tmp_path / "p.sock"
        async with live_proxy(_payload(upstream), sock) as proxy:
            fetch = FetchedToken(expect=1)
            put_injector(proxy, "token", fetch)
            reply = await asyncio.to_thread(_get, sock, "/http/token/x")
            assert reply.status == 503
            assert reply.json() == {"error": "'token': credential not ready in time"}
            # One request giving up does not cancel the fetch the others share.
            assert fetch.future is not None
            assert not fetch.future.cancelled()
            fetch.settle(b"late")
            assert (await asyncio.to_thread(_get, sock, "/http/token/y")).status == 200

    run(test)


def _post_raw(sock: Path, data: bytes, reads: int = 1) -> list[Any]:
    conn = Conn(sock)
    try:
        conn.send(data)
        answers = [conn.read() for _ in range(reads)]
        return [*answers, conn.closed()]
    finally:
        conn.close()


def test_a_body_signing_injector_gets_the_whole_body_and_it_goes_with_its_length(
    upstream: str, tmp_path: Path
) -> None:
    async def test() -> None:
        sock = tmp_path / "p.sock"
        async with live_proxy(_payload(upstream), sock) as proxy:
            put_injector(proxy, "signed", SignsBody())
            body = b"x" * 1000
            reply = await asyncio.to_thread(
                unix_request, sock, "POST", "/http/signed/up?a=1", body=body
            )
            echoed = reply.json()
            assert echoed["query"] == "a=1&signed=1"
            assert echoed["body_length"] == 1000
            assert echoed["headers"]["content-length"] == "1000"
            assert echoed["headers"]["x-body-sha256"] == hashlib.sha256(body).hexdigest()
            # Chunked from the client, then a request for an ordinary route pipelined
            # behind it: the held body goes with its length, and both come back in order.
            chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            raw = (
                b"POST /http/signed/c HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunked
                + b"GET /http/api/after HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
            )
            first, second, _ = await asyncio.to_thread(_post_raw, sock, raw, 2)
            signed = first.json()
            assert signed["headers"]["content-length"] == "11"
            assert "transfer-encoding" not in signed["headers"]
            assert signed["headers"]["x-body-sha256"] == hashlib.sha256(b"hello world").hexdigest()
            assert second.json()["path"] == "/after"
            # No body: none is made up.
            plain = (await asyncio.to_thread(_get, sock, "/http/signed/get")).json()
            assert "content-length" not in plain["headers"]
            assert plain["headers"]["x-body-sha256"] == hashlib.sha256(b"").hexdigest()

    run(test)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /http/signed/big HTTP/1.1\r\nHost: p\r\nContent-Length: 1025\r\n\r\n" + b"y" * 1025,
        b"POST /http/signed/big HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"200\r\n"
        + b"y" * 512
        + b"\r\n"
        + b"201\r\n"
        + b"y" * 513
        + b"\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_past_the_signing_limit_is_a_413_and_the_connection_closes(
    upstream: str, tmp_path: Path, request_bytes: bytes
) -> None:
    async def test() -> None:
        sock = tmp_path / "p.sock"
        async with live_proxy(_payload(upstream), sock) as proxy:
            put_injector(proxy, "signed", SignsBody())
            answer, closed = await asyncio.to_thread(_post_raw, sock, request_bytes)
            assert answer.status == 413
            assert answer.json()["error"] == (
                "request body larger than 1024 bytes, the most 'signed' signs"
            )
            assert closed
            assert not any(proxy.idle.values())  # nothing went upstream

    run(test)
