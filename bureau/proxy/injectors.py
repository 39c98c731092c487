"""How a route's credential reaches its upstream: one injector per credential kind, chosen
per service when the payload is compiled (``for_route``, from http_rules.compile_routes)
and called for every request forwarded on that route (exchange.py). A new kind is one
class here, its line in ``for_route``, and its wire shape in bureau/wire/service_route.py.

The interface, ``Injector``:

``sets``
    The request header names, lower-case, that the kind writes. A client's own headers by
    these names are dropped as its head is parsed: a workload can neither supply nor
    override them.

``inject(method, target, lines, body) -> target``
    Called once per request, on the event loop, once the route is known and before any
    byte goes upstream; it must not block. ``method`` is as the client sent it; ``target``
    is what follows the route's base path, byte for byte as sent (``/path?query``, never
    decoded: an escaped ``%2F`` stays inside its segment); ``lines`` is the header lines
    going upstream as wire pieces (name, ``b": "``, value, ``b"\\r\\n"``, repeated), without
    Host and body framing (the route's Host goes first and the proxy's own framing last);
    ``body`` is the whole request body when ``body_limit`` asks for it, else None. It
    appends what the upstream needs to ``lines``, as whole lines each ending in CRLF, and
    returns the target to send: the same object, or a new one.

``prepare() -> asyncio.Future[None] | None``
    Asked once per request before ``inject``. None when ``inject`` can run at once:
    always for a static kind, and for a kind that mints tokens while the one it holds is
    fresh. Otherwise a future (not a coroutine) that every request arriving meanwhile is
    handed and waits on, so one fetch serves them all (single flight); the proxy waits at
    most PREPARE_TIMEOUT, without cancelling the future. If it raises ``Unavailable``,
    the request is answered 503 with that message, which must name no secret; anything
    else it raises is a 503 that says only "credential unavailable", and a log line with
    the exception's type, never its message.

``body_limit``
    0 when the head never depends on the body. Otherwise the request body, at most this
    many bytes (a larger one is answered 413), is held until complete, handed to
    ``inject`` and sent with a Content-Length. At most framing.MAX_BUFFERED: past that,
    the proxy stops reading the client before the body is whole.

Whatever an injector holds that was revealed from a Secret stays out of its repr and str
(tests/proxy/test_pure_proxy_repr.py walks every object reachable from a proxy).

How the kinds to come fit, one class each: a query parameter (its escaped ``name=value``
built once, added to the target's query); basic auth (one ``Authorization: Basic`` line
built once, as HeaderInjector builds its lines); a path prefix (built once, returned in
front of the target); AWS SigV4 (signs the method, base path and target, the signed headers
from ``lines`` with the route's Host, the time and the payload hash, and appends
Authorization and the X-Amz-* lines: ``body_limit`` where the service wants the body
hashed, ``UNSIGNED-PAYLOAD`` where it accepts that); OAuth2 (``prepare`` fetches or
refreshes the token in one task for every waiting request, ``inject`` appends the bearer
line). Retrying a request once on a 401 would be the exchange's, and is not part of this
interface yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from bureau.secret import Secret
from bureau.wire.service_route import ServiceRoute

PREPARE_TIMEOUT = 10.0


class Unavailable(Exception):
    """The route cannot be given its credential: a 503 saying why, never with a value."""


class Injector(Protocol):
    """See the module docstring."""

    @property
    def sets(self) -> frozenset[bytes]: ...

    @property
    def body_limit(self) -> int: ...

    def prepare(self) -> asyncio.Future[None] | None: ...

    def inject(
        self, method: bytes, target: bytes, lines: list[bytes], body: bytes | None
    ) -> bytes: ...


class HeaderInjector:
    """``inject_headers`` (with ``auth_scheme`` before an Authorization value): static
    header lines, built once."""

    __slots__ = ("_lines", "sets")
    body_limit = 0

    def __init__(self, route: ServiceRoute, credentials: Mapping[str, Secret]) -> None:
        lines = []
        for header, credential in route.inject_headers.items():
            secret = credentials.get(credential)
            if secret is None:
                raise Unavailable(f"credential {credential} is not provisioned")
            value = secret.reveal()
            if route.auth_scheme and header.lower() == "authorization":
                value = f"{route.auth_scheme} {value}"
            lines.append(f"{header}: {value}\r\n".encode())
        # The lines hold revealed credentials: kept out of repr (a slot, not a field).
        self._lines = b"".join(lines)
        self.sets = frozenset(h.lower().encode() for h in route.inject_headers)

    def __repr__(self) -> str:
        return f"HeaderInjector(sets={sorted(self.sets)})"

    def prepare(self) -> None:
        return None

    def inject(
        self,
        method: bytes,  # noqa: ARG002 - a static kind needs neither the method
        target: bytes,
        lines: list[bytes],
        body: bytes | None,  # noqa: ARG002 - nor the body
    ) -> bytes:
        lines.append(self._lines)
        return target


def for_route(route: ServiceRoute, credentials: Mapping[str, Secret]) -> Injector:
    """The injector a service's route asks for; Unavailable when a credential it names is
    not in the payload, or the route asks for what this proxy does not do yet (the route
    then answers 503 rather than go out without its credential or its scope)."""
    pending = not_done_yet(route)
    if pending:
        raise Unavailable(f"{pending[0]} is not supported by this proxy yet")
    return HeaderInjector(route, credentials)


def not_done_yet(route: ServiceRoute) -> list[str]:
    """The fields of ``route`` the wire carries and this proxy does not honour yet."""
    fields = {
        "allow": route.allow is not None,
        "deny": bool(route.deny),
        "inject_query": bool(route.inject_query),
        "basic_auth": route.basic_auth is not None,
        "path_prefix": route.path_prefix is not None,
        "aws_sigv4": route.aws_sigv4 is not None,
        "oauth2": route.oauth2 is not None,
    }
    return [name for name, present in fields.items() if present]
