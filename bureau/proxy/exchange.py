"""One request and its response as bureau-proxy carries them, between the client side
(client_side.py) and the upstream side (upstream_side.py): the head the upstream gets, with
the route's credential put in by its injector (injectors.py), the request body on its way
upstream (held, framed, while no upstream connection is there yet) and the answer on its
way back. It holds no socket of its own.

Before anything else a request is checked against its route's scope (scope.py): a refusal
is a 403 naming the kind of rule that refused it, and nothing of the request goes upstream.

On a route whose token the proxy mints (oauth2), a 401 from the upstream means the token
was refused: the minter drops it, and the request is sent once more with a fresh one when
the whole of it is still at hand: no body, or a body of at most RETRY_BODY_LIMIT bytes,
kept as it went upstream. Otherwise the 401 goes to the workload, and its next request
gets a fresh token."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bureau.proxy import framing, http_rules
from bureau.proxy.http_rules import CompiledRoute
from bureau.proxy.injectors import Injector, Unavailable

if TYPE_CHECKING:
    from bureau.proxy.client_side import ClientConnection
    from bureau.proxy.upstream_side import UpstreamConnection

# A deferred head's target, header lines and body length, and what its injector waits on.
Deferred = tuple[bytes, list[bytes], int | None, asyncio.Future[None] | None]
# What a head was built from, to build it again with a fresh token: the target, the header
# lines (the injector's own after the first ``count``) and the body length.
Replay = tuple[bytes, list[bytes], int, int | None]

# The most request body kept for sending again after a 401 (an API call's JSON); a larger
# one streams without a copy, and its 401 goes to the workload.
RETRY_BODY_LIMIT = 64 * 1024


class Retry:
    """What a request on a route with a minted token keeps for a 401: the token it
    carried, what its head was built from, and its body as it went upstream (None once
    past RETRY_BODY_LIMIT). One object, made only on such a route, so that an exchange on
    any other costs one attribute."""

    __slots__ = ("body", "kept", "replay", "resent", "token")

    def __init__(self) -> None:
        self.token: bytes | None = None
        self.replay: Replay | None = None
        self.body: list[bytes] | None = []
        self.kept = 0
        self.resent = False

    def keep(self, size: int, framed: list[bytes]) -> None:
        body = self.body
        if body is not None:
            self.kept += size
            if self.kept > RETRY_BODY_LIMIT:
                self.body = None
            else:
                body += framed


REFUSED = {
    "deny": "refused by a deny rule",
    "allow": "not allowed by any allow rule",
    "path": "a path the scope check will not read (a dot segment, an encoded / or \\, "
    "a backslash or a malformed escape)",
}


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
        "retry",
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
        # On a route with a minted token, what a 401 needs.
        self.retry: Retry | None = None

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
        scope = route.scope
        if scope is not None:
            rule = scope.refusal(self.method, target)
            if rule is not None:
                self._refuse(route, rule)
                return
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
        if route.minter is not None:
            self.retry = Retry()
        waiting = injector.prepare()
        limit = injector.body_limit
        if waiting is not None or limit:
            self._defer(route, target, lines, body_length, chunked, waiting)
            return
        self.route = route
        self.chunked_request = chunked
        try:
            if route.minter is not None:
                self._build(route, injector, target, lines, body_length, None)
                return
            target = injector.inject(self.method, target, lines, None)
        except Unavailable as exc:
            problem = f"{route.service!r}: {exc}"
            self.answer_locally(http_rules.error_response(503, problem, keep_alive=keep))
            return
        self.head = http_rules.request_head(
            self.method,
            target,
            lines,
            route,
            body_length=None if chunked else body_length,
            chunked=chunked,
        )

    def _refuse(self, route: CompiledRoute, rule: str) -> None:
        """Out of the route's scope: a 403 naming the kind of rule, never the rule."""
        self.client.proxy.log.info(
            "request refused",
            service=route.service,
            method=self.method.decode("ascii", "replace"),
            rule=rule,
        )
        body = {"error": f"{route.service!r}: {REFUSED[rule]}", "rule": rule}
        self.answer_locally(http_rules.json_response(403, body, keep_alive=self.keep_alive))

    def _build(  # noqa: PLR0917 - the head's parts, as forward() has them
        self,
        route: CompiledRoute,
        injector: Injector,
        target: bytes,
        lines: list[bytes],
        length: int | None,
        body: bytes | None,
    ) -> None:
        """The head, from what the injector makes of it (raises Unavailable as inject
        does); on a route with a minted token, what it was built from and the token it
        carries are kept for a 401."""
        retry = self.retry
        if retry is not None:
            retry.replay = (target, lines, len(lines), length)
        target = injector.inject(self.method, target, lines, body)
        if retry is not None and route.minter is not None:
            retry.token = route.minter.last
        self.head = http_rules.request_head(
            self.method,
            target,
            lines,
            route,
            body_length=None if self.chunked_request else length,
            chunked=self.chunked_request,
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
        self._build(route, route.injector, target, lines, length, body)

    # -- a 401 to a minted token ---------------------------------------------------------

    def token_refused(self) -> bool:
        """The upstream answered 401 to the minted token this request carried: the
        minter drops it; True when the request is to be sent again (once, and only when
        all of it is at hand), and the 401 then never reaches the workload."""
        route, retry = self.route, self.retry
        token = retry.token if retry is not None else None
        if route is None or route.minter is None or retry is None or token is None:
            return False
        retry.token = None
        route.minter.rejected(token)
        resend = (
            not retry.resent
            and self.request_done
            and retry.body is not None
            and retry.replay is not None
            and not self.finished
        )
        self.client.proxy.log.info("access token refused", service=route.service, resent=resend)
        return resend

    def resend(self) -> None:
        """Send the request again, its head built afresh (a new token, waited for if it
        must be fetched) and its kept body after it."""
        route, retry = self.route, self.retry
        if route is None or route.injector is None or retry is None or retry.replay is None:
            raise RuntimeError("nothing to resend")
        retry.resent = True
        self.upstream = None
        target, lines, count, length = retry.replay
        del lines[count:]  # the injector's lines of the first try
        self.body_pending = list(retry.body or ())
        self.client.buffered += sum(map(len, self.body_pending))
        waiting = route.injector.prepare()
        if waiting is not None:
            self.deferred = (target, lines, length, waiting)
        else:
            try:
                self._build(route, route.injector, target, lines, length, None)
            except Unavailable as exc:
                self.unavailable(f"{route.service!r}: {exc}")
                return
        self.client.proxy.borrow(self)

    # -- request body, from the client's parser ----------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.local is not None or self.response_done:
            return  # nobody will read it: an answered request's body is dropped
        framed = http_rules.chunk(data) if self.chunked_request else [data]
        if self.retry is not None:
            self.retry.keep(len(data), framed)
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
            if self.retry is not None:
                self.retry.keep(0, [http_rules.LAST_CHUNK])
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
