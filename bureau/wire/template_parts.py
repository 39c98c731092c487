"""The parts of ``m.bureau.template`` content, in upstream's wire format
(lib/schema/events_template.go, lib/schema/template_ref.go): template refs, mounts,
namespaces, security, resources, health checks, proxy services, response interceptors
(kept, not run: see ``template_policy``), and the field readers that name what they refuse. Pure.
The template as a whole is ``template.Template``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bureau.errors import InputError
from bureau.wire import names
from bureau.wire.route_checks import (
    HEADER_NAME,
    check_inject_headers,
    check_upstream_url,
    has_control_character,
)
from bureau.wire.service_route import (
    KIND_FIELDS,
    RouteKinds,
    ServiceRoute,
    kinds_json,
    parse_kinds,
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# The same grammar as credentials_event's, so a proxy service becomes a ServiceRoute.
_INT_MAX = 2**63 - 1  # upstream decodes these into Go ints
NAME_MAX = 255  # a template name (state key); upstream sets no bound


# -- field readers: each names the field it refuses ------------------------------------


def read_object(obj: object, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(where, None, "expected an object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        problem = "unknown field" if len(unknown) == 1 else "unknown fields: " + ", ".join(unknown)
        raise InputError(where, unknown[0], problem)
    return obj


def is_text(value: object) -> bool:
    # NUL and other controls cannot pass through argv, env or a header.
    return isinstance(value, str) and not has_control_character(value)


def read_string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if not is_text(value):
        raise InputError(where, key, "expected a string without control characters")
    return str(value)


def read_flag(obj: dict[str, Any], key: str, where: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise InputError(where, key, "expected true or false")
    return value


def read_count(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key, 0)
    # bool is an int in Python, not in JSON; 512.0 is not an int to upstream's decoder.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _INT_MAX:
        raise InputError(where, key, "expected a whole number, 0 or more")
    return value


def read_strings(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise InputError(where, key, "expected a list of strings")
    for i, item in enumerate(value):
        if not is_text(item) or not item:
            raise InputError(where, f"{key}[{i}]", "expected a non-empty string")
    return tuple(value)


def read_choice(obj: dict[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> str:
    value = read_string(obj, key, where)
    if value and value not in allowed:
        raise InputError(where, key, f"{value!r} is not one of {', '.join(allowed)}")
    return value


# -- template refs -----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class TemplateRef:
    """``<room alias localpart>[@<server>]:<name>``, e.g. ``bureau/template:agent-base``.

    The last colon separates the name (a server may carry a port, a localpart and a name
    never hold a colon); the name is the state key of the ``m.bureau.template`` event."""

    room: str
    name: str
    server: str = ""

    @classmethod
    def parse(cls, value: str) -> TemplateRef:
        """Raises ``names.InvalidName``; callers add the location."""
        room_part, colon, name = value.rpartition(":")
        if not colon or not room_part:
            raise names.InvalidName(f"{value!r} is not a template ref (<room>:<name>)")
        room, at, server = room_part.partition("@")
        # Upstream's rule for the name (ValidatePathSegment), plus printable, no spaces
        # and a bound: it travels into logs and URLs.
        if not 0 < len(name) <= NAME_MAX or name.startswith(".") or not name.isprintable():
            raise names.InvalidName(
                f"{value!r}: the template name must be 1-{NAME_MAX} printable characters "
                "without spaces, not starting with '.'"
            )
        if " " in name:
            raise names.InvalidName(f"{value!r}: the template name must not hold spaces")
        names.validate_localpart(room)
        if at:
            names.validate_server_name(server)
        return cls(room, name, server)

    def __str__(self) -> str:
        server = f"@{self.server}" if self.server else ""
        return f"{self.room}{server}:{self.name}"

    def room_alias(self, default_server: str) -> str:
        return names.room_alias(self.room, self.server or default_server)

    @property
    def state_key(self) -> str:
        return self.name


def read_refs(obj: dict[str, Any], key: str, where: str) -> tuple[TemplateRef, ...]:
    refs = []
    for i, item in enumerate(read_strings(obj, key, where)):
        try:
            refs.append(TemplateRef.parse(item))
        except names.InvalidName as exc:
            raise InputError(where, f"{key}[{i}]", str(exc)) from None
    return tuple(refs)


# -- nested shapes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    dest: str
    source: str = ""
    type: str = ""  # "" = bind (upstream's default), "bind", "tmpfs"
    mode: str = ""  # "" = ro (upstream's default), "ro", "rw"
    options: str = ""  # e.g. size=64M for tmpfs
    optional: bool = False

    _FIELDS = frozenset({"source", "dest", "type", "mode", "options", "optional"})

    @classmethod
    def from_json(cls, obj: object, where: str) -> Mount:
        data = read_object(obj, where, cls._FIELDS)
        mount = cls(
            dest=read_string(data, "dest", where),
            source=read_string(data, "source", where),
            type=read_choice(data, "type", where, ("bind", "tmpfs")),
            mode=read_choice(data, "mode", where, ("ro", "rw")),
            options=read_string(data, "options", where),
            optional=read_flag(data, "optional", where),
        )
        if not mount.dest:
            raise InputError(where, "dest", "required")
        if mount.type == "tmpfs" and mount.source:
            raise InputError(where, "source", "a tmpfs mount has no source")
        if mount.type != "tmpfs" and not mount.source:
            raise InputError(where, "source", "a bind mount needs a source")
        return mount

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "dest": self.dest, "type": self.type}
        out |= {"mode": self.mode, "options": self.options, "optional": self.optional}
        return {k: v for k, v in out.items() if v or k == "dest"}


@dataclass(frozen=True)
class Namespaces:
    pid: bool = False
    net: bool = False
    ipc: bool = False
    uts: bool = False

    @classmethod
    def from_json(cls, obj: object, where: str) -> Namespaces:
        data = read_object(obj, where, frozenset({"pid", "net", "ipc", "uts"}))
        return cls(*(read_flag(data, k, where) for k in ("pid", "net", "ipc", "uts")))

    def to_json(self) -> dict[str, Any]:
        # Every flag written, false ones too: "net": false is worth reading.
        return {"pid": self.pid, "net": self.net, "ipc": self.ipc, "uts": self.uts}


@dataclass(frozen=True)
class Security:
    new_session: bool = False
    die_with_parent: bool = False
    no_new_privs: bool = False

    _KEYS = ("new_session", "die_with_parent", "no_new_privs")

    @classmethod
    def from_json(cls, obj: object, where: str) -> Security:
        data = read_object(obj, where, frozenset(cls._KEYS))
        return cls(*(read_flag(data, k, where) for k in cls._KEYS))

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._KEYS}


@dataclass(frozen=True)
class Resources:
    """0 = no limit, as upstream."""

    cpu_shares: int = 0
    memory_limit_mb: int = 0
    pids_limit: int = 0

    _KEYS = ("cpu_shares", "memory_limit_mb", "pids_limit")

    @classmethod
    def from_json(cls, obj: object, where: str) -> Resources:
        data = read_object(obj, where, frozenset(cls._KEYS))
        return cls(*(read_count(data, k, where) for k in cls._KEYS))

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._KEYS if getattr(self, k)}


@dataclass(frozen=True)
class HealthCheck:
    """Zero timeout/threshold/grace mean upstream's runtime defaults (5 s, 3, 30 s)."""

    interval_seconds: int
    type: str = ""  # "" = http
    endpoint: str = ""
    timeout_seconds: int = 0
    failure_threshold: int = 0
    grace_period_seconds: int = 0

    _COUNTS = ("timeout_seconds", "failure_threshold", "grace_period_seconds")

    @classmethod
    def from_json(cls, obj: object, where: str) -> HealthCheck:
        data = read_object(
            obj, where, frozenset({"type", "endpoint", "interval_seconds", *cls._COUNTS})
        )
        check = cls(
            read_count(data, "interval_seconds", where),
            read_choice(data, "type", where, ("http", "socket")),
            read_string(data, "endpoint", where),
            *(read_count(data, k, where) for k in cls._COUNTS),
        )
        if check.interval_seconds == 0:
            raise InputError(where, "interval_seconds", "expected a whole number, 1 or more")
        if check.type != "socket" and not check.endpoint.startswith("/"):
            raise InputError(where, "endpoint", "an http check needs a path such as /health")
        return check

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "endpoint": self.endpoint}
        out["interval_seconds"] = self.interval_seconds
        out |= {k: getattr(self, k) for k in self._COUNTS}
        return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class ProxyService(RouteKinds):
    """Upstream's ``TemplateProxyService``: ``ServiceRoute``'s shape, with the URL named
    ``upstream`` and ``inject_headers`` optional (a service may need no credential); OURS:
    the scope and credential kinds of ``RouteKinds`` (upstream's daemon ignores them)."""

    upstream: str
    inject_headers: dict[str, str] = field(default_factory=dict)
    strip_headers: tuple[str, ...] = ()
    auth_scheme: str = ""
    # Kept so that the template round-trips; a principal whose proxy would need them is
    # refused by the daemon (template_policy), since our proxy does not publish them.
    response_interceptors: tuple[ResponseInterceptor, ...] = ()

    _FIELDS = frozenset(
        {"upstream", "inject_headers", "strip_headers", "auth_scheme", "response_interceptors"}
        | set(KIND_FIELDS)
    )

    @classmethod
    def from_json(cls, obj: object, where: str) -> ProxyService:
        if isinstance(obj, dict) and "upstream_url" in obj:
            # The credentials event's name for it; a template uses upstream's.
            raise InputError(where, "upstream_url", "a template names the URL upstream")
        data = read_object(obj, where, cls._FIELDS)
        upstream = data.get("upstream")
        if not isinstance(upstream, str):
            raise InputError(where, "upstream", "expected an http(s) URL")
        try:
            check_upstream_url(upstream, where)
        except InputError as exc:
            raise InputError(where, "upstream", exc.problem) from None
        inject = data.get("inject_headers", {})
        if not isinstance(inject, dict):
            raise InputError(where, "inject_headers", "expected an object of header -> name")
        check_inject_headers(inject, where)
        strip = read_strings(data, "strip_headers", where)
        if not all(HEADER_NAME.fullmatch(h) for h in strip):
            raise InputError(where, "strip_headers", "expected a list of header names")
        scheme = read_string(data, "auth_scheme", where)
        if scheme and not HEADER_NAME.fullmatch(scheme):
            raise InputError(where, "auth_scheme", "expected a single word such as Bearer")
        interceptors = data.get("response_interceptors") or []
        if not isinstance(interceptors, list):
            raise InputError(where, "response_interceptors", "expected a list of interceptors")
        return cls(
            upstream.rstrip("/"),
            dict(inject),
            strip,
            scheme,
            tuple(
                ResponseInterceptor.from_json(item, f"{where}: response_interceptors[{i}]")
                for i, item in enumerate(interceptors)
            ),
            **parse_kinds(data, inject, where),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"upstream": self.upstream}
        if self.inject_headers:
            out["inject_headers"] = dict(self.inject_headers)
        if self.strip_headers:
            out["strip_headers"] = list(self.strip_headers)
        if self.auth_scheme:
            out["auth_scheme"] = self.auth_scheme
        if self.response_interceptors:
            out["response_interceptors"] = [i.to_json() for i in self.response_interceptors]
        out.update(kinds_json(self))
        return out

    def to_route(self, where: str) -> ServiceRoute:
        """The route a credentials bundle carries for this service; it is checked as the
        bundle's routes are, so one without a credential to inject is refused here."""
        route: dict[str, Any] = {"upstream_url": self.upstream}
        route["inject_headers"] = dict(self.inject_headers)
        route["strip_headers"] = list(self.strip_headers)
        if self.auth_scheme:
            route["auth_scheme"] = self.auth_scheme
        route.update(kinds_json(self))
        return ServiceRoute.from_json(route, where)


