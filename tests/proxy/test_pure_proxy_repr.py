"""No object of the proxy's shows a secret in its repr or str: canaries in every credential
of a payload, and every object reachable from a proxy built on it printed, first as
compiled, then live, with a client and an upstream connection in the middle of a request
and once it is answered.

Plain data is not printed: the bytes and strings (and the lists and tuples of them) are
what goes upstream, the injected values among them. What must never show them is every
other object: ours, and whatever else ours hold (transports, parsers, tasks, loggers)."""

from __future__ import annotations

import asyncio
import collections
import gc
import json
from pathlib import Path
from typing import Any

from live_proxy import live_proxy, run
from oauth_server import authorization_server
from processes import GateUpstream, unix_request

from bureau import log
from bureau.proxy.server import Proxy
from bureau.wire.proxy_payload import ProxyPayload

CANARY = "repr-canary-5c1e"
PLAIN = (str, bytes, bytearray, memoryview, int, float, bool, type(None))
CONTAINERS = (dict, list, tuple, set, frozenset, collections.deque)
# Far more than a proxy with a few connections holds: a walk that gets here has left the
# proxy (into the loop, the interpreter) and would print the world.
MOST = 20_000


def _payload(upstream: str = "http://127.0.0.1:9/base") -> dict[str, Any]:
    route = {
        "upstream_url": upstream,
        "inject_headers": {"Authorization": "TOKEN", "X-Api-Key": "KEY"},
        "auth_scheme": "Bearer",
    }
    return {
        "principal": "@bureau/fleet/prod/agent/alpha:test",
        "services": {
            "api": route,
            "other": {**route, "inject_headers": {"X-Key": "KEY"}},
            "unprovisioned": {**route, "inject_headers": {"X-Key": "ABSENT"}},
        },
        "credentials": {"TOKEN": f"{CANARY}-token", "KEY": f"{CANARY}-key"},
    }


def _is_ours(obj: object) -> bool:
    return type(obj).__module__.startswith("bureau")


def reachable(*roots: object) -> tuple[list[object], list[bytes | str]]:
    """Every object reachable from ``roots`` through objects of ours and containers, with
    what the others refer to looked at but not walked further (a transport refers to the
    loop, and the loop to everything); and the plain data reached on the way."""
    found: list[object] = []
    data: list[bytes | str] = []
    seen: set[int] = set()
    queue: list[Any] = list(roots)
    while queue:
        obj = queue.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        assert len(seen) < MOST, "the walk left the proxy"
        if isinstance(obj, (bytes, bytearray, str)):
            data.append(bytes(obj) if isinstance(obj, bytearray) else obj)
            continue
        if isinstance(obj, (*PLAIN, type)):
            continue
        walk = _is_ours(obj) or isinstance(obj, CONTAINERS) or type(obj).__name__ == "mappingproxy"
        if not isinstance(obj, CONTAINERS):
            found.append(obj)
        if walk:
            queue.extend(gc.get_referents(obj))
    return found, data


def _assert_nothing_shows(objects: list[object]) -> None:
    for obj in objects:
        for shown in (repr(obj), str(obj)):
            assert CANARY not in shown, f"{type(obj).__name__}: {shown}"


def _kinds(objects: list[object]) -> set[str]:
    return {type(o).__name__ for o in objects}


def _holds_canary(data: list[bytes | str]) -> bool:
    return any(CANARY in d if isinstance(d, str) else CANARY.encode() in d for d in data)


def test_no_object_of_a_compiled_proxy_shows_a_secret() -> None:
    payload = ProxyPayload.from_bytes(json.dumps(_payload()).encode())
    proxy = Proxy(payload, log.get("test"))
    objects, data = reachable(proxy, payload)
    # The walk reaches what holds the revealed values, not only the wrappers.
    assert {"Proxy", "CompiledRoute", "HeaderInjector", "ProxyPayload", "Secret"} <= _kinds(objects)
    assert _holds_canary(data)
    _assert_nothing_shows(objects)


