"""bureau-proxy's forwarding path: asyncio protocols driven by llhttp (httptools), no
framework between a client's bytes and the upstream's. Each module has one side of it:

- server.py (here): the Proxy, what every connection shares: the compiled routes, the
  pools of kept-alive upstream connections, the once-a-second sweep and the drain.
- client_side.py: a principal's connection, parsing its requests and writing its answers.
- upstream_side.py: a connection to an upstream, carrying one exchange at a time.
- exchange.py: one request and its response between the two, and the upstream head.
- injectors.py: how a route's credential goes into that head, one class per kind;
  route_kinds.py: which kinds, scope and response cleaning each route gets.

A client's request borrows a kept-alive upstream connection from its route's pool, or
opens one. Bodies stream both ways; a full write buffer on one side pauses reading on the
other (framing.py).

Callbacks from a parser never start or finish another exchange while that parser is
still running: they set state, and the protocol acts on it once feed_data returns.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from bureau.proxy import http_rules
from bureau.proxy.client_side import ClientConnection
from bureau.proxy.exchange import Exchange
from bureau.proxy.http_rules import Upstream
from bureau.proxy.injectors import PREPARE_TIMEOUT, Unavailable
from bureau.proxy.upstream_side import UpstreamConnection
from bureau.wire.proxy_payload import ProxyPayload

# main.py starts a ClientConnection per accepted socket, from here.
__all__ = ["SWEEP_SECONDS", "ClientConnection", "Proxy"]

MAX_IDLE_PER_UPSTREAM = 64
CONNECT_TIMEOUT = 10.0
UPSTREAM_IDLE_TIMEOUT = 30.0
SWEEP_SECONDS = 1.0


class Proxy:
    """What every connection shares: the compiled routes, the upstream pools, the clock
    checks and the drain flag."""

    def __init__(
        self,
        payload: ProxyPayload,
        log: Any,
        *,
        debug: bool = False,
        clock: Any = time.time,
    ) -> None:
        self.routes = {name.encode(): r for name, r in http_rules.compile_routes(payload).items()}
        self.expires = payload.expires_epoch
        self.log = log
        self.debug = debug
        self.clock = clock
        self.draining = False
        self.clients: set[ClientConnection] = set()
        self.no_clients = asyncio.Event()  # set while no client is connected
        self.no_clients.set()
        self.idle: dict[str, collections.deque[UpstreamConnection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._health = {
            "status": "ok",
            "principal": payload.principal,
            "services": sorted(payload.services),
        }
        self._tasks: set[asyncio.Task[None]] = set()

    def health(self, *, keep_alive: bool, head_only: bool) -> bytes:
        return http_rules.json_response(
            200, self._health, keep_alive=keep_alive, head_only=head_only
        )

    def expired(self) -> bool:
        return self.expires is not None and self.clock() >= self.expires

    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    # -- upstream connections --------------------------------------------------------

    def borrow(self, exchange: Exchange) -> None:
        route = exchange.route
        if route is None:
            raise RuntimeError("local exchanges do not go upstream")
        if exchange.deferred is not None:
            # Its head waits for its injector (injectors.py); once the body it holds, if
            # any, is complete (Exchange.request_complete asks again).
            if exchange.ready():
                self._spawn(self._when_ready(exchange))
            return
        idle = self.idle.get(route.upstream.key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.begin(exchange, reused=True)
                return
        self._spawn(self._connect(route.upstream, exchange))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _when_ready(self, exchange: Exchange) -> None:
        """A deferred head: wait for what its injector asked for, then build it and go
        upstream, or answer 503. The future is shared by every request waiting on it
        (single flight): one request's timeout or cancellation does not cancel it."""
        waiting = exchange.deferred[3] if exchange.deferred else None
        problem = None
        try:
            if waiting is not None:
                async with asyncio.timeout(PREPARE_TIMEOUT):
                    await asyncio.shield(waiting)
            if exchange.finished or exchange.response_done:
                return
            exchange.build_deferred()
        except Unavailable as exc:
            problem = str(exc)
        except TimeoutError:
            problem = "credential not ready in time"
        except Exception as exc:
            # The injector's own failure: its message may hold what it fetched.
            self.log.warning("credential failed", error=type(exc).__name__)
            problem = "credential unavailable"
        if problem is not None:
            service = exchange.route.service if exchange.route else "?"
            exchange.unavailable(f"{service!r}: {problem}")
        else:
            self.borrow(exchange)
        exchange.client.flush()

    async def _connect(self, upstream: Upstream, exchange: Exchange) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, upstream),
                    upstream.host,
                    upstream.port,
                    ssl=self.tls() if upstream.tls else None,
                    server_hostname=upstream.host if upstream.tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            exchange.upstream_failed(type(exc).__name__)
            exchange.client.flush()
            return
        if exchange.finished or exchange.response_done:  # gone or answered while we connected
            conn.close()
            return
        conn.begin(exchange, reused=False)

    def give_back(self, conn: UpstreamConnection) -> None:
        idle = self.idle.setdefault(conn.upstream.key, collections.deque())
        if self.draining or len(idle) >= MAX_IDLE_PER_UPSTREAM:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self.idle.get(conn.upstream.key)
        if idle and conn in idle:
            idle.remove(conn)

    # -- housekeeping ------------------------------------------------------------------

    def sweep(self) -> None:
        """Timeouts, checked once a second rather than armed per request."""
        now = time.monotonic()
        for client in list(self.clients):
            client.check(now)
        for idle in self.idle.values():
            for conn in list(idle):
                if now - conn.last_active > UPSTREAM_IDLE_TIMEOUT:
                    conn.close()

    def drain(self) -> None:
        self.draining = True
        for client in list(self.clients):
            client.drain()
        for idle in self.idle.values():
            for conn in list(idle):
                conn.close()

    async def cancel_tasks(self) -> None:
        """Stopping: every task the proxy started, and what its routes' injectors run in
        the background (a token fetch), cancelled and waited for."""
        closing = [r.injector.close() for r in self.routes.values() if r.injector is not None]
        for task in list(self._tasks):
            task.cancel()
        waits = [*self._tasks, *(f for f in closing if f is not None)]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
