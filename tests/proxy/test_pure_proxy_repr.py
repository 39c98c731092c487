"""No object of the proxy's shows a secret in its repr or str: a canary in every credential
of a payload, and every object of ours reachable from the proxy built on it, printed."""

from __future__ import annotations

import gc
import json
from typing import Any

from bureau import log
from bureau.proxy.server import Proxy
from bureau.wire.proxy_payload import ProxyPayload

CANARY = "repr-canary-5c1e"
PLAIN = (str, bytes, bytearray, int, float, bool, type(None))
CONTAINERS = (dict, list, tuple, set, frozenset)


def _payload() -> ProxyPayload:
    route = {
        "upstream_url": "http://127.0.0.1:9/base",
        "inject_headers": {"Authorization": "TOKEN", "X-Api-Key": "KEY"},
        "auth_scheme": "Bearer",
    }
    body = {
        "principal": "@bureau/fleet/prod/agent/alpha:test",
        "services": {"api": route, "other": {**route, "inject_headers": {"X-Key": "KEY"}}},
        "credentials": {"TOKEN": f"{CANARY}-token", "KEY": f"{CANARY}-key"},
    }
    return ProxyPayload.from_bytes(json.dumps(body).encode())


def _ours_reachable(*roots: object) -> list[object]:
    """Every object of a bureau class reachable from ``roots`` through containers and
    other objects of ours."""
    found, seen, queue = [], set(), list(roots)
    while queue:
        obj: Any = queue.pop()
        if id(obj) in seen or isinstance(obj, PLAIN):
            continue
        seen.add(id(obj))
        ours = type(obj).__module__.startswith("bureau")
        if ours:
            found.append(obj)
        if ours or isinstance(obj, CONTAINERS) or type(obj).__name__ == "mappingproxy":
            queue.extend(gc.get_referents(obj))
    return found


def test_no_object_of_the_proxys_shows_a_secret() -> None:
    payload = _payload()
    proxy = Proxy(payload, log.get("test"))
    objects = _ours_reachable(proxy, payload)
    kinds = {type(o).__name__ for o in objects}
    # The walk reaches what holds the revealed values, not only the wrappers.
    assert {"Proxy", "CompiledRoute", "ProxyPayload", "Secret", "ServiceRoute"} <= kinds
    for obj in objects:
        for shown in (repr(obj), str(obj)):
            assert CANARY not in shown, f"{type(obj).__name__}: {shown}"
