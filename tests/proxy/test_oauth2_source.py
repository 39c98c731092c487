"""The proxy's OAuth 2.0 token source against a real authorization server (oidc-provider):
one fetch for a burst of requests, refresh before expiry, rotated refresh tokens kept, the
held token used while the endpoint is down and refused once it has expired, and errors
that name no secret. The source's clock is the test's, so expiry is a step, not a wait;
the server's own checks run on real time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from oauth_server import AuthorizationServer, authorization_server

from bureau.proxy.oauth2 import Grant, TokenSource, TokenUnavailable

CLIENT_ID = "bureau-proxy"
CLIENT_SECRET = "canary-oauth-client-secret-7a21"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[AuthorizationServer]:
    with authorization_server(CLIENT_ID, CLIENT_SECRET, token_ttl=600, scopes=("read",)) as s:
        yield s


def _grant(server: AuthorizationServer, **overrides: object) -> Grant:
    values: dict[str, object] = {
        "token_url": server.token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET.encode(),
        "scopes": ("read",),
    }
    return Grant(**(values | overrides))  # type: ignore[arg-type]


async def _token(source: TokenSource) -> bytes:
    waiting = source.ready()
    if waiting is not None:
        await waiting
    token = source.token()
    assert token is not None
    return token


@pytest.mark.asyncio
async def test_a_burst_shares_one_fetch_and_the_token_is_kept(server: AuthorizationServer) -> None:
    before = server.control("stats")["token_requests"]
    clock = Clock()
    source = TokenSource(_grant(server), clock=clock)
    tokens = await asyncio.gather(*(_token(source) for _ in range(50)))
    assert len(set(tokens)) == 1
    assert server.control("stats")["token_requests"] == before + 1
    clock.now += 300  # well inside the 600 s lifetime
    assert source.ready() is None
    assert source.token() == tokens[0]
    assert server.control("stats")["token_requests"] == before + 1


@pytest.mark.asyncio
async def test_refreshed_shortly_before_expiry_in_the_background(
    server: AuthorizationServer,
) -> None:
    clock = Clock()
    source = TokenSource(_grant(server), clock=clock)
    first = await _token(source)
    clock.now += 600 - 20  # inside the last 30 s: refresh, but use the held one meanwhile
    assert source.ready() is None
    assert source.token() == first
    refreshing = source.refreshing
    assert refreshing is not None
    assert source.ready() is None
    assert source.refreshing is refreshing  # the refresh under way is not started twice
    await refreshing
    assert source.token() not in (None, first)


@pytest.mark.asyncio
async def test_rotated_refresh_tokens_are_kept(server: AuthorizationServer) -> None:
    clock = Clock()
    # A fresh refresh token for this test: rotation spends the one each grant uses.
    source = TokenSource(_grant(server, refresh_token=server.refresh_token.encode()), clock=clock)
    first = await _token(source)
    for _ in range(3):
        clock.now += 601  # expired: every request waits for the next refresh
        assert await _token(source) != first
    # Each refresh used the token the previous one returned: the server spends a refresh
    # token on use, so a source that kept the first would have failed on the second.


@pytest.mark.asyncio
async def test_the_endpoint_down_keeps_the_held_token_until_it_expires(
    server: AuthorizationServer,
) -> None:
    clock = Clock()
    source = TokenSource(_grant(server), clock=clock)
    held = await _token(source)
    server.control("down")
    try:
        clock.now += 590  # refresh due, endpoint down: the held token still serves
        assert source.ready() is None
        assert source.token() == held
        refreshing = source.refreshing
        assert refreshing is not None
        with pytest.raises(TokenUnavailable):
            await refreshing
        assert "503" in source.failure
        asked = server.control("stats")["token_requests"]
        clock.now += 0.5  # inside the 1 s backoff: the held token, and the endpoint left alone
        assert source.ready() is None
        assert source.refreshing is None  # no fetch started
        assert source.token() == held
        clock.now += 10  # expired, backoff over: asked again, and refused with the reason
        waiting = source.ready()
        assert waiting is not None
        with pytest.raises(TokenUnavailable, match="503"):
            await waiting
        assert source.token() is None
        assert server.control("stats")["token_requests"] == asked + 1
        server.control("up")
        clock.now += 1.5  # inside the doubled (2 s) backoff: refused, and no fetch started
        failed = source.ready()
        assert failed is not None
        assert source.refreshing is None
        with pytest.raises(TokenUnavailable):
            await failed
        assert server.control("stats")["token_requests"] == asked + 1
        clock.now += 1  # past it: a request fetches again
        assert await _token(source) != held
    finally:
        server.control("up")


@pytest.mark.asyncio
async def test_errors_name_the_cause_and_no_secret(server: AuthorizationServer) -> None:
    wrong = TokenSource(_grant(server, client_secret=b"not-the-secret"))
    waiting = wrong.ready()
    assert waiting is not None
    with pytest.raises(TokenUnavailable) as refused:
        await waiting
    assert str(refused.value) == "the token endpoint answered 401 (invalid_client)"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nowhere = TokenSource(_grant(server, token_url=f"http://127.0.0.1:{port}/token"))
    waiting = nowhere.ready()
    assert waiting is not None
    with pytest.raises(TokenUnavailable, match="unreachable"):
        await waiting
    for text in (repr(wrong), repr(_grant(server)), str(refused.value)):
        assert CLIENT_SECRET not in text
        assert "not-the-secret" not in text


@pytest.mark.asyncio
async def test_a_rejected_token_is_dropped_and_a_new_one_fetched(
    server: AuthorizationServer,
) -> None:
    source = TokenSource(_grant(server, client_auth="basic"))
    first = await _token(source)
    source.rejected(b"some-other-token")  # not ours: kept
    assert source.token() == first
    source.rejected(first)
    assert source.token() is None
    assert await _token(source) != first


@pytest.mark.asyncio
async def test_client_secret_post() -> None:
    with authorization_server(CLIENT_ID, CLIENT_SECRET, client_auth="post") as server:
        source = TokenSource(_grant(server, client_auth="post", scopes=()))
        assert await _token(source)
        wrong = TokenSource(_grant(server, client_auth="post", client_secret=b"wrong"))
        waiting = wrong.ready()
        assert waiting is not None
        with pytest.raises(TokenUnavailable, match="401"):
            await waiting
