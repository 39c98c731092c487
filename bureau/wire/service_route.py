"""One service a principal's proxy may reach (OURS, WIRE.md "Service routes"): where it
is, what it may be used for, and how each credential goes in. Pure.

A route names credentials, never holds them: every value below that is a credential is
the *name* of one in the bundle (``referenced_credentials``), refused at provision and
again at load when the bundle lacks it.

    {"upstream_url": "https://api.github.com",
     "inject_headers": {"Authorization": "GITHUB_TOKEN"}, "auth_scheme": "Bearer",
     "strip_headers": ["Cookie"],
     "allow": ["GET /repos/acme/**"], "deny": ["* /repos/acme/secrets/**"],
     "inject_query": {"api_key": "KEY"},
     "basic_auth": {"username": "USER", "password": "PASS"},
     "path_prefix": "/bot{TELEGRAM_TOKEN}",
     "aws_sigv4": {"access_key_id": "AK", "secret_access_key": "SK",
                   "session_token": "ST", "region": "eu-west-1", "service": "s3"},
     "oauth2": {"grant": "client_credentials", "token_url": "https://idp/token",
                "client_id": "CID", "client_secret": "CSECRET", "scopes": ["read"],
                "client_auth": "basic"}}

At most one of ``basic_auth``, ``aws_sigv4`` and ``oauth2`` (each writes Authorization),
and then ``inject_headers`` may not set Authorization. Every field but ``upstream_url`` is
optional; ``to_json`` writes only those set, so a route's JSON (and a bundle's binding
digest over it) is what it was before these kinds existed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bureau.errors import InputError
from bureau.wire.credential_kinds import AwsSigV4, BasicAuth, OAuth2
from bureau.wire.route_checks import (
    HEADER_NAME,
    SERVICE_NAME,
    check_inject_headers,
    check_upstream_url,
    credential_name,
    known_fields,
    valid_credential_name,
)
from bureau.wire.scope_rules import Rule, RuleError

_QUERY_NAME = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PATH_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*")


def path_prefix_names(prefix: str) -> list[str]:
    return _PLACEHOLDER.findall(prefix)


def _check_path_prefix(prefix: object, where: str) -> str:
    key = "path_prefix"
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
        raise InputError(where, key, "expected a path starting with / and not ending with /")
    for name in path_prefix_names(prefix):
        if not valid_credential_name(name):
            raise InputError(where, key, f"{{{name}}} is not a credential name")
    literal = _PLACEHOLDER.sub("", prefix)
    if not _PATH_LITERAL.fullmatch(literal) or "{" in literal or "}" in literal:
        raise InputError(where, key, "holds a character a path may not (? # space { })")
    if any(s in (".", "..") for s in prefix.split("/")):
        raise InputError(where, key, "holds a dot segment")
    return prefix


def _rules(data: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    rules = data.get(key)
    if rules is None:
        return None
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise InputError(where, key, 'expected a list of "<METHOD> <path pattern>"')
    for i, rule in enumerate(rules):
        try:
            Rule.parse(rule)
        except RuleError as exc:
            raise InputError(where, f"{key}[{i}]", str(exc)) from None
    return tuple(rules)


@dataclass(frozen=True, kw_only=True)
class RouteKinds:
    """Scope and the credential kinds besides injected headers: what a bundle's route and
    a template's proxy service both carry (keyword-only, after each one's own fields)."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()
    inject_query: dict[str, str] = field(default_factory=dict)
    basic_auth: BasicAuth | None = None
    path_prefix: str | None = None
    aws_sigv4: AwsSigV4 | None = None
    oauth2: OAuth2 | None = None


KIND_FIELDS = tuple(RouteKinds.__dataclass_fields__)


def parse_kinds(data: dict[str, Any], inject: dict[str, Any], where: str) -> dict[str, Any]:
    """The scope and credential kinds of a route (or a template's proxy service), as the
    keyword arguments of either: each checked, at most one authorizing kind, and then no
    Authorization among ``inject`` (the injected headers)."""
    query = data.get("inject_query", {})
    if not isinstance(query, dict):
        raise InputError(where, "inject_query", "expected an object of parameter -> name")
    for parameter in query:
        if not _QUERY_NAME.fullmatch(parameter):
            raise InputError(where, f"inject_query.{parameter}", "not a parameter name")
        credential_name(query, parameter, f"{where}: inject_query")
    kinds = [k for k in AUTHORIZING_KINDS if data.get(k) is not None]
    if len(kinds) > 1:
        raise InputError(where, kinds[1], f"at most one of {', '.join(AUTHORIZING_KINDS)}")
    if kinds and any(h.lower() == "authorization" for h in inject):
        raise InputError(where, "inject_headers.Authorization", f"{kinds[0]} sets it")
    prefix = data.get("path_prefix")
    basic, aws, oauth2 = (data.get(k) for k in AUTHORIZING_KINDS)
    return {
        "allow": _rules(data, "allow", where),
        "deny": _rules(data, "deny", where) or (),
        "inject_query": dict(query),
        "basic_auth": None if basic is None else BasicAuth.from_json(basic, f"{where}: basic_auth"),
        "path_prefix": None if prefix is None else _check_path_prefix(prefix, where),
        "aws_sigv4": None if aws is None else AwsSigV4.from_json(aws, f"{where}: aws_sigv4"),
        "oauth2": None if oauth2 is None else OAuth2.from_json(oauth2, f"{where}: oauth2"),
    }


