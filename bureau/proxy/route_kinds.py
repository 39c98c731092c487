"""What a service's route does besides forwarding, compiled once from its payload entry:
its scope (``scope_of``); its injector (the one kind it uses, or a Chain of them in the
order each must see the request: static headers, query, path prefix, then the authorizing
kind, so that SigV4 signs what the others put in); its response cleaning; and, for a
route whose token the proxy mints, the minter a 401 goes back to.

Responses are cleaned on every route that injects a credential (``cleans``), the
built-in ``matrix`` route and header-only routes included: upstreams echo what they are
sent (a debug endpoint, an error quoting the request, a token in a redirect), and the
workload must never learn a secret the proxy holds or derived (injected values, minted
tokens, signing keys). A route that injects nothing passes responses as they come.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bureau.proxy.aws_injector import SigV4Injector
from bureau.proxy.cleaning import Cleaner
from bureau.proxy.injectors import (
    BasicInjector,
    Chain,
    HeaderInjector,
    Injector,
    LinesInjector,
    PathPrefixInjector,
    QueryInjector,
    path_escaped,
    revealed,
)
from bureau.proxy.oauth2_injector import OAuth2Injector
from bureau.proxy.scope import Scope
from bureau.secret import Secret
from bureau.wire.service_route import ServiceRoute, path_prefix_names

# Where responses are cleaned, the upstream is asked not to compress them, so that the
# proxy sees the text it cleans.
IDENTITY = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class RouteKinds:
    injector: Injector
    cleaner: Cleaner | None  # None: responses pass as they come
    minter: OAuth2Injector | None  # the route's token minter, for a 401


def cleans(route: ServiceRoute) -> bool:
    return bool(
        route.inject_headers
        or route.inject_query
        or route.path_prefix is not None
        or route.basic_auth is not None
        or route.aws_sigv4 is not None
        or route.oauth2 is not None
    )


def scope_of(route: ServiceRoute) -> Scope | None:
    """The route's allow and deny rules; None when it has none (nothing to check)."""
    scope = Scope.parse(None if route.allow is None else list(route.allow), list(route.deny))
    return None if scope.unrestricted else scope


def compile_kinds(
    route: ServiceRoute, credentials: Mapping[str, Secret], *, host: str, base_path: str
) -> RouteKinds:
    """Raises injectors.Unavailable when a credential the route names is not in the
    payload (the route then answers 503)."""
    cleaner = Cleaner(secrets(route, credentials)) if cleans(route) else None
    parts: list[Injector] = []
    if route.inject_headers:
        # The identity line rides with the header lines: a header-only route (the most
        # common, and the matrix route) stays one static injector, no Chain.
        parts.append(HeaderInjector(route, credentials, also=IDENTITY))
    elif cleaner is not None:
        parts.append(LinesInjector(IDENTITY))
    if route.inject_query:
        parts.append(QueryInjector(route, credentials))
    if route.path_prefix is not None:
        parts.append(PathPrefixInjector(route.path_prefix, credentials))
    minter = None
    if route.basic_auth is not None:
        parts.append(BasicInjector(route, credentials))
    if route.oauth2 is not None:
        minter = OAuth2Injector(route.oauth2, credentials, cleaner)
        parts.append(minter)
    if route.aws_sigv4 is not None:
        parts.append(SigV4Injector(route.aws_sigv4, credentials, host, base_path))
    injector = parts[0] if len(parts) == 1 else Chain(parts)
    return RouteKinds(injector, cleaner, minter)


def secrets(route: ServiceRoute, credentials: Mapping[str, Secret]) -> list[bytes]:
    """What response cleaning hides on ``route``: every credential its requests carry
    upstream, what is derived from them (the Basic pair as sent), and the secrets that
    never leave the proxy but could be echoed all the same (the AWS secret key, OAuth's
    client secret and refresh token). Not the OAuth client ID: an identifier the
    resource server may well name in its answers, never sent to it by the proxy.
    Minted access tokens are added as they come (OAuth2Injector)."""
    names = [*route.inject_headers.values(), *route.inject_query.values()]
    values = []
    for name in path_prefix_names(route.path_prefix or ""):
        names.append(name)
        # As the path carries it (scrub.spellings escapes every reserved character).
        values.append(path_escaped(revealed(credentials, name)).encode())
    if route.basic_auth is not None:
        basic = route.basic_auth
        names += [basic.username, basic.password]
        pair = f"{revealed(credentials, basic.username)}:{revealed(credentials, basic.password)}"
        values.append(pair.encode())
    if route.aws_sigv4 is not None:
        names += sorted(route.aws_sigv4.names())
    if route.oauth2 is not None:
        oauth = route.oauth2
        names += [oauth.client_secret, *([oauth.refresh_token] if oauth.refresh_token else [])]
    return [revealed(credentials, n).encode() for n in dict.fromkeys(names)] + values
