"""The proxy's HTTP surface: ``GET /health`` and ``/http/<service>/<path>`` forwarded to the
service's upstream with its credentials injected.

What a client sends is never trusted with credentials: Authorization, Proxy-Authorization,
Cookie, the route's strip_headers and every header the route injects are removed before
the configured values go in. Redirects come back as they are, never followed (a followed
redirect would carry the injected headers to wherever it points). Bodies stream both ways.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from bureau.proxy_payload import ProxyPayload

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
CLIENT_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
CHUNK = 64 * 1024


def _connection_listed(headers: Any) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", []):
        listed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return listed


def upstream_request_headers(
    client_headers: Any, payload: ProxyPayload, service: str
) -> CIMultiDict[str]:
    """Client headers minus everything credential-like or connection-level, plus the
    route's injected credentials. Raises KeyError(credential name) when one is missing."""
    route = payload.services[service]
    drop = HOP_BY_HOP | CLIENT_CREDENTIAL_HEADERS | {"host"} | _connection_listed(client_headers)
    drop |= {h.lower() for h in route.strip_headers}
    drop |= {h.lower() for h in route.inject_headers}
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in client_headers.items() if k.lower() not in drop
    )
    for header, credential in route.inject_headers.items():
        value = payload.credentials[credential].reveal()
        if route.auth_scheme and header.lower() == "authorization":
            value = f"{route.auth_scheme} {value}"
        out[header] = value
    return out


def response_headers(upstream_headers: Any) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | _connection_listed(upstream_headers)
    return CIMultiDict((k, v) for k, v in upstream_headers.items() if k.lower() not in drop)


def upstream_target(raw_path: str) -> str:
    """``/http/<service>/<rest>?<query>`` -> ``/<rest>?<query>``, byte for byte: decoding
    and re-encoding would turn an escaped ``%2F`` into a path separator."""
    path, sep, query = raw_path.partition("?")
    segments = path.split("/", 3)
    rest = segments[3] if len(segments) > 3 else ""
    return f"/{rest}{sep}{query}"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Forwarder:
    def __init__(
        self,
        payload: ProxyPayload,
        session: aiohttp.ClientSession,
        log: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._payload = payload
        self._session = session
        self._log = log
        self._clock = clock
        self._expires = payload.expires_epoch

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/http/{service}/{path:.*}", self.forward)
        app.router.add_route("*", "/http/{service}", self.forward)
        return app

    async def health(self, request: web.Request) -> web.Response:
        del request
        return web.json_response(
            {
                "status": "ok",
                "principal": self._payload.principal,
                "services": sorted(self._payload.services),
            }
        )

    async def forward(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        route = self._payload.services.get(service)
        if route is None:
            return _error(404, f"unknown service {service!r}")
        if self._expires is not None and self._clock() >= self._expires:
            return _error(503, "credentials expired")
        try:
            headers = upstream_request_headers(request.headers, self._payload, service)
        except KeyError as missing:
            return _error(503, f"credential {missing.args[0]} is not provisioned")
        url = URL(route.upstream_url + upstream_target(request.raw_path), encoded=True)
        started = time.monotonic()
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                allow_redirects=False,
                data=request.content if request.body_exists else None,
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=response_headers(upstream.headers),
                )
                try:
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_chunked(CHUNK):
                        await response.write(chunk)
                    await response.write_eof()
                except ConnectionResetError:
                    # The client went away mid-response: its business, not the upstream's.
                    self._log.debug("client went away", service=service)
                    return response
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            self._log.warning("upstream unreachable", service=service, error=type(exc).__name__)
            if "response" in locals() and response.prepared:
                raise  # headers already sent: the client sees a cut connection
            return _error(502, f"upstream of {service!r} unreachable")
        self._log.debug(
            "forwarded",
            service=service,
            method=request.method,
            status=upstream.status,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response
