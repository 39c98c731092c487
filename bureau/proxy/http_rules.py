"""What bureau-proxy sends where, as bytes: routes compiled once from the payload, and the
request and response heads built from what a parser saw. Pure: no sockets, no clock.

What a client sends is never trusted with credentials: Authorization, Proxy-Authorization,
Cookie, the route's strip_headers and every header the route's injector sets are dropped
before its credential goes in (injectors.py; which kinds a route uses, route_kinds.py).
Hop-by-hop headers, the ones a Connection header lists, Host and the body framing are
dropped both ways; the proxy frames bodies itself, so no framing header of one side can
desynchronise the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from bureau.proxy import injectors, route_kinds
from bureau.proxy.cleaning import Cleaner
from bureau.proxy.injectors import Injector
from bureau.proxy.oauth2_injector import OAuth2Injector
from bureau.proxy.scope import Scope
from bureau.wire.proxy_payload import ProxyPayload

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
CLIENT_CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"cookie"})
# Framing is the proxy's own on each side; Host names the upstream, never what the client said.
REQUEST_DROP = HOP_BY_HOP | CLIENT_CREDENTIAL_HEADERS | {b"host", b"content-length"}
RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Upstream:
    """Where a route's connections go."""

    host: str
    port: int
    tls: bool

    # The pool's dict key: a str caches its hash, which a dataclass would recompute.
    key: str


@dataclass(frozen=True)
class CompiledRoute:
    service: str
    upstream: Upstream
    host_header: bytes
    base_path: bytes
    drop: frozenset[bytes]
    # How the route's credential goes in (injectors.py); None when it cannot (a credential
    # the payload lacks), and ``unavailable`` says why.
    injector: Injector | None
    unavailable: str | None
    # What the route may be used for (None: anything), whether its responses are cleaned
    # (None: not), and the minter of its tokens (a 401 is retried): route_kinds.py.
    scope: Scope | None = None
    cleaner: Cleaner | None = None
    minter: OAuth2Injector | None = None


def compile_routes(payload: ProxyPayload) -> dict[str, CompiledRoute]:
    routes = {}
    for service, route in payload.services.items():
        parts = urlsplit(route.upstream_url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        default_port = parts.port is None or parts.port == (443 if tls else 80)
        host_for_header = f"[{host}]" if ":" in host else host
        host_header = host_for_header if default_port else f"{host_for_header}:{port}"
        drop = REQUEST_DROP | {h.lower().encode() for h in route.strip_headers}
        base_path = parts.path.rstrip("/")
        kinds = None
        unavailable = None
        try:
            kinds = route_kinds.compile_kinds(
                route, payload.credentials, host=host_header, base_path=base_path
            )
            drop |= kinds.injector.sets
        except injectors.Unavailable as exc:
            unavailable = str(exc)
        routes[service] = CompiledRoute(
            service=service,
            upstream=Upstream(host, port, tls, f"{parts.scheme}://{host_header}"),
            host_header=host_header.encode(),
            base_path=base_path.encode(),
            drop=frozenset(drop),
            injector=kinds.injector if kinds else None,
            unavailable=unavailable,
            # Checked even when the credential is unavailable: a refusal stays a refusal.
            scope=route_kinds.scope_of(route),
            cleaner=kinds.cleaner if kinds else None,
            minter=kinds.minter if kinds else None,
        )
    return routes


def split_target(url: bytes) -> tuple[bytes, bytes] | None:
    """``/http/<service>/<rest>?<query>`` -> (service, ``/<rest>?<query>``), byte for byte:
    decoding and re-encoding would turn an escaped ``%2F`` into a path separator. None for
    anything else, including absolute URIs: a client never picks the host."""
    if not url.startswith(b"/http/"):
        return None
    path, sep, query = url.partition(b"?")
    segments = path.split(b"/", 3)
    service = segments[2]
    if not service:
        return None
    rest = segments[3] if len(segments) > 3 else b""
    return service, b"/" + rest + sep + query


def request_head(
    method: bytes,
    target: bytes,
    lines: list[bytes],
    route: CompiledRoute,
    *,
    body_length: int | None,
    chunked: bool,
) -> bytes:
    """The upstream request head: the route's Host, the header lines (the client's kept
    ones, name, ": ", value, CRLF, ..., then the injector's), and the proxy's own framing
    for the body: the client's Content-Length, or chunked for a chunked body."""
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n\r\n"
    elif body_length is not None:
        framing = b"Content-Length: %d\r\n\r\n" % body_length
    else:
        framing = b"\r\n"
    start = [method, b" ", route.base_path, target, b" HTTP/1.1\r\nHost: ", route.host_header]
    return b"".join([*start, b"\r\n", *lines, framing])


def drop_listed(lines: list[bytes], connection_values: list[bytes]) -> list[bytes]:
    """``lines`` is name, ": ", value, CRLF repeated; drop the headers a Connection header
    names (it makes them hop-by-hop)."""
    listed = {t.strip().lower() for v in connection_values for t in v.split(b",")}
    out: list[bytes] = []
    for i in range(0, len(lines), 4):
        if lines[i].lower() not in listed:
            out += lines[i : i + 4]
    return out


def response_head(
    status: int, reason: bytes, lines: list[bytes], framing: bytes, keep_alive: bool
) -> bytes:
    """The client's response head: the upstream's kept header lines, then the proxy's own
    framing (a Content-Length or Transfer-Encoding line, or nothing for a body that ends
    with the connection)."""
    status_line = b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, "").encode())
    tail = b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"
    return b"".join([status_line, *lines, framing, tail])


def json_response(status: int, body: object, *, keep_alive: bool, head_only: bool = False) -> bytes:
    data = json.dumps(body).encode()
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        status,
        REASONS.get(status, "").encode(),
        len(data),
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + (b"" if head_only else data)


def error_response(status: int, message: str, *, keep_alive: bool) -> bytes:
    return json_response(status, {"error": message}, keep_alive=keep_alive)


def chunk(data: bytes) -> list[bytes]:
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"
