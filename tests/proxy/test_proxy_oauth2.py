"""The oauth2 kind through a real bureau-proxy against a real authorization server
(oidc-provider, tests/support/oauth_server.py) and its resource, which accepts only the
tokens it issued and echoes the Authorization header it got: the proxy mints the token
(client credentials or refresh token), shares one fetch among concurrent requests, keeps
it, refreshes it across its expiry under load, serves the old one while the endpoint is
down and answers 503 once it is gone, and resends a request once when the resource refuses
its token. The workload never sees a token: the echo comes back as stars."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_proxy import live_proxy, run
from oauth_server import AuthorizationServer, authorization_server
from processes import Reply, RunningProxy, proxy, unix_request

from bureau.proxy.exchange import RETRY_BODY_LIMIT

CLIENT_ID = "proxy-client"
CLIENT_SECRET = "oauth-client-secret-canary-2b8d"


def _payload(server: AuthorizationServer, **grant: Any) -> dict[str, Any]:
    def route(**fields: Any) -> dict[str, Any]:
        oauth = {
            "grant": "client_credentials",
            "token_url": server.token_url,
            "client_id": "CID",
            "client_secret": "CSECRET",
            **fields,
        }
        return {"upstream_url": server.resource_url, "oauth2": oauth}

    return {
        "principal": "@t/fleet/prod/agent/alpha:bureau.local",
        "services": {
            "cc": route(**grant),
            "refresh": route(grant="refresh_token", refresh_token="RTOKEN"),
            "wrong": route(client_secret="WRONG"),
        },
        "credentials": {
            "CID": CLIENT_ID,
            "CSECRET": CLIENT_SECRET,
            "RTOKEN": server.refresh_token,
            "WRONG": "wrong-client-secret-canary",
        },
    }


@pytest.fixture(scope="module")
def server() -> Iterator[AuthorizationServer]:
    with authorization_server(CLIENT_ID, CLIENT_SECRET, token_ttl=600) as started:
        yield started


@pytest.fixture(scope="module")
def running(
    server: AuthorizationServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    sock = tmp_path_factory.mktemp("oauth2") / "p.sock"
    with proxy(_payload(server), sock) as started:
        yield started


def _call(sock: Path, service: str, method: str = "GET", body: bytes | None = None) -> Reply:
    return unix_request(sock, method, f"/http/{service}/items", body=body)


def _token_requests(server: AuthorizationServer) -> int:
    return server.control("stats")["token_requests"]


def _served(reply: Reply, body_bytes: int = 0) -> None:
    """Served by the resource with a token the proxy minted, echoed back as stars."""
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["client_id"] == CLIENT_ID
    assert answer["body_bytes"] == body_bytes
    scheme, _, token = answer["echo"].partition(" ")
    assert scheme == "Bearer"
    assert len(token) >= 16
    assert set(token) == {"*"}


@pytest.mark.parametrize("client_auth", ["basic", "post"])
def test_client_credentials_one_fetch_for_a_burst_then_kept(
    tmp_path: Path, client_auth: str
) -> None:
    with authorization_server(CLIENT_ID, CLIENT_SECRET, client_auth=client_auth) as server:
        sock = tmp_path / "p.sock"
        with proxy(_payload(server, client_auth=client_auth), sock):
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda _: _call(sock, "cc"), range(32)))
            for reply in replies:
                _served(reply)
            _served(_call(sock, "cc", "POST", b"x" * 100), body_bytes=100)
            assert _token_requests(server) == 1


def test_refresh_token_grant(running: RunningProxy, server: AuthorizationServer) -> None:
    _served(_call(running.socket, "refresh"))
    _served(_call(running.socket, "refresh"))


def test_a_refused_client_is_a_503_naming_the_oauth_error(running: RunningProxy) -> None:
    reply = _call(running.socket, "wrong")
    assert reply.status == 503
    assert reply.json() == {"error": "'wrong': the token endpoint answered 401 (invalid_client)"}


def test_a_refused_token_is_replaced_and_the_request_sent_again(
    running: RunningProxy, server: AuthorizationServer
) -> None:
    """The resource refuses every token issued so far: each request below gets a 401,
    which the workload never sees; it is sent once more with a freshly fetched token."""
    _served(_call(running.socket, "cc"))
    cases: list[tuple[str, bytes | None, int]] = [
        ("GET", None, 0),
        ("POST", b"y" * 1000, 1000),
        ("PUT", b"z" * RETRY_BODY_LIMIT, RETRY_BODY_LIMIT),  # at the bound: kept
    ]
    for method, body, length in cases:
        before = server.control("stats")
        server.control("revoke")
        _served(_call(running.socket, "cc", method, body), body_bytes=length)
        after = server.control("stats")
        assert after["token_requests"] == before["token_requests"] + 1
        assert after["resource_requests"] == before["resource_requests"] + 2


def test_a_chunked_body_is_sent_again_whole(
    running: RunningProxy, server: AuthorizationServer
) -> None:
    _served(_call(running.socket, "cc"))
    server.control("revoke")
    reply = unix_request(
        running.socket,
        "POST",
        "/http/cc/items",
        headers={"Transfer-Encoding": "chunked"},
        body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    _served(reply, body_bytes=11)


def test_a_401_to_a_body_too_large_to_keep_goes_to_the_workload(
    running: RunningProxy, server: AuthorizationServer
) -> None:
    """Past RETRY_BODY_LIMIT the body streams without a copy: the 401 is the workload's,
    its token still hidden, and the next request goes with a fresh token."""
    _served(_call(running.socket, "cc"))
    server.control("revoke")
    before = _token_requests(server)
    refused = _call(running.socket, "cc", "POST", b"w" * (RETRY_BODY_LIMIT + 1))
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    echoed = refused.json()["echo"]
    assert echoed.startswith("Bearer ***")
    assert set(echoed.removeprefix("Bearer ")) == {"*"}
    _served(_call(running.socket, "cc"))
    assert _token_requests(server) == before + 1


@pytest.mark.slow
@pytest.mark.parametrize("service", ["cc", "refresh"])
def test_a_token_expiring_during_a_burst(tmp_path: Path, service: str) -> None:
    """Tokens live 2 s on the server's clock; 8 workers keep requesting until the proxy
    has fetched a third token (refreshed twice, a rotated refresh token used the second
    time): not one request fails, and each refresh was one fetch for all of them."""
    with authorization_server(CLIENT_ID, CLIENT_SECRET, token_ttl=2) as server:
        sock = tmp_path / "p.sock"
        with proxy(_payload(server), sock):
            _served(_call(sock, service))
            failures: list[str] = []
            served = 0
            done = threading.Event()
            lock = threading.Lock()

            def worker() -> None:
                nonlocal served
                while not done.is_set():
                    reply = _call(sock, service)
                    with lock:
                        if reply.status == 200:
                            served += 1
                        else:
                            failures.append(f"{reply.status} {reply.body!r}")

            threads = [threading.Thread(target=worker) for _ in range(8)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            try:
                while _token_requests(server) < 3:
                    assert time.monotonic() < deadline, "no second refresh within 30 s"
                    assert not failures, failures
                    done.wait(0.05)  # polling the server's count, not a guess at timing
            finally:
                done.set()
                for thread in threads:
                    thread.join()
            assert failures == []
            assert served > 100
            assert _token_requests(server) <= 4  # one fetch per refresh, not one per request


@pytest.mark.slow
def test_the_token_endpoint_down(tmp_path: Path) -> None:
    """Down once the first token is held: the proxy keeps using it while it is valid
    (its refresh fails meanwhile), then answers 503 with the endpoint's short error, and
    serves again once the endpoint is back."""
    # The server counts expiry from the whole second it issued in: a token may die up to
    # 1 s early by the proxy's clock. At 6 s, the proxy tries to refresh 1.5 s before its
    # end, so there is a time the refresh has failed and the token still works.
    with authorization_server(CLIENT_ID, CLIENT_SECRET, token_ttl=6) as server:
        sock = tmp_path / "p.sock"
        with proxy(_payload(server), sock):
            _served(_call(sock, "cc"))
            assert _token_requests(server) == 1
            server.control("down")
            served_after_failed_refresh = 0
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, "still served 30 s after a 6 s token"
                refresh_failed = _token_requests(server) > 1
                reply = _call(sock, "cc")
                if reply.status != 200:
                    break
                _served(reply)
                served_after_failed_refresh += refresh_failed
            assert served_after_failed_refresh > 0
            assert reply.status == 503
            assert reply.json() == {
                "error": "'cc': the token endpoint answered 503 (temporarily_unavailable)"
            }
            server.control("up")
            while (reply := _call(sock, "cc")).status != 200:
                assert time.monotonic() < deadline + 30, "not served again after the outage"
                assert reply.status == 503
                time.sleep(0.2)  # the proxy's backoff decides when it asks again
            _served(reply)


def test_stopping_the_proxy_ends_a_fetch_under_way(tmp_path: Path) -> None:
    """The proxy's lifecycle owns the token fetch: a token endpoint that never answers
    does not keep a stopped proxy's task alive."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        payload = {
            "principal": "@t/fleet/prod/agent/alpha:bureau.local",
            "services": {
                "cc": {
                    "upstream_url": url,
                    "oauth2": {
                        "grant": "client_credentials",
                        "token_url": url + "/token",
                        "client_id": "CID",
                        "client_secret": "CSECRET",
                    },
                }
            },
            "credentials": {"CID": CLIENT_ID, "CSECRET": CLIENT_SECRET},
        }

        async def test() -> None:
            sock = tmp_path / "p.sock"
            async with live_proxy(payload, sock) as running_proxy:
                minter = running_proxy.routes[b"cc"].minter
                assert minter is not None
                request = asyncio.ensure_future(asyncio.to_thread(_call, sock, "cc"))
                # The fetch has connected to the endpoint, which will never answer.
                accepted, _ = await asyncio.to_thread(silent.accept)
                fetch = minter.source.refreshing
                assert fetch is not None
                assert not fetch.done()
            assert fetch.cancelled()
            accepted.close()
            # The workload's connection was cut as the proxy stopped.
            assert isinstance((await asyncio.gather(request, return_exceptions=True))[0], OSError)

        run(test)
