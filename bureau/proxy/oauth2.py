"""Access tokens the proxy mints for itself (the ``oauth2`` credential kind): the
client-credentials grant, or the refresh-token grant, against the service's token URL.

One ``TokenSource`` per route holds the current access token in memory and decides, per
request, whether it can be used at once (``ready``) or the request must wait for a fetch
(``fetch``, one task for every request waiting: single flight). The token is refreshed
shortly before it expires (a quarter of its lifetime, at most 30 s early). When the token
endpoint fails, the token held is used for as long as it is valid, and the endpoint is
asked again after a backoff (1 s doubling, at most 30 s); a request with no valid token
meanwhile is refused with a short reason (the injector answers 503). A refresh token the
server rotates is replaced in memory by the new one. Nothing here holding a secret shows it
in repr; error messages name the endpoint and the OAuth error code, never a value.

The token endpoint is spoken to with a small HTTP/1.1 client on asyncio streams and llhttp
(the proxy's own parser): one POST, ``Connection: close``, an answer of at most 64 KiB.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import httptools

from bureau.proxy.injectors import Unavailable

MAX_ANSWER = 64 * 1024
FETCH_TIMEOUT = 10.0
EARLY_REFRESH_CAP = 30.0
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 30.0
# Used when the server says nothing of expiry (RFC 6749 5.1 makes expires_in optional):
# long enough not to hammer it, short enough that a revoked token is not kept for long.
DEFAULT_LIFETIME = 300.0


class TokenUnavailable(Unavailable):
    """No valid access token: the message says why without any value (the request
    waiting for one is answered 503 with it)."""


@dataclass(frozen=True)
class Grant:
    """How to ask for a token. Secrets are bytes kept out of repr."""

    token_url: str
    client_id: str = field(repr=False)  # a credential like the others, if no secret
    client_secret: bytes = field(repr=False)
    refresh_token: bytes | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    client_auth: str = "basic"  # or "post"

    @property
    def kind(self) -> str:
        return "refresh_token" if self.refresh_token is not None else "client_credentials"


@dataclass(frozen=True)
class Minted:
    access_token: bytes = field(repr=False)
    lifetime: float
    refresh_token: bytes | None = field(default=None, repr=False)


def _form(grant: Grant, refresh_token: bytes | None) -> tuple[bytes, list[tuple[str, str]]]:
    fields: list[tuple[str, bytes]] = [("grant_type", grant.kind.encode())]
    if refresh_token is not None:
        fields.append(("refresh_token", refresh_token))
    if grant.scopes:
        fields.append(("scope", " ".join(grant.scopes).encode()))
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Accept", "application/json"),
    ]
    if grant.client_auth == "post":
        fields += [("client_id", grant.client_id.encode()), ("client_secret", grant.client_secret)]
    else:
        # RFC 6749 2.3.1: each part form-encoded before they are joined.
        user = quote(grant.client_id, safe="").encode()
        pair = user + b":" + quote(grant.client_secret, safe="").encode()
        headers.append(("Authorization", "Basic " + base64.b64encode(pair).decode()))
    body = b"&".join(
        quote(k, safe="").encode() + b"=" + quote(v, safe="").encode() for k, v in fields
    )
    return body, headers


class _Answer:
    """llhttp callbacks collecting one response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > MAX_ANSWER:
            raise TokenUnavailable("the token endpoint's answer is too large")

    def on_message_complete(self) -> None:
        self.done = True


async def _post(url: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TokenUnavailable("the token URL is not an http(s) URL")
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    port = parts.port or (443 if tls else 80)
    reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=tls)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers]
        head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        received = 0
        while not answer.done:
            chunk = await reader.read(16384)
            if not chunk:
                break
            received += len(chunk)
            if received > MAX_ANSWER + 16384:
                raise TokenUnavailable("the token endpoint's answer is too large")
            parser.feed_data(chunk)
        if not answer.done:
            raise TokenUnavailable("the token endpoint closed before answering")
        return parser.get_status_code(), bytes(answer.body)
    except httptools.HttpParserError:
        raise TokenUnavailable("the token endpoint's answer is not HTTP") from None
    finally:
        writer.close()