@dataclass(frozen=True)
class ResponseInterceptor:
    """Upstream's ``ResponseInterceptor``: when a proxied response matches, upstream's
    proxy publishes ``event_type`` (e.g. m.bureau.forge_attribution) with
    ``event_content`` filled in. Checked as upstream's proxy compiles them
    (proxy/interceptor.go compileInterceptors), the regex aside."""

    path_pattern: str
    event_type: str
    event_content: dict[str, Any]
    method: str = ""
    status_min: int = 0
    status_max: int = 0

    _FIELDS = frozenset(
        {"method", "path_pattern", "status_min", "status_max", "event_type", "event_content"}
    )

    @classmethod
    def from_json(cls, obj: object, where: str) -> ResponseInterceptor:
        data = read_object(obj, where, cls._FIELDS)
        content = data.get("event_content")
        if not isinstance(content, dict) or not content:
            raise InputError(where, "event_content", "expected a non-empty object")
        interceptor = cls(
            read_string(data, "path_pattern", where),
            read_string(data, "event_type", where),
            dict(content),
            read_string(data, "method", where),
            read_count(data, "status_min", where),
            read_count(data, "status_max", where),
        )
        for key in ("path_pattern", "event_type"):
            if not getattr(interceptor, key):
                raise InputError(where, key, "required")
        if interceptor.status_min > interceptor.status_max:  # both 0: upstream's 200-299
            raise InputError(where, "status_min", "is above status_max")
        return interceptor

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "path_pattern": self.path_pattern}
        out |= {"status_min": self.status_min, "status_max": self.status_max}
        out |= {"event_type": self.event_type, "event_content": self.event_content}
        return {k: v for k, v in out.items() if v or k in ("path_pattern", "event_type")}


def env_problem(name: object, value: object) -> str | None:
    """What is wrong with one environment variable, if anything."""
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        return "not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
    if not is_text(value):
        return "expected a string without control characters"
    return None
