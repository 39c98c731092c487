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
from urllib.parse import urlsplit

from bureau.errors import InputError
from bureau.wire.scope_rules import Rule, RuleError

# Upstream sets no grammar for credential names (MATRIX_TOKEN, github-token, ...); this is
# the printable subset they use, so that a name is safe in a log line and a header map.
# ``bureau.`` is reserved: the binding, and any entry a later version adds beside it.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RESERVED_PREFIX = "bureau."
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_QUERY_NAME = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_AWS_WORD = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_SCOPE = re.compile(r"[!#-\[\]-~]{1,128}")  # RFC 6749 3.3 scope-token
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PATH_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*")
# Connection-level headers an injected credential must never pose as.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
GRANTS = ("client_credentials", "refresh_token")
CLIENT_AUTH = ("basic", "post")


def shown(value: str, limit: int = 80) -> str:
    """A value quoted in an error, cut short: errors travel into logs and heartbeats."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def valid_credential_name(name: str) -> bool:
    return bool(_CREDENTIAL_NAME.fullmatch(name)) and not name.startswith(RESERVED_PREFIX)


def has_control_character(value: str) -> bool:
    """CR, LF, NUL and the other C0 controls (tab aside) and DEL: a credential becomes a
    header value, and these would split or end the header."""
    return any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value)


def check_upstream_url(url: str, where: str, field_name: str = "upstream_url") -> None:
    """An http(s) URL with a host and, if any, a port in 1-65535; nothing a proxy would have
    to guess at. urlsplit raises plain ValueError for a broken IPv6 literal or a bad port:
    caught here so that a malformed event is one refusal, never an uncaught exception."""
    if not url.isascii() or has_control_character(url) or " " in url:
        raise InputError(where, field_name, "must be ASCII without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(where, field_name, f"{shown(url)} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(where, field_name, f"{shown(url)} is not an http(s) URL with a host")
    if parts.netloc.endswith(":") or port == 0:
        raise InputError(where, field_name, f"{shown(url)}: the port must be 1-65535")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InputError(where, field_name, "must not carry credentials, query or fragment")


def check_inject_headers(inject: dict[str, Any], where: str) -> None:
    """header -> credential name, as a bundle's route and a template's proxy service
    both carry it: a header a credential may pose as, and a name, never a value."""
    for header, credential in inject.items():
        if not HEADER_NAME.fullmatch(header) or header.lower() in HOP_BY_HOP:
            raise InputError(where, f"inject_headers.{header}", "not an injectable header")
        if not isinstance(credential, str) or not valid_credential_name(credential):
            raise InputError(where, f"inject_headers.{header}", "expected a credential name")


def _name(obj: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not valid_credential_name(value):
        raise InputError(where, key, "expected a credential name")
    return value


def _known(obj: object, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(where, None, "expected an object")
    unknown = set(obj) - allowed
    if unknown:
        raise InputError(where, sorted(unknown)[0], "unknown field")
    return obj


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str

    @classmethod
    def from_json(cls, obj: object, where: str) -> BasicAuth:
        data = _known(obj, frozenset({"username", "password"}), where)
        return cls(str(_name(data, "username", where)), str(_name(data, "password", where)))

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}

    def names(self) -> set[str]:
        return {self.username, self.password}


@dataclass(frozen=True)
class AwsSigV4:
    access_key_id: str
    secret_access_key: str
    region: str
    service: str
    session_token: str | None = None

    _FIELDS = frozenset(
        {"access_key_id", "secret_access_key", "session_token", "region", "service"}
    )

    @classmethod
    def from_json(cls, obj: object, where: str) -> AwsSigV4:
        data = _known(obj, cls._FIELDS, where)
        words = {}
        for key in ("region", "service"):
            value = data.get(key)
            if not isinstance(value, str) or not _AWS_WORD.fullmatch(value):
                raise InputError(where, key, "expected a word such as eu-west-1 or s3")
            words[key] = value
        return cls(
            str(_name(data, "access_key_id", where)),
            str(_name(data, "secret_access_key", where)),
            words["region"],
            words["service"],
            _name(data, "session_token", where, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": self.region,
            "service": self.service,
        }
        if self.session_token is not None:
            out["session_token"] = self.session_token
        return out

    def names(self) -> set[str]:
        found = {self.access_key_id, self.secret_access_key}
        return found | ({self.session_token} if self.session_token else set())


@dataclass(frozen=True)
class OAuth2:
    grant: str
    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str | None = None
    scopes: tuple[str, ...] = ()
    client_auth: str = "basic"

    _FIELDS = frozenset(
        {
            "grant",
            "token_url",
            "client_id",
            "client_secret",
            "refresh_token",
            "scopes",
            "client_auth",
        }
    )

    @classmethod
    def from_json(cls, obj: object, where: str) -> OAuth2:
        data = _known(obj, cls._FIELDS, where)
        grant = data.get("grant")
        if grant not in GRANTS:
            raise InputError(where, "grant", f"expected one of {', '.join(GRANTS)}")
        url = data.get("token_url")
        if not isinstance(url, str):
            raise InputError(where, "token_url", "expected an http(s) URL")
        check_upstream_url(url, where, "token_url")
        refresh = _name(data, "refresh_token", where, optional=grant != "refresh_token")
        if grant == "client_credentials" and refresh is not None:
            raise InputError(where, "refresh_token", "only with grant refresh_token")
        scopes = data.get("scopes", [])
        if not isinstance(scopes, list) or not all(
            isinstance(s, str) and _SCOPE.fullmatch(s) for s in scopes
        ):
            raise InputError(where, "scopes", "expected a list of scope tokens")
        auth = data.get("client_auth", "basic")
        if auth not in CLIENT_AUTH:
            raise InputError(where, "client_auth", f"expected one of {', '.join(CLIENT_AUTH)}")
        return cls(
            str(grant),
            url,
            str(_name(data, "client_id", where)),
            str(_name(data, "client_secret", where)),
            refresh,
            tuple(scopes),
            str(auth),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "grant": self.grant,
            "token_url": self.token_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
        if self.scopes:
            out["scopes"] = list(self.scopes)
        if self.client_auth != "basic":
            out["client_auth"] = self.client_auth
        return out

    def names(self) -> set[str]:
        found = {self.client_id, self.client_secret}
        return found | ({self.refresh_token} if self.refresh_token else set())


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


_ROUTE_FIELDS = frozenset(
    {
        "upstream_url",
        "inject_headers",
        "auth_scheme",
        "strip_headers",
        "allow",
        "deny",
        "inject_query",
        "basic_auth",
        "path_prefix",
        "aws_sigv4",
        "oauth2",
    }
)
AUTHORIZING_KINDS = ("basic_auth", "aws_sigv4", "oauth2")


@dataclass(frozen=True)
class ServiceRoute:
    upstream_url: str
    inject_headers: dict[str, str] = field(default_factory=dict)
    auth_scheme: str | None = None
    strip_headers: tuple[str, ...] = ()
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()
    inject_query: dict[str, str] = field(default_factory=dict)
    basic_auth: BasicAuth | None = None
    path_prefix: str | None = None
    aws_sigv4: AwsSigV4 | None = None
    oauth2: OAuth2 | None = None

    @classmethod
    def from_json(cls, obj: object, where: str) -> ServiceRoute:
        data = _known(obj, _ROUTE_FIELDS, where)
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
        query = data.get("inject_query", {})
        if not isinstance(query, dict):
            raise InputError(where, "inject_query", "expected an object of parameter -> name")
        for parameter in query:
            if not _QUERY_NAME.fullmatch(parameter):
                raise InputError(where, f"inject_query.{parameter}", "not a parameter name")
            _name(query, parameter, f"{where}: inject_query")
        kinds = [k for k in AUTHORIZING_KINDS if data.get(k) is not None]
        if len(kinds) > 1:
            raise InputError(where, kinds[1], f"at most one of {', '.join(AUTHORIZING_KINDS)}")
        if kinds and any(h.lower() == "authorization" for h in inject):
            raise InputError(where, "inject_headers.Authorization", f"{kinds[0]} sets it")
        prefix = data.get("path_prefix")
        basic, aws, oauth2 = (data.get(k) for k in AUTHORIZING_KINDS)
        route = cls(
            upstream_url=url.rstrip("/"),
            inject_headers=dict(inject),
            auth_scheme=scheme,
            strip_headers=tuple(strip),
            allow=_rules(data, "allow", where),
            deny=_rules(data, "deny", where) or (),
            inject_query=dict(query),
            basic_auth=None
            if basic is None
            else BasicAuth.from_json(basic, f"{where}: basic_auth"),
            path_prefix=None if prefix is None else _check_path_prefix(prefix, where),
            aws_sigv4=None if aws is None else AwsSigV4.from_json(aws, f"{where}: aws_sigv4"),
            oauth2=None if oauth2 is None else OAuth2.from_json(oauth2, f"{where}: oauth2"),
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
        if self.allow is not None:
            out["allow"] = list(self.allow)
        if self.deny:
            out["deny"] = list(self.deny)
        if self.inject_query:
            out["inject_query"] = dict(self.inject_query)
        if self.basic_auth is not None:
            out["basic_auth"] = self.basic_auth.to_json()
        if self.path_prefix is not None:
            out["path_prefix"] = self.path_prefix
        if self.aws_sigv4 is not None:
            out["aws_sigv4"] = self.aws_sigv4.to_json()
        if self.oauth2 is not None:
            out["oauth2"] = self.oauth2.to_json()
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