def _minted(status: int, body: bytes) -> Minted:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status != 200:
        code = data.get("error") if isinstance(data, dict) else None
        reason = f" ({code})" if isinstance(code, str) and code.isascii() and len(code) < 64 else ""
        raise TokenUnavailable(f"the token endpoint answered {status}{reason}")
    if not isinstance(data, dict):
        raise TokenUnavailable("the token endpoint's answer is not a JSON object")
    token = data.get("access_token")
    kind = data.get("token_type")
    if not isinstance(token, str) or not token or not token.isascii():
        raise TokenUnavailable("the token endpoint's answer has no access_token")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise TokenUnavailable("the token endpoint's answer is not a bearer token")
    lifetime = data.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = DEFAULT_LIFETIME
    refresh = data.get("refresh_token")
    return Minted(
        token.encode(),
        float(lifetime),
        refresh.encode() if isinstance(refresh, str) and refresh.isascii() else None,
    )


async def fetch_token(grant: Grant, refresh_token: bytes | None) -> Minted:
    """One token request; TokenUnavailable for anything but a bearer token."""
    body, headers = _form(grant, refresh_token)
    try:
        async with asyncio.timeout(FETCH_TIMEOUT):
            status, answer = await _post(grant.token_url, body, headers)
    except TimeoutError:
        raise TokenUnavailable("the token endpoint did not answer in time") from None
    except OSError as exc:
        raise TokenUnavailable(f"the token endpoint is unreachable ({exc.strerror})") from None
    return _minted(status, answer)


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class TokenSource:
    __slots__ = (
        "_backoff",
        "_clock",
        "_expires",
        "_fetch",
        "_grant",
        "_inflight",
        "_refresh_at",
        "_refresh_token",
        "_retry_at",
        "_token",
        "failure",
    )

    def __init__(
        self,
        grant: Grant,
        *,
        fetch: Callable[[Grant, bytes | None], asyncio.Future[Minted] | asyncio.Task[Minted]]
        | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._grant = grant
        self._fetch = fetch or (lambda g, r: asyncio.ensure_future(fetch_token(g, r)))
        self._clock = clock
        self._token: bytes | None = None
        self._expires = self._refresh_at = self._retry_at = 0.0
        self._refresh_token = grant.refresh_token
        self._backoff = BACKOFF_FIRST
        self._inflight: asyncio.Future[None] | None = None
        self.failure = ""  # why the last fetch failed, for logs; never a value

    def __repr__(self) -> str:
        return f"TokenSource({self._grant.kind}, {self._grant.token_url})"

    def token(self) -> bytes | None:
        """The access token to send now, if one is valid."""
        return self._token if self._token is not None and self._clock() < self._expires else None

    def ready(self) -> asyncio.Future[None] | None:
        """None when ``token()`` can be used at once (a refresh may start behind it);
        otherwise a future to wait on, which raises TokenUnavailable if none comes."""
        now = self._clock()
        valid = self._token is not None and now < self._expires
        if valid and now < self._refresh_at:
            return None
        if self._inflight is None and now >= self._retry_at:
            self._inflight = asyncio.ensure_future(self._refresh())
            # A refresh nobody waits for may fail unseen: its failure is kept in
            # ``failure``, and retrieving it here keeps asyncio from logging it.
            self._inflight.add_done_callback(_seen)
        if valid:
            return None  # refreshed behind this request, or the endpoint is backing off
        if self._inflight is not None:
            return self._inflight
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(TokenUnavailable(self.failure or "no access token"))
        return failed

    @property
    def refreshing(self) -> asyncio.Future[None] | None:
        """The fetch under way, if any (what every waiting request shares)."""
        return self._inflight

    def rejected(self, token: bytes) -> None:
        """The upstream refused ``token`` (401): if it is still the one held, drop it so
        that the next request fetches a new one."""
        if token == self._token:
            self._token = None

    async def _refresh(self) -> None:
        try:
            minted = await self._fetch(self._grant, self._refresh_token)
        except TokenUnavailable as exc:
            self.failure = str(exc)
            self._retry_at = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_CAP)
            raise
        finally:
            self._inflight = None
        now = self._clock()
        self._token = minted.access_token
        self._expires = now + minted.lifetime
        self._refresh_at = self._expires - min(EARLY_REFRESH_CAP, minted.lifetime / 4)
        if minted.refresh_token is not None and self._refresh_token is not None:
            self._refresh_token = minted.refresh_token
        self._backoff = BACKOFF_FIRST
        self._retry_at = 0.0
        self.failure = ""

    @property
    def refresh_token(self) -> bytes | None:
        """The refresh token held now (the server may have rotated the payload's)."""
        return self._refresh_token

    def close(self) -> asyncio.Future[None] | None:
        """Cancel the fetch under way, if any; returned for the caller to wait on."""
        inflight = self._inflight
        if inflight is not None:
            inflight.cancel()
        return inflight
