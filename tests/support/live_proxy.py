"""bureau-proxy's Proxy served inside the test's own event loop (uvloop, as the proxy runs
it) on a Unix socket: for a test that reaches into the proxy's objects while they carry a
request, or puts an injector of its own on a route. Clients talk to it from threads
(asyncio.to_thread), blocking as a workload would."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

from bureau import log
from bureau.proxy.client_side import ClientConnection
from bureau.proxy.injectors import Injector
from bureau.proxy.server import Proxy
from bureau.wire.proxy_payload import ProxyPayload


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test())


@contextlib.asynccontextmanager
async def live_proxy(payload: dict[str, Any], socket_path: Path) -> AsyncIterator[Proxy]:
    proxy = Proxy(ProxyPayload.from_bytes(json.dumps(payload).encode()), log.get("test"))
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: ClientConnection(proxy), str(socket_path)
    )
    try:
        yield proxy
    finally:
        server.close()
        proxy.drain()
        for client in list(proxy.clients):
            client.abort()
        await proxy.cancel_tasks()
        await server.wait_closed()


def put_injector(proxy: Proxy, service: str, injector: Injector) -> None:
    """``service``'s route with ``injector`` in place of the one its payload chose."""
    route = proxy.routes[service.encode()]
    proxy.routes[service.encode()] = dataclasses.replace(
        route, injector=injector, drop=route.drop | injector.sets, unavailable=None
    )
