"""bureau-proxy's client side: a principal's connection to the proxy's socket, driven by
llhttp (httptools). It parses requests and answers them in order (a pipelined request
waits for the one before it); each request becomes an Exchange (exchange.py) as soon as
its head is complete. The request head is gathered in wire form as it is parsed, minus
what the route drops (http_rules.py), so the upstream head needs no second pass. The
client is not read from while its answers back up or too many of its requests or their
bodies wait (framing.py).

Parser callbacks set state; data_received acts on it once feed_data returns (server.py).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, cast

import httptools

from bureau.proxy import framing, http_rules
from bureau.proxy.exchange import Exchange
from bureau.proxy.framing import MAX_BUFFERED, MAX_HEAD_BYTES, MAX_PIPELINED
from bureau.proxy.http_rules import CompiledRoute

if TYPE_CHECKING:
    from bureau.proxy.server import Proxy

READ_TIMEOUT = 300.0
CLIENT_IDLE_TIMEOUT = 75.0
# Draining, a connection that has sent nothing for this long is closed.
DRAIN_IDLE = 1.0


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
            self.refuse(400, "malformed HTTP request")
        else:
            if self.meter.after(head, len(data)):
                self.refuse(431, f"request {self.meter.what()} too large")
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
            self.refuse(431, "request head too large")
            raise framing.Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            self.refuse(431, f"request {self.meter.what()} too large")
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
        lines = self.lines
        if self.listed is not None:
            lines = http_rules.drop_listed(lines, self.listed)
        exchange.forward(route, self.target, lines, self.body_length, self.chunked)

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

    def refuse(self, status: int, message: str) -> None:
        """A request the proxy takes no further (the parser cannot make sense of it, or it
        is too large): answer once it is this request's turn, then close; nothing after it
        on this connection is read."""
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
            elif active.deferred is not None and now - self.last_active > READ_TIMEOUT:
                self.abort()  # the body an injector waits for stopped coming
        elif now - self.last_active > (DRAIN_IDLE if self.proxy.draining else CLIENT_IDLE_TIMEOUT):
            self._close_after_writes()
