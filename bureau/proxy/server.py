"""bureau-proxy's forwarding path: asyncio protocols driven by llhttp (httptools), no
framework between a client's bytes and the upstream's.

One ClientConnection per accepted socket parses requests and answers them in order (a
pipelined request waits for the one before it). Each request forwarded upstream borrows a
kept-alive UpstreamConnection from its route's pool, or opens one. Bodies stream both
ways; a full write buffer on one side pauses reading on the other, and a client is not read
from while its answers back up or too many of its requests wait (framing.py). Redirects
come back as they are, never followed: a followed redirect would carry the injected
credentials to wherever it points.

Callbacks from a parser never start or finish another exchange while that parser is
still running: they set state, and the protocol acts on it once feed_data returns.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any, NoReturn, cast

import httptools

from bureau.proxy import framing, http_rules
from bureau.proxy.exchange import Exchange
from bureau.proxy.framing import MAX_BUFFERED, MAX_HEAD_BYTES, MAX_PIPELINED
from bureau.proxy.http_rules import CompiledRoute, Upstream
from bureau.wire.proxy_payload import ProxyPayload

MAX_IDLE_PER_UPSTREAM = 64
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
CLIENT_IDLE_TIMEOUT = 75.0
# Draining, a connection that has sent nothing for this long is closed.
DRAIN_IDLE = 1.0
UPSTREAM_IDLE_TIMEOUT = 30.0
SWEEP_SECONDS = 1.0
HEAD_TOO_LARGE = "sent a response head too large"
TOO_LARGE = {"head": HEAD_TOO_LARGE, "trailers": "sent response trailers too large"}


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
        idle = self.idle.get(route.upstream.key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.begin(exchange, reused=True)
                return
        task = asyncio.get_running_loop().create_task(self._connect(route.upstream, exchange))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class ClientConnection(asyncio.Protocol):
    """A principal's connection to the proxy's socket."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[Exchange] = collections.deque()
        self.parsing: Exchange | None = None
        # The request head being parsed: its URL, its route once the URL is complete, and
        # the header lines that go upstream, already in wire form.
        self.url = bytearray()
        self.route: CompiledRoute | None = None
        self.target = b""
        self.drop: frozenset[bytes] | None = None
        self.lines: list[bytes] = []
        self.listed: list[bytes] | None = None
        self.head_bytes = 0
        self.meter = framing.HeadMeter()
        self.body_length: int | None = None
        self.chunked = False
        self.coding: bytes | None = None
        self.buffered = 0
        self.reading = True
        self.writable = True
        self.closing = False
        self.last_active = time.monotonic()
        self.broken: bytes | None = None
        self.out: list[bytes] = []
        self.served = 0
        self.in_message = False

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.proxy.clients.add(self)
        self.proxy.no_clients.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.closing:
            return
        head = self.meter.before()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade: its exchange already answers 501; read no further.
            self._pause()
            self.closing = True
            if self.queue:
                self.queue[-1].request_done = True
        except httptools.HttpParserError:
            self._refuse(400, "malformed HTTP request")
        else:
            if self.meter.after(head, len(data)):
                self._refuse(431, f"request {self.meter.what()} too large")
        self.exchange_progress()
        self.flush()
        self.flow()

    def eof_received(self) -> bool:
        # A client that half-closes after its request still gets the answers it is owed.
        self.closing = True
        self.exchange_progress()
        self.flush()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self.proxy.clients.discard(self)
        if not self.proxy.clients:
            self.proxy.no_clients.set()
        self.closing = True
        for exchange in self.queue:
            exchange.finished = True
            if exchange.upstream is not None:
                exchange.upstream.abandon()
        self.queue.clear()
        self.transport = None

    def pause_writing(self) -> None:
        # Answers back up: read neither the upstream's answer nor the client's requests.
        self.writable = False
        self._pause()
        active = self.queue[0] if self.queue else None
        if active is not None and active.upstream is not None:
            active.upstream.pause()

    def resume_writing(self) -> None:
        self.writable = True
        active = self.queue[0] if self.queue else None
        if active is not None and active.upstream is not None:
            active.upstream.resume()
        self.flow()

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.meter.started()
        self.url.clear()
        self.route = None
        self.drop = None
        self.lines = []
        self.listed = None
        self.head_bytes = 0
        self.body_length = None
        self.chunked = False
        self.coding = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, "request head too large")
            raise framing.Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"request {self.meter.what()} too large")
            raise framing.Refused
        drop = self.drop
        if drop is None:  # the first header: the URL is complete
            drop = self._resolve()
        lower = name.lower()
        if lower not in drop:
            self.lines += (name, b": ", value, b"\r\n")
        elif lower == b"content-length":
            self.body_length = int(value)  # llhttp has checked it is a number
        elif lower == b"transfer-encoding":
            self.chunked = True  # unless exactly chunked, _route refuses it
            self.coding = value if self.coding is None else self.coding + b"," + value
        elif lower == b"connection" and value.lower() not in (b"keep-alive", b"close"):
            self.listed = [*(self.listed or []), value]

    def _resolve(self) -> frozenset[bytes]:
        split = http_rules.split_target(bytes(self.url))
        if split is not None:
            service, self.target = split
            self.route = self.proxy.routes.get(service)
        self.drop = self.route.drop if self.route is not None else http_rules.REQUEST_DROP
        return self.drop

    def on_headers_complete(self) -> None:
        self.meter.inside = False
        parser = self.parser
        keep_alive = bool(parser.should_keep_alive()) and not self.proxy.draining
        exchange = Exchange(self, parser.get_method(), keep_alive)
        self._route(exchange)
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) == 1:
            self._start(exchange)

    def on_chunk_header(self) -> None:
        # This chunk's data follows, or after the last chunk the trailers (never forwarded,
        # still gathered by httptools): counted afresh like a head.
        self.meter.chunk()
        self.head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self.meter.inside = False
        if self.parsing is not None:
            self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.parsing is not None:
            self.parsing.request_complete()
            self.parsing = None

    # -- exchanges -------------------------------------------------------------------------

    def _route(self, exchange: Exchange) -> None:
        proxy = self.proxy
        keep = exchange.keep_alive
        refused = framing.refused_request(
            exchange.method, self.coding, upgrade=self.parser.should_upgrade(), keep_alive=keep
        )
        if refused is not None:
            exchange.answer_locally(refused[0], close=refused[1])
            return
        if self.drop is None:
            self._resolve()
        route = self.route
        if route is None:
            url = bytes(self.url)
            if url == b"/health" and exchange.method in (b"GET", b"HEAD"):
                health = proxy.health(keep_alive=keep, head_only=exchange.head_only)
                exchange.answer_locally(health)
                return
            split = http_rules.split_target(url)
            if split is None:
                exchange.answer_locally(
                    http_rules.error_response(
                        404, "not found: use /http/<service>/...", keep_alive=keep
                    )
                )
                return
            name = split[0].decode("utf-8", "replace")
            exchange.answer_locally(
                http_rules.error_response(404, f"unknown service {name!r}", keep_alive=keep)
            )
            return
        if proxy.expired():
            exchange.answer_locally(
                http_rules.error_response(503, "credentials expired", keep_alive=keep)
            )
            return
        if route.unavailable is not None:
            exchange.answer_locally(
                http_rules.error_response(503, route.unavailable, keep_alive=keep)
            )
            return
        exchange.route = route
        exchange.chunked_request = self.chunked
        exchange.has_body = self.chunked or bool(self.body_length)
        lines = self.lines
        if self.listed is not None:
            lines = http_rules.drop_listed(lines, self.listed)
        exchange.head = http_rules.request_head(
            exchange.method,
            self.target,
            lines,
            route,
            body_length=None if self.chunked else self.body_length,
            chunked=self.chunked,
        )

    def _start(self, exchange: Exchange) -> None:
        exchange.started = time.monotonic()
        if exchange.local is not None:
            exchange.respond(exchange.local)
            exchange.response_done = True
            return
        self.proxy.borrow(exchange)

    def exchange_progress(self) -> None:
        """Retire the exchange at the head of the queue once both its request and its
        response are complete, and start the next one."""
        queue = self.queue
        while queue:
            head = queue[0]
            if not (head.request_done and head.response_done):
                break
            queue.popleft()
            head.finished = True
            self.served += 1
            if not head.keep_alive:
                self._close_after_writes()
                return
            if head.body_pending:
                head.release()
            if queue:
                self._start(queue[0])
        if not self.reading:
            self.flow()
        if self.idle() and (self.closing or (self.proxy.draining and self.served)):
            self._close_after_writes()

    # -- output and flow ---------------------------------------------------------------

    def write(self, data: bytes | list[bytes]) -> None:
        """Queue output; flush() sends it in one writev. Every entry point that can write
        (a read on either side, a failed connect, a sweep) flushes before it returns."""
        if isinstance(data, list):
            self.out += data
        else:
            self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        self.out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(out)

    def flow(self) -> None:
        """Read from the client only while what it sends has somewhere to go: its answers
        are not backing up, few requests wait, their bodies fit (see framing.py)."""
        queue = self.queue
        upstream = queue[0].upstream if queue else None
        if (
            self.writable
            and len(queue) <= MAX_PIPELINED
            and self.buffered <= MAX_BUFFERED
            and (upstream is None or not upstream.full)
        ):
            self._resume()
        else:
            self._pause()

    def body_flushed(self, amount: int) -> None:
        self.buffered = max(0, self.buffered - amount)
        self.flow()

    def _pause(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _resume(self) -> None:
        if not self.reading and not self.closing and self.transport is not None:
            self.reading = True
            self.transport.resume_reading()

    def _refuse(self, status: int, message: str) -> None:
        """A request the parser cannot make sense of: answer once it is this request's
        turn, then close; nothing after it on this connection is read."""
        if self.broken is not None:
            return
        self.broken = http_rules.error_response(status, message, keep_alive=False)
        self.closing = True
        self._pause()
        if self.parsing is not None and self.queue and self.parsing is self.queue[-1]:
            self._cut_short(self.parsing, self.broken)
            return
        exchange = Exchange(self, b"", keep_alive=False)
        exchange.answer_locally(self.broken, close=True)
        exchange.request_done = True
        self.queue.append(exchange)
        if len(self.queue) == 1:
            self._start(exchange)

    def _cut_short(self, exchange: Exchange, answer: bytes) -> None:
        """Its head was fine and its body is not: the request ends here, answered with
        ``answer`` unless an answer is already on its way, and the connection closes."""
        exchange.request_done = True
        exchange.keep_alive = False
        if exchange.response_started:
            if not exchange.response_done:
                self.abort()  # mid-answer: there is no room for another
            return
        if exchange.upstream is not None:
            exchange.upstream.abandon()  # it holds part of a request: never reused
            exchange.upstream = None
        exchange.answer_locally(answer, close=True)
        if exchange is self.queue[0]:
            exchange.respond(answer)
            exchange.response_done = True

    def _close_after_writes(self) -> None:
        self.closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def idle(self) -> bool:
        return not self.queue and not self.in_message

    def drain(self) -> None:
        """SIGTERM: idle kept-alive connections close now, busy ones after their current
        answer. A connection that has not sent its first request yet gets it answered:
        it connected before the socket was handed to the next proxy."""
        if self.idle() and self.served:
            self._close_after_writes()

    def check(self, now: float) -> None:
        if self.queue:
            active = self.queue[0]
            conn = active.upstream
            if conn is not None and now - conn.last_active > READ_TIMEOUT:
                conn.abandon()
                service = active.route.service if active.route else "?"
                self.proxy.log.warning("upstream timed out", service=service)
                if active.response_started:
                    self.abort()
                else:
                    active.respond(
                        http_rules.error_response(
                            504, f"upstream of {service!r} timed out", keep_alive=False
                        )
                    )
                    active.keep_alive = False
                    active.request_done = True
                    active.response_complete()
                self.flush()
        elif now - self.last_active > (DRAIN_IDLE if self.proxy.draining else CLIENT_IDLE_TIMEOUT):
            self._close_after_writes()


class UpstreamConnection(asyncio.Protocol):
    """A kept-alive connection to one upstream, carrying one exchange at a time. Whatever
    the upstream sends beyond the one response it owes is never relayed and ends the
    connection: relayed, it would answer the client's next request, maybe for another
    service."""

    def __init__(self, proxy: Proxy, upstream: Upstream) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: Any = None
        # A parser carries over to the next response unless it was left mid-message.
        self.parser_spent = True
        # The response head as it arrives: kept header lines already in wire form.
        self.lines: list[bytes] = []
        self.reason = b""
        self.listed: list[bytes] | None = None
        self.length: bytes | None = None
        self.chunked = False
        self.coding: bytes | None = None
        self.interim = False
        self.closed = False
        self.full = False
        self.head_bytes = 0
        self.meter = framing.HeadMeter()
        # Why a parser callback stopped the parser: what the client's 502 says.
        self.refusal: str | None = None
        self._new_exchange(reused=False)

    def _new_exchange(self, *, reused: bool) -> None:
        self.reused = reused
        self.got_bytes = False
        self.message_done = False
        self.reusable = False
        self.until_close = False
        self.client_chunked = False
        self.last_active = time.monotonic()

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def begin(self, exchange: Exchange, *, reused: bool) -> None:
        self.exchange = exchange
        exchange.upstream = self
        if self.parser_spent:
            self.parser = httptools.HttpResponseParser(self)
            self.parser_spent = False
        self._new_exchange(reused=reused)
        if not exchange.client.writable:
            self.pause()
        pending = exchange.body_pending
        if pending:
            exchange.release()
            self.send([exchange.head, *pending])
        elif self.transport is not None and not self.closed:
            self.transport.write(exchange.head)

    def send(self, data: list[bytes]) -> None:
        self.last_active = time.monotonic()
        if self.transport is not None and not self.closed:
            self.transport.writelines(data)

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self.proxy.forget(self)
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """The exchange no longer wants this connection, mid-response: it cannot be reused."""
        self.exchange = None
        self.closed = True
        self.proxy.forget(self)
        if self.transport is not None:
            self.transport.abort()

    # -- transport callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        self.full = True  # the client's reading waits while its exchange is on this one
        if self.exchange is not None:
            self.exchange.client.flow()

    def resume_writing(self) -> None:
        self.full = False
        if self.exchange is not None:
            self.exchange.client.flow()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        exchange = self.exchange
        if exchange is None or self.message_done:
            self.close()  # bytes nobody asked for: this connection is out of step
            return
        self.got_bytes = True
        client = exchange.client
        head = self.meter.before()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self.message_done:
                # The one response is whole; what came after it is never relayed, and a
                # connection that sent it is out of step for good.
                self.reusable = False
                self._finish()
            else:
                self._refuse(self.refusal or "sent a malformed response")
        else:
            if self.message_done:
                self._finish()
            elif self.meter.after(head, len(data)):
                self._refuse(TOO_LARGE[self.meter.what()])
        client.flush()

    def eof_received(self) -> bool:
        if self.exchange is not None and self.until_close and not self.message_done:
            self.message_done = True  # a body delimited by the connection's end
            self.reusable = False
            client = self.exchange.client
            self._finish()
            client.flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.forget(self)
        exchange = self.exchange
        self.exchange = None
        if exchange is None or exchange.finished or self.message_done:
            return
        if self.reused and not self.got_bytes and not exchange.has_body:
            # The upstream closed a kept-alive connection as we reused it: try once on a
            # fresh one, which is safe when no request body can have been lost with it.
            exchange.upstream = None
            self.proxy.borrow(exchange)
            return
        exchange.upstream_failed(type(exc).__name__ if exc else "connection closed")
        exchange.client.flush()

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.message_done:
            raise framing.Refused  # a second response to one request: never relayed
        self.meter.started()
        self.head_bytes = 0
        self.lines = []
        self.reason = b""
        self.listed = None
        self.length = None
        self.chunked = False
        self.coding = None
        self.interim = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason
        self.head_bytes += len(reason)
        if self.head_bytes > MAX_HEAD_BYTES:
            self._stop(HEAD_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            self._stop(TOO_LARGE[self.meter.what()])
        # The client sees the upstream's headers as they came, minus the connection-level
        # ones: written out here, so the head needs no second pass.
        lower = name.lower()
        if lower not in http_rules.RESPONSE_DROP:
            self.lines += (name, b": ", value, b"\r\n")
        elif lower == b"content-length":
            self.length = value
        elif lower == b"transfer-encoding":
            self.chunked = True  # unless exactly chunked, on_headers_complete refuses it
            self.coding = value if self.coding is None else self.coding + b"," + value
        elif lower == b"connection" and value.lower() not in (b"keep-alive", b"close"):
            self.listed = [*(self.listed or []), value]

    def on_headers_complete(self) -> None:
        self.meter.inside = False
        exchange = self.exchange
        if exchange is None:
            return
        status = self.parser.get_status_code()
        lines = self.lines
        if self.listed is not None:
            lines = http_rules.drop_listed(lines, self.listed)
        client_11 = exchange.client.parser.get_http_version() == "1.1"
        if 100 <= status < 200:
            # Interim (100 Continue and friends): relayed to an HTTP/1.1 client, and the
            # final response, or a 502 in its place, is still to come.
            self.interim = True
            if client_11 and status != 101:
                exchange.client.write(
                    http_rules.response_head(status, self.reason, lines, b"", True)
                )
            return
        head_only = exchange.head_only
        no_body = head_only or status in (204, 304)
        if self.coding is not None and not no_body and not framing.only_chunked(self.coding):
            self._stop("used a transfer coding the proxy cannot pass on")
        line, self.until_close, self.client_chunked, close = framing.response_framing(
            status, head_only, self.length, self.chunked, client_11
        )
        keep_alive = exchange.keep_alive and not self.proxy.draining and not close
        exchange.keep_alive = keep_alive
        exchange.respond(http_rules.response_head(status, self.reason, lines, line, keep_alive))
        self.reusable = bool(self.parser.should_keep_alive())
        if head_only:
            # llhttp cannot be told the response to HEAD has no body; the exchange ends
            # here and this parser is replaced before the connection carries another.
            self.message_done = True
            self.parser_spent = True

    def on_chunk_header(self) -> None:
        self.meter.chunk()  # as the client's: the trailers, if any, are bounded like a head
        self.head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self.meter.inside = False
        if self.message_done:
            raise framing.Refused  # a body after a HEAD response: not the client's
        exchange = self.exchange
        if exchange is None or self.interim:
            return
        exchange.client.write(http_rules.chunk(body) if self.client_chunked else body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.exchange is not None and not self.message_done:
            self.message_done = True
            self.reusable = self.reusable and bool(self.parser.should_keep_alive())

    # -- after a response ----------------------------------------------------------------

    def _finish(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        if self.client_chunked:
            exchange.client.write(http_rules.LAST_CHUNK)
        # The upstream answered before the request body was all sent (an early 413, say):
        # the connection is mid-request and cannot carry another.
        if self.reusable and exchange.request_done and not self.closed:
            self.proxy.give_back(self)
        else:
            self.close()
        exchange.response_complete()

    def _stop(self, problem: str) -> NoReturn:
        """From a parser callback: stop the parser; data_received refuses the response."""
        self.refusal = problem
        raise framing.Refused

    def _refuse(self, problem: str) -> None:
        """A response the proxy will not pass on: a 502 in its place, and this connection,
        with whatever else the upstream has queued on it, is dropped."""
        self.closed = True
        self._fail(problem, problem)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: str, problem: str = "unreachable") -> None:
        exchange = self.exchange
        self.exchange = None
        self.proxy.forget(self)
        if exchange is not None:
            exchange.upstream_failed(error, problem)
