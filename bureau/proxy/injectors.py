"""How a route's credential reaches its upstream: one injector per credential kind, chosen
per service when the payload is compiled (route_kinds.py, from http_rules.compile_routes)
and called for every request forwarded on that route (exchange.py). A new kind is one
class, its line in route_kinds.py, and its wire shape in bureau/wire/.

The interface, ``Injector``:

``sets``
    The request header names, lower-case, that the kind writes. A client's own headers by
    these names are dropped as its head is parsed: a workload can neither supply nor
    override them.

``inject(method, target, lines, body) -> target``
    Called once per request, on the event loop, once the route is known and its scope
    checked, before any byte goes upstream; it must not block. ``method`` is as the client
    sent it; ``target`` is what follows the route's base path, byte for byte as sent
    (``/path?query``, never decoded: an escaped ``%2F`` stays inside its segment), or as
    a kind before it in a Chain left it; ``lines`` is the header lines going upstream as
    wire pieces (name, ``b": "``, value, ``b"\\r\\n"``, repeated), without Host and body
    framing (the route's Host goes first and the proxy's own framing last); ``body`` is
    the whole request body when ``body_limit`` asks for it, else None. It appends what the
    upstream needs to ``lines``, as whole lines each ending in CRLF, and returns the
    target to send: the same object, or a new one. It may raise ``Unavailable`` (a 503).

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

``close() -> asyncio.Future[None] | None``
    The proxy is stopping: end what the kind runs in the background (a token fetch), and
    return what is still finishing, for the proxy to wait on.

Whatever an injector holds that was revealed from a Secret stays out of its repr and str
(tests/proxy/test_pure_proxy_repr.py walks every object reachable from a proxy).

The kinds, one class each: HeaderInjector, QueryInjector, BasicInjector and
PathPrefixInjector here (static: built once, never waiting), SigV4Injector (aws_injector.py:
signs each request, holding the body where the service wants it hashed) and OAuth2Injector
(oauth2_injector.py: mints its token, single flight). A route with one kind gets that
injector; a route with several gets a Chain of them, so the header-only route runs exactly
what it ran before the other kinds existed.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from typing import Protocol
from urllib.parse import quote, unquote_to_bytes

from bureau.secret import Secret
from bureau.wire.service_route import ServiceRoute

PREPARE_TIMEOUT = 10.0
# What RFC 3986 lets a path segment hold unescaped (pchar, less "%"): a credential put in
# a path is escaped where it holds anything else, and stays as it is otherwise (a
# Telegram bot token's ":" included).
_PCHAR = "!$&'()*+,;=:@-._~"


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

    def close(self) -> asyncio.Future[None] | None: ...


def path_escaped(value: str) -> str:
    return quote(value, safe=_PCHAR)


def revealed(credentials: Mapping[str, Secret], name: str) -> str:
    """A credential's value, or Unavailable naming the credential (never a value)."""
    secret = credentials.get(name)
    if secret is None:
        raise Unavailable(f"credential {name} is not provisioned")
    return secret.reveal()


class Static:
    """What every static kind shares: nothing to wait for, no body, nothing to close."""

    __slots__ = ()
    body_limit = 0

    def prepare(self) -> None:
        return None

    def close(self) -> None:
        return None


class FixedLines(Static):
    """A static kind whose whole work is header lines built once (``_lines``)."""

    __slots__ = ("_lines",)
    _lines: bytes  # revealed credentials, when they are: kept out of every repr

    def inject(
        self,
        method: bytes,  # noqa: ARG002 - a static kind needs neither the method
        target: bytes,
        lines: list[bytes],
        body: bytes | None,  # noqa: ARG002 - nor the body
    ) -> bytes:
        lines.append(self._lines)
        return target


class HeaderInjector(FixedLines):
    """``inject_headers`` (with ``auth_scheme`` before an Authorization value): static
    header lines, built once."""

    __slots__ = ("sets",)

    def __init__(
        self,
        route: ServiceRoute,
        credentials: Mapping[str, Secret],
        also: Mapping[str, str] | None = None,
    ) -> None:
        """``also``: header lines that are no credential (``Accept-Encoding: identity``
        where responses are cleaned), set with the credentials in one append."""
        lines = [f"{k}: {v}\r\n".encode() for k, v in (also or {}).items()]
        for header, credential in route.inject_headers.items():
            value = revealed(credentials, credential)
            if route.auth_scheme and header.lower() == "authorization":
                value = f"{route.auth_scheme} {value}"
            lines.append(f"{header}: {value}\r\n".encode())
        # The lines hold revealed credentials: kept out of repr (a slot, not a field).
        self._lines = b"".join(lines)
        self.sets = frozenset(h.lower().encode() for h in [*route.inject_headers, *(also or {})])

    def __repr__(self) -> str:
        return f"HeaderInjector(sets={sorted(self.sets)})"


class LinesInjector(FixedLines):
    """Fixed header lines that are no credential (``Accept-Encoding: identity`` where
    responses are cleaned), replacing the client's of the same names."""

    __slots__ = ("sets",)

    def __init__(self, lines: Mapping[str, str]) -> None:
        self._lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in lines.items())
        self.sets = frozenset(k.lower().encode() for k in lines)

    def __repr__(self) -> str:
        return f"LinesInjector(sets={sorted(self.sets)})"


