"""One request and its response as bureau-proxy carries them, between the client side
(client_side.py) and the upstream side (upstream_side.py): the head the upstream gets, with
the route's credential put in by its injector (injectors.py), the request body on its way
upstream (held, framed, while no upstream connection is there yet) and the answer on its
way back. It holds no socket of its own."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bureau.proxy import framing, http_rules
from bureau.proxy.http_rules import CompiledRoute

if TYPE_CHECKING:
    from bureau.proxy.client_side import ClientConnection
    from bureau.proxy.upstream_side import UpstreamConnection

# A deferred head's target, header lines and body length, and what its injector waits on.
Deferred = tuple[bytes, list[bytes], int | None, asyncio.Future[None] | None]


class Exchange:
    """One request and its response, from the first header to the last body byte."""

    __slots__ = (
        "body_pending",
        "chunked_request",
        "client",
        "deferred",
        "finished",
        "has_body",
        "head",
        "head_only",
        "held",
        "keep_alive",
        "local",
        "method",
        "request_done",
        "response_done",
        "response_started",
        "route",
        "started",
        "upstream",
    )

    def __init__(self, client: ClientConnection, method: bytes, keep_alive: bool) -> None:
        self.client = client
        self.method = method
        self.keep_alive = keep_alive
        self.head_only = method == b"HEAD"
        self.route: CompiledRoute | None = None
        self.local: bytes | None = None
        self.head = b""
        self.chunked_request = False
        self.has_body = False
        # Request body bytes waiting for an upstream connection (already framed).
        self.body_pending: list[bytes] = []
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.finished = False
        self.upstream: UpstreamConnection | None = None
        self.started = 0.0
        # A head that waits for its injector (injectors.py): what it is built from, and
        # what the injector asked to wait on. None once built, as on most routes at once.
        self.deferred: Deferred | None = None
        # Body bytes held for an injector that signs the body; -1 when none is held.
        self.held = -1

    def answer_locally(self, response: bytes, *, close: bool = False) -> None:
        self.local = response
        if close:
            self.keep_alive = False

    def forward(
        self,
        route: CompiledRoute,
        target: bytes,
        lines: list[bytes],
        body_length: int | None,
        chunked: bool,
    ) -> None:
        """Bound for ``route``'s upstream: the head it gets, with the route's credential in
        it, or a 503 answered here when the proxy has no credential to give. ``lines`` are
        the client's kept header lines in wire form, a list the injector may append to."""
        keep = self.keep_alive
        if self.client.proxy.expired():
            self.answer_locally(
                http_rules.error_response(503, "credentials expired", keep_alive=keep)
            )
            return
        injector = route.injector
        if injector is None:
            problem = route.unavailable or "no credential"
            self.answer_locally(http_rules.error_response(503, problem, keep_alive=keep))
            return
        self.has_body = chunked or bool(body_length)
        waiting = injector.prepare()
        limit = injector.body_limit
        if waiting is not None or limit:
            self._defer(route, target, lines, body_length, chunked, waiting)
            return
        self.route = route
        self.chunked_request = chunked
        method = self.method
        target = injector.inject(method, target, lines, None)
        self.head = http_rules.request_head(
            method,
            target,
            lines,
            route,
            body_length=None if chunked else body_length,
            chunked=chunked,
        )

    def _defer(  # noqa: PLR0917 - forward()'s arguments, passed on
        self,
        route: CompiledRoute,
        target: bytes,
        lines: list[bytes],
        body_length: int | None,
        chunked: bool,
        waiting: asyncio.Future[None] | None,
    ) -> None:
        """The head waits: for ``waiting`` (a token being fetched), for the whole body (an
        injector that signs it), or both; Proxy.borrow goes on once they are done."""
        limit = route.injector.body_limit if route.injector else 0
        if limit:
            if body_length is not None and body_length > limit:
                answer = http_rules.error_response(413, _too_large(route, limit), keep_alive=False)
                self.answer_locally(answer, close=True)
                return
            self.held = 0
            chunked = False  # held whole, the body goes upstream with its length
        self.route = route
        self.chunked_request = chunked
        self.deferred = (target, lines, body_length, waiting)

    def ready(self) -> bool:
        """Whether a deferred head can be built: its body, if held, is complete."""
        return self.held < 0 or self.request_done

    def build_deferred(self) -> None:
        """What the deferred head waited for is there: build it, the held body in it."""
        route, deferred = self.route, self.deferred
        if route is None or route.injector is None or deferred is None:
            raise RuntimeError("no deferred head to build")
        target, lines, length, _ = deferred
        self.deferred = None
        body = None
        if self.held >= 0:
            body = b"".join(self.body_pending)
            self.body_pending = [body] if body else []
            length = len(body) if self.has_body else length
        target = route.injector.inject(self.method, target, lines, body)
        self.head = http_rules.request_head(
            self.method,
            target,
            lines,
            route,
            body_length=None if self.chunked_request else length,
            chunked=self.chunked_request,
        )

    # -- request body, from the client's parser ----------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.local is not None or self.response_done:
            return  # nobody will read it: an answered request's body is dropped
        framed = http_rules.chunk(data) if self.chunked_request else [data]
        if self.upstream is not None:
            self.upstream.send(framed)
        else:
            if self.held >= 0:
                self.held += len(data)
                route = self.route
                limit = route.injector.body_limit if route and route.injector else 0
                if self.held > limit and route is not None:
                    # As a head too large: answered in turn, nothing after it is read.
                    self.client.refuse(413, _too_large(route, limit))
                    raise framing.Refused
            self.body_pending += framed
            self.client.buffered += sum(map(len, framed))

    def request_complete(self) -> None:
        self.request_done = True
        if self.local is not None or self.response_done:
            return
        if self.chunked_request:
            if self.upstream is not None:
                self.upstream.send([http_rules.LAST_CHUNK])
            else:
                self.body_pending.append(http_rules.LAST_CHUNK)
                self.client.buffered += len(http_rules.LAST_CHUNK)
        elif self.held >= 0 and self.started:
            self.client.proxy.borrow(self)  # its turn came while the body was held

    def release(self) -> None:
        """The body held for an upstream connection is sent, or never will be: it no
        longer counts against the client's reading."""
        if self.body_pending:
            self.client.body_flushed(sum(map(len, self.body_pending)))
            self.body_pending = []

    # -- response, from the upstream connection ----------------------------------------

    def upstream_failed(self, error: str, problem: str = "unreachable") -> None:
        """No final response head came, or not one the proxy can pass on: the client gets
        a 502 (unless it is already gone or answered)."""
        if self.finished or self.response_done:
            return
        service = self.route.service if self.route else "?"
        self.client.proxy.log.warning(
            "upstream failed", problem=problem, service=service, error=error
        )
        self.upstream = None
        self.release()
        if self.response_started:
            self.client.abort()
            return
        message = f"upstream of {service!r} {problem}"
        self.respond(http_rules.error_response(502, message, keep_alive=self.keep_alive))
        self.response_complete()

    def unavailable(self, problem: str) -> None:
        """The injector could not give the credential: a 503 saying why, which names no
        secret (injectors.Unavailable), unless the client is gone or answered."""
        if self.finished or self.response_done:
            return
        self.deferred = None
        self.release()
        self.respond(http_rules.error_response(503, problem, keep_alive=self.keep_alive))
        self.response_complete()

    def respond(self, data: bytes | list[bytes]) -> None:
        self.response_started = True
        self.client.write(data)

    def response_complete(self) -> None:
        self.response_done = True
        self.upstream = None
        if self.client.proxy.debug and self.route is not None:
            self.client.proxy.log.debug(
                "forwarded",
                service=self.route.service,
                method=self.method.decode("ascii", "replace"),
                ms=round((time.monotonic() - self.started) * 1000, 1),
            )
        self.client.exchange_progress()


def _too_large(route: CompiledRoute, limit: int) -> str:
    return f"request body larger than {limit} bytes, the most {route.service!r} signs"