def kinds_json(route: RouteKinds) -> dict[str, Any]:
    """The set kind fields of a route or proxy service, as written."""
    out: dict[str, Any] = {}
    if route.allow is not None:
        out["allow"] = list(route.allow)
    if route.deny:
        out["deny"] = list(route.deny)
    if route.inject_query:
        out["inject_query"] = dict(route.inject_query)
    for key in ("basic_auth", "aws_sigv4", "oauth2"):
        if getattr(route, key) is not None:
            out[key] = getattr(route, key).to_json()
    if route.path_prefix is not None:
        out["path_prefix"] = route.path_prefix
    return out


_ROUTE_FIELDS = frozenset(
    {"upstream_url", "inject_headers", "auth_scheme", "strip_headers", *KIND_FIELDS}
)
AUTHORIZING_KINDS = ("basic_auth", "aws_sigv4", "oauth2")


@dataclass(frozen=True)
class ServiceRoute(RouteKinds):
    upstream_url: str
    inject_headers: dict[str, str] = field(default_factory=dict)
    auth_scheme: str | None = None
    strip_headers: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: object, where: str) -> ServiceRoute:
        data = known_fields(obj, _ROUTE_FIELDS, where)
        url = data.get("upstream_url")
        if not isinstance(url, str):
            raise InputError(where, "upstream_url", "expected a string")
        check_upstream_url(url, where)
        inject = data.get("inject_headers", {})
        if not isinstance(inject, dict):
            raise InputError(where, "inject_headers", "expected an object of header -> name")
        check_inject_headers(inject, where)
        scheme = data.get("auth_scheme")
        if scheme is not None and (
            not isinstance(scheme, str) or not HEADER_NAME.fullmatch(scheme)
        ):
            raise InputError(where, "auth_scheme", "expected a single word such as Bearer")
        strip = data.get("strip_headers", [])
        if not isinstance(strip, list) or not all(
            isinstance(h, str) and HEADER_NAME.fullmatch(h) for h in strip
        ):
            raise InputError(where, "strip_headers", "expected a list of header names")
        route = cls(
            upstream_url=url.rstrip("/"),
            inject_headers=dict(inject),
            auth_scheme=scheme,
            strip_headers=tuple(strip),
            **parse_kinds(data, inject, where),
        )
        if not route.names():
            raise InputError(
                where,
                "inject_headers",
                "no credential to inject (inject_headers, inject_query, basic_auth, "
                "path_prefix, aws_sigv4 or oauth2)",
            )
        return route

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "upstream_url": self.upstream_url,
            "inject_headers": self.inject_headers,
        }
        if self.auth_scheme is not None:
            out["auth_scheme"] = self.auth_scheme
        if self.strip_headers:
            out["strip_headers"] = list(self.strip_headers)
        out.update(kinds_json(self))
        return out

    def names(self) -> set[str]:
        """Every credential this route injects, by name."""
        found = set(self.inject_headers.values()) | set(self.inject_query.values())
        found |= set(path_prefix_names(self.path_prefix or ""))
        for kind in (self.basic_auth, self.aws_sigv4, self.oauth2):
            if kind is not None:
                found |= kind.names()
        return found


def parse_services(obj: object, where: str) -> dict[str, ServiceRoute]:
    if not isinstance(obj, dict) or not obj:
        raise InputError(where, None, "expected an object of service name -> route")
    services = {}
    for name, route in obj.items():
        if not SERVICE_NAME.fullmatch(name):
            raise InputError(where, name, "service names are a-z 0-9 . _ - (at most 63)")
        services[name] = ServiceRoute.from_json(route, f"{where}: {name}")
    return services


def services_json(services: dict[str, ServiceRoute]) -> dict[str, Any]:
    return {name: route.to_json() for name, route in sorted(services.items())}


def referenced_credentials(services: dict[str, ServiceRoute]) -> set[str]:
    return {name for route in services.values() for name in route.names()}