def _parameter_name(item: bytes) -> bytes:
    """A query item's parameter name as a server reads it: decoded, in lower case, so
    that neither ``api%5Fkey`` nor ``API_KEY`` stands beside the injected ``api_key``."""
    name = item.split(b"=", 1)[0]
    if b"%" in name or b"+" in name:
        name = unquote_to_bytes(name.replace(b"+", b" "))
    return name.lower()


class QueryInjector(Static):
    """``inject_query``: ``name=value`` pairs, escaped once, added to the target's query;
    any parameter of the same name the workload sent is dropped first."""

    __slots__ = ("_names", "_pairs")
    sets: frozenset[bytes] = frozenset()

    def __init__(self, route: ServiceRoute, credentials: Mapping[str, Secret]) -> None:
        pairs = []
        for parameter, credential in route.inject_query.items():
            value = quote(revealed(credentials, credential), safe="")
            pairs.append(f"{parameter}={value}".encode())
        self._pairs = b"&".join(pairs)
        self._names = frozenset(p.lower().encode() for p in route.inject_query)

    def __repr__(self) -> str:
        return f"QueryInjector({sorted(self._names)})"

    def inject(
        self,
        method: bytes,  # noqa: ARG002 - static
        target: bytes,
        lines: list[bytes],  # noqa: ARG002 - the query is in the target
        body: bytes | None,  # noqa: ARG002 - static
    ) -> bytes:
        path, _, query = target.partition(b"?")
        if not query:
            return path + b"?" + self._pairs
        names = self._names
        kept = [i for i in query.split(b"&") if i and _parameter_name(i) not in names]
        return path + b"?" + b"&".join([*kept, self._pairs])


class BasicInjector(FixedLines):
    """``basic_auth``: one ``Authorization: Basic`` line, built once (RFC 7617)."""

    __slots__ = ()
    sets = frozenset({b"authorization"})

    def __init__(self, route: ServiceRoute, credentials: Mapping[str, Secret]) -> None:
        basic = route.basic_auth
        if basic is None:
            raise ValueError("not a basic_auth route")
        username = revealed(credentials, basic.username)
        if ":" in username:
            # RFC 7617: the user-id cannot hold a colon; the server would split it there.
            raise Unavailable(f"credential {basic.username} holds ':', which basic auth cannot")
        pair = f"{username}:{revealed(credentials, basic.password)}".encode()
        self._lines = b"Authorization: Basic " + base64.b64encode(pair) + b"\r\n"

    def __repr__(self) -> str:
        return "BasicInjector()"


class PathPrefixInjector(Static):
    """``path_prefix``: its ``{NAME}`` placeholders replaced by the credentials, escaped
    for a path, once; put before every target."""

    __slots__ = ("_prefix",)
    sets: frozenset[bytes] = frozenset()

    def __init__(self, prefix: str, credentials: Mapping[str, Secret]) -> None:
        out, rest = [], prefix
        while "{" in rest:
            literal, _, tail = rest.partition("{")
            name, _, rest = tail.partition("}")
            out += [literal, path_escaped(revealed(credentials, name))]
        self._prefix = ("".join(out) + rest).encode()

    def __repr__(self) -> str:
        return "PathPrefixInjector()"

    def inject(
        self,
        method: bytes,  # noqa: ARG002 - static
        target: bytes,
        lines: list[bytes],  # noqa: ARG002 - the prefix is in the target
        body: bytes | None,  # noqa: ARG002 - static
    ) -> bytes:
        return self._prefix + target


class Chain:
    """Several kinds on one route, in order: each sees the target and lines the ones
    before it left (a signing kind comes last, and signs them all). At most one of them
    waits (the route's one authorizing kind) and at most one holds the body."""

    __slots__ = ("_dynamic", "_parts", "body_limit", "sets")

    def __init__(self, parts: Sequence[Injector]) -> None:
        self._parts = tuple(parts)
        self.sets = frozenset().union(*(p.sets for p in parts))
        self.body_limit = max(p.body_limit for p in parts)
        # The kinds that may wait or hold something open; the static ones never do.
        self._dynamic = tuple(p for p in parts if not isinstance(p, Static))

    def __repr__(self) -> str:
        return f"Chain({', '.join(type(p).__name__ for p in self._parts)})"

    def prepare(self) -> asyncio.Future[None] | None:
        for part in self._dynamic:
            waiting = part.prepare()
            if waiting is not None:
                return waiting
        return None

    def inject(self, method: bytes, target: bytes, lines: list[bytes], body: bytes | None) -> bytes:
        for part in self._parts:
            target = part.inject(method, target, lines, body)
        return target

    def close(self) -> asyncio.Future[None] | None:
        # Every kind is closed; at most one on a route (its authorizing kind) runs
        # anything in the background.
        closing = [f for f in [p.close() for p in self._dynamic] if f is not None]
        return closing[0] if closing else None
