"""bureau-proxy's upstream side: a kept-alive connection to one upstream, driven by llhttp
(httptools), carrying one exchange at a time. The response head is written out for the
client as its headers arrive, minus the connection-level ones, and the body is re-framed
for the client as it streams (framing.py). Redirects come back as they are, never
followed: a followed redirect would carry the injected credentials to wherever it points.

On a route whose responses are cleaned (cleaning.py), the head's values are cleaned before
it is written, and a text body goes through a scrubber as it streams, same length. A 401
to a minted token the exchange sends again is read to its end and never relayed
(exchange.py).

Parser callbacks set state; data_received acts on it once feed_data returns (server.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, NoReturn, cast

import httptools

from bureau.proxy import framing, http_rules
from bureau.proxy.framing import MAX_HEAD_BYTES
from bureau.proxy.http_rules import Upstream
from bureau.proxy.scrub import BodyScrubber

if TYPE_CHECKING:
    from bureau.proxy.exchange import Exchange
    from bureau.proxy.server import Proxy

HEAD_TOO_LARGE = "sent a response head too large"
TOO_LARGE = {"head": HEAD_TOO_LARGE, "trailers": "sent response trailers too large"}


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
        # The body is not the client's: an interim response's, or a 401 being resent.
        self.muted = False
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
        self.scrubber: BodyScrubber | None = None
        self.resending = False

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
        if self.resending:
            # The 401 it was reading is not needed: the request goes again all the same.
            self.resending = False
            exchange.upstream = None
            exchange.resend()
            exchange.client.flush()
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
        self.muted = False

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
            self.muted = True
            if client_11 and status != 101:
                reason = self.reason
                cleaner = exchange.route.cleaner if exchange.route is not None else None
                if cleaner is not None:
                    reason, lines = cleaner.head(reason, lines)
                exchange.client.write(http_rules.response_head(status, reason, lines, b"", True))
            return
        head_only = exchange.head_only
        no_body = head_only or status in (204, 304)
        if self.coding is not None and not no_body and not framing.only_chunked(self.coding):
            self._stop("used a transfer coding the proxy cannot pass on")
        line, self.until_close, self.client_chunked, close = framing.response_framing(
            status, head_only, self.length, self.chunked, client_11
        )
        self.reusable = bool(self.parser.should_keep_alive())
        if status == 401 and exchange.retry is not None and exchange.token_refused():
            # Read to its end, never relayed; the exchange sends its request again.
            self.resending = self.muted = True
            self.client_chunked = False
        else:
            reason = self.reason
            route = exchange.route
            cleaner = route.cleaner if route is not None else None
            if cleaner is not None:
                if not no_body:
                    given = None if self.chunked else self.length
                    size = int(given) if given is not None and given.isdigit() else None
                    self.scrubber = cleaner.scrubber(lines, size)
                reason, lines = cleaner.head(reason, lines)
            keep_alive = exchange.keep_alive and not self.proxy.draining and not close
            exchange.keep_alive = keep_alive
            exchange.respond(http_rules.response_head(status, reason, lines, line, keep_alive))
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
        if exchange is None or self.muted:
            return
        scrubber = self.scrubber
        if scrubber is not None:
            body = scrubber.feed(body)
            if not body:
                return  # all of it could begin a secret: held for the next piece
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
        if self.resending:
            self.resending = False
            if self.reusable and not self.closed:
                self.proxy.give_back(self)
            else:
                self.close()
            exchange.upstream = None
            exchange.resend()
            return
        scrubber = self.scrubber
        if scrubber is not None:
            rest = scrubber.finish()
            if rest:
                exchange.client.write(http_rules.chunk(rest) if self.client_chunked else rest)
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
