"""``oauth2``: a bearer access token the proxy mints for itself (oauth2.py's TokenSource:
client credentials or a refresh token, fetched once for every request waiting, refreshed
before it expires) and injects as ``Authorization: Bearer``. The workload never holds it:
every token minted becomes a needle of the route's response cleaning before it is sent.

When the upstream answers 401 to a request that carried a minted token, the exchange
(exchange.py) tells ``rejected`` which token it was, so that the next request fetches a
fresh one, and resends the request once when it can (a bodiless one, or one whose body it
kept: exchange.RETRY_BODY_LIMIT)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bureau.proxy.cleaning import Cleaner
from bureau.proxy.injectors import Unavailable, revealed
from bureau.proxy.oauth2 import Grant, TokenSource
from bureau.secret import Secret
from bureau.wire.credential_kinds import OAuth2


class OAuth2Injector:
    __slots__ = ("_cleaner", "_seen", "last", "source")
    sets = frozenset({b"authorization"})
    body_limit = 0

    def __init__(
        self,
        oauth: OAuth2,
        credentials: Mapping[str, Secret],
        cleaner: Cleaner | None,
    ) -> None:
        refresh = revealed(credentials, oauth.refresh_token) if oauth.refresh_token else None
        grant = Grant(
            token_url=oauth.token_url,
            client_id=revealed(credentials, oauth.client_id),
            client_secret=revealed(credentials, oauth.client_secret).encode(),
            refresh_token=refresh.encode() if refresh is not None else None,
            scopes=oauth.scopes,
            client_auth=oauth.client_auth,
        )
        self.source = TokenSource(grant)
        self._cleaner = cleaner
        self._seen: bytes | None = None
        # The token the last inject put in: what the exchange remembers for a 401.
        self.last: bytes | None = None

    def __repr__(self) -> str:
        return f"OAuth2Injector({self.source!r})"

    def prepare(self) -> asyncio.Future[None] | None:
        return self.source.ready()

    def inject(
        self,
        method: bytes,  # noqa: ARG002 - a bearer token does not depend on the request
        target: bytes,
        lines: list[bytes],
        body: bytes | None,  # noqa: ARG002 - nor on its body
    ) -> bytes:
        token = self.source.token()
        if token is None:
            # Refused by the upstream (or expired) between prepare and now.
            raise Unavailable("no valid access token")
        if token is not self._seen:
            self._seen = token
            if self._cleaner is not None:
                self._cleaner.minted(token, self.source.refresh_token)
        self.last = token
        lines.append(b"Authorization: Bearer " + token + b"\r\n")
        return target

    def rejected(self, token: bytes) -> None:
        self.source.rejected(token)

    def close(self) -> asyncio.Future[None] | None:
        return self.source.close()