def test_no_object_of_a_proxy_mid_request_shows_a_secret(tmp_path: Path) -> None:
    async def test() -> None:
        with GateUpstream() as gate:
            sock = tmp_path / "p.sock"
            async with live_proxy(_payload(gate.url), sock) as proxy:
                request = asyncio.ensure_future(
                    asyncio.to_thread(unix_request, sock, "GET", "/http/api/held")
                )
                # The request is upstream and held there: both connections and the
                # exchange between them are alive, the head with the credential built.
                await asyncio.to_thread(gate.wait_arrived, 1)
                objects, data = reachable(proxy)
                kinds = _kinds(objects)
                assert {"ClientConnection", "Exchange", "UpstreamConnection"} <= kinds
                assert {"HttpRequestParser", "HttpResponseParser"} <= kinds
                assert any(isinstance(d, bytes) and b"Bearer " + CANARY.encode() in d for d in data)
                _assert_nothing_shows(objects)
                gate.open()
                assert (await request).status == 200
                # Answered: the upstream connection is back in its pool, the head gone.
                objects, _ = reachable(proxy)
                assert "UpstreamConnection" in _kinds(objects)
                _assert_nothing_shows(objects)

    run(test)


def _every_kind(upstream: str, token_url: str = "http://127.0.0.1:9/t") -> dict[str, Any]:  # noqa: S107
    sigv4 = {"access_key_id": "KEY", "secret_access_key": "TOKEN", "session_token": "KEY"}
    oauth = {
        "grant": "refresh_token",
        "token_url": token_url,
        "client_id": "KEY",
        "client_secret": "TOKEN",
        "refresh_token": "REFRESH",
    }
    payload = _payload(upstream)
    payload["services"] = {
        "static": {
            "upstream_url": upstream,
            "inject_headers": {"X-Key": "KEY"},
            "inject_query": {"key": "KEY"},
            "path_prefix": "/p/{TOKEN}",
            "basic_auth": {"username": "KEY", "password": "TOKEN"},
            "allow": ["GET /**"],
            "deny": ["* /admin/**"],
        },
        "aws": {
            "upstream_url": upstream,
            "aws_sigv4": {**sigv4, "region": "eu-west-1", "service": "sqs"},
        },
        "oauth": {"upstream_url": upstream, "oauth2": oauth},
    }
    payload["credentials"]["REFRESH"] = f"{CANARY}-refresh"
    return payload


def test_no_object_of_a_proxy_with_every_kind_shows_a_secret() -> None:
    payload = ProxyPayload.from_bytes(json.dumps(_every_kind("http://127.0.0.1:9")).encode())
    proxy = Proxy(payload, log.get("test"))
    objects, data = reachable(proxy, payload)
    kinds = _kinds(objects)
    assert {
        "Chain",
        "HeaderInjector",
        "QueryInjector",
        "PathPrefixInjector",
        "BasicInjector",
        "SigV4Injector",
        "SigningKey",
        "OAuth2Injector",
        "TokenSource",
        "Grant",
        "Cleaner",
        "Needles",
        "Scope",
    } <= kinds
    assert _holds_canary(data)
    _assert_nothing_shows(objects)


def test_no_object_shows_a_minted_token_mid_request(tmp_path: Path) -> None:
    """An access token minted by a real authorization server, held in the token source,
    the cleaner's needles and the head of a request waiting upstream."""
    client_secret = f"{CANARY}-token"

    async def test() -> None:
        with (
            authorization_server(f"{CANARY}-key", client_secret) as auth,
            GateUpstream() as gate,
        ):
            payload = _every_kind(gate.url, auth.token_url)
            payload["credentials"]["REFRESH"] = auth.refresh_token
            sock = tmp_path / "p.sock"
            async with live_proxy(payload, sock) as proxy:
                request = asyncio.ensure_future(
                    asyncio.to_thread(unix_request, sock, "GET", "/http/oauth/held")
                )
                await asyncio.to_thread(gate.wait_arrived, 1)
                minter = proxy.routes[b"oauth"].minter
                assert minter is not None
                minted = minter.source.token()
                assert minted is not None
                objects, data = reachable(proxy)
                assert {"OAuth2Injector", "TokenSource", "Cleaner", "Exchange"} <= _kinds(objects)
                assert any(isinstance(d, bytes) and minted in d for d in data)
                _assert_nothing_shows(objects)
                for obj in objects:
                    assert minted.decode() not in repr(obj) + str(obj), type(obj).__name__
                gate.open()
                assert (await request).status == 200

    run(test)
