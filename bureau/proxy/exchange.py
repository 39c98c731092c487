"""One request and its response as bureau-proxy carries them, between the client side
(client_side.py) and the upstream side (upstream_side.py): the head the upstream gets, with
the route's credential put in by its injector (injectors.py), the request body on its way
upstream (held, framed, while no upstream connection is there yet) and the answer on its
way back. It holds no socket of its own."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bureau.proxy import http_rules
from bureau.proxy.http_rules import CompiledRoute

if TYPE_CHECKING:
    from bureau.proxy.client_side import ClientConnection
    from bureau.proxy.upstream_side import UpstreamConnection


class Exchange:
    """One request and its response, from the first header to the last body byte."""

    __slots__ = (
        "body_pending",
        "chunked_request",
        "client",
        "finished",
        "has_body",
        "head",
        "head_only",
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
        self.route = route
        self.chunked_request = chunked
        self.has_body = chunked or bool(body_length)
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

    # -- request body, from the client's parser ----------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.local is not None or self.response_done:
            return  # nobody will read it: an answered request's body is dropped
        framed = http_rules.chunk(data) if self.chunked_request else [data]
        if self.upstream is not None:
            self.upstream.send(framed)
        else:
            self.body_pending += framed
            self.client.buffered += sum(map(len, framed))

    def request_complete(self) -> None:
        self.request_done = True
        if self.local is None and not self.response_done and self.chunked_request:
            if self.upstream is not None:
                self.upstream.send([http_rules.LAST_CHUNK])
            else:
                self.body_pending.append(http_rules.LAST_CHUNK)
                self.client.buffered += len(http_rules.LAST_CHUNK)

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
