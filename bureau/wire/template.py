"""``m.bureau.template`` content (upstream's ``TemplateContent``,
lib/schema/events_template.go), one template as stored. Pure.

Field names, JSON shapes and "zero means absent" follow upstream so that a template
written for one runs on the other. Upstream fields this bureau does not honour are
refused by name rather than ignored: a template that relies on one would otherwise run
without it. ``secrets`` is refused for good: a credential never enters the sandbox
(PRINCIPALS.md). Inheritance is resolved in ``template_resolve``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bureau.errors import InputError
from bureau.wire.credentials import valid_credential_name
from bureau.wire.template_parts import (
    HealthCheck,
    Mount,
    Namespaces,
    ProxyService,
    Resources,
    Security,
    TemplateRef,
    env_problem,
    read_choice,
    read_object,
    read_refs,
    read_string,
    read_strings,
)

EVENT_TYPE = "m.bureau.template"
SECRETS_REFUSED = (
    "templates may not hand credentials to the workload: a credential never enters the "
    "sandbox; use proxy_services"
)
# Upstream fields we know but do not honour, and why; named so the author knows it is
# not a typo.
UNSUPPORTED = {
    "credential_ref": "a principal's credentials are its own m.bureau.credentials bundle",
    "allowed_pipelines": "pipelines are not supported by this bureau",
    "environment": "Nix environments (/usr/local) are not supported by this bureau yet",
    "prepend_variables": "not supported by this bureau yet; set environment_variables",
    "roles": "observation roles are not supported by this bureau",
    "required_services": "service sockets are not supported by this bureau yet",
    "default_payload": "payloads are not supported by this bureau yet",
    "output_capture": "output capture is not supported by this bureau; output goes to the journal",
}
# The same grammar as credentials_event's service names.
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_T = TypeVar("_T")

_ORIGIN_KEYS = frozenset({"flake_ref", "url", "resolved_rev", "content_hash"})
_TEMPLATE_FIELDS = frozenset(
    {
        "description",
        "isolation",
        "inherits",
        "command",
        "environment_variables",
        "filesystem",
        "namespaces",
        "security",
        "resources",
        "create_dirs",
        "required_credentials",
        "proxy_services",
        "health_check",
        "origin",
    }
)


def _environment(obj: dict[str, Any], where: str) -> dict[str, str]:
    value = obj.get("environment_variables", {})
    if not isinstance(value, dict):
        raise InputError(where, "environment_variables", "expected an object of name -> value")
    for key, item in value.items():
        problem = env_problem(key, item)
        if problem:
            raise InputError(where, f"environment_variables.{key}", problem)
    return dict(value)


def _filesystem(obj: dict[str, Any], where: str) -> tuple[Mount, ...]:
    value = obj.get("filesystem", [])
    if not isinstance(value, list):
        raise InputError(where, "filesystem", "expected a list of mounts")
    mounts = tuple(Mount.from_json(m, f"{where}: filesystem[{i}]") for i, m in enumerate(value))
    dests = [m.dest for m in mounts]
    for i, dest in enumerate(dests):
        if dest in dests[:i]:
            # Which of the two would win is a guess; inheritance replaces by dest instead.
            raise InputError(where, f"filesystem[{i}].dest", f"{dest!r} is mounted twice")
    return mounts


def _proxy_services(obj: dict[str, Any], where: str) -> dict[str, ProxyService]:
    value = obj.get("proxy_services", {})
    if not isinstance(value, dict):
        raise InputError(where, "proxy_services", "expected an object of service name -> route")
    services = {}
    for name, route in value.items():
        if not _SERVICE_NAME.fullmatch(name):
            raise InputError(
                where, f"proxy_services.{name}", "service names are a-z 0-9 . _ - (at most 63)"
            )
        services[name] = ProxyService.from_json(route, f"{where}: proxy_services.{name}")
    return services


def _credentials(obj: dict[str, Any], where: str) -> tuple[str, ...]:
    credentials = read_strings(obj, "required_credentials", where)
    for i, name in enumerate(credentials):
        if not valid_credential_name(name):
            raise InputError(where, f"required_credentials[{i}]", "not a credential name")
    return credentials


def _origin(obj: dict[str, Any], where: str) -> dict[str, str] | None:
    if "origin" not in obj:
        return None
    data = read_object(obj["origin"], f"{where}: origin", _ORIGIN_KEYS)
    return {k: read_string(data, k, f"{where}: origin") for k in sorted(data)}


def _refuse_upstream_only(obj: dict[str, Any], where: str) -> None:
    if "secrets" in obj:
        raise InputError(where, "secrets", SECRETS_REFUSED)
    unsupported = sorted(set(obj) & set(UNSUPPORTED))
    if unsupported:
        raise InputError(where, unsupported[0], UNSUPPORTED[unsupported[0]])
    if read_choice(obj, "isolation", where, ("standard", "none")) == "none":
        raise InputError(where, "isolation", "a principal always runs sandboxed here")


def _nested(
    data: dict[str, Any], key: str, where: str, parse: Callable[[object, str], _T]
) -> _T | None:
    return parse(data[key], f"{where}: {key}") if key in data else None


# Kept in to_json even when all zero: present replaces a parent's, absent does not.
_NESTED = frozenset({"namespaces", "resources", "security", "health_check"})


@dataclass(frozen=True)
class Template:
    """One template as stored, parents not applied. Absent and zero are the same, as
    upstream's omitempty makes them; ``namespaces``, ``security``, ``resources`` and
    ``health_check`` are None when absent, so that inheritance can tell them apart.
    ``isolation: standard`` (upstream's default, the only mode here) is read and
    dropped; ``none`` is refused."""

    description: str = ""
    inherits: tuple[TemplateRef, ...] = ()
    command: tuple[str, ...] = ()
    environment_variables: dict[str, str] = field(default_factory=dict)
    filesystem: tuple[Mount, ...] = ()
    namespaces: Namespaces | None = None
    security: Security | None = None
    resources: Resources | None = None
    create_dirs: tuple[str, ...] = ()
    required_credentials: tuple[str, ...] = ()
    proxy_services: dict[str, ProxyService] = field(default_factory=dict)
    health_check: HealthCheck | None = None
    origin: dict[str, str] | None = None  # where it was published from; never inherited

    @classmethod
    def from_json(cls, obj: object, where: str = EVENT_TYPE) -> Template:
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        _refuse_upstream_only(obj, where)
        data = read_object(obj, where, _TEMPLATE_FIELDS)

        return cls(
            description=read_string(data, "description", where),
            inherits=read_refs(data, "inherits", where),
            command=read_strings(data, "command", where),
            environment_variables=_environment(data, where),
            filesystem=_filesystem(data, where),
            namespaces=_nested(data, "namespaces", where, Namespaces.from_json),
            security=_nested(data, "security", where, Security.from_json),
            resources=_nested(data, "resources", where, Resources.from_json),
            create_dirs=read_strings(data, "create_dirs", where),
            required_credentials=_credentials(data, where),
            proxy_services=_proxy_services(data, where),
            health_check=_nested(data, "health_check", where, HealthCheck.from_json),
            origin=_origin(data, where),
        )

    def to_json(self) -> dict[str, Any]:
        """Upstream's field order; absent and empty fields left out, as upstream does."""
        out: dict[str, Any] = {
            "description": self.description,
            "inherits": [str(r) for r in self.inherits],
            "command": list(self.command),
            "environment_variables": dict(sorted(self.environment_variables.items())),
            "filesystem": [m.to_json() for m in self.filesystem],
        }
        for key in ("namespaces", "resources", "security"):
            value = getattr(self, key)
            out[key] = None if value is None else value.to_json()
        out["create_dirs"] = list(self.create_dirs)
        out["required_credentials"] = list(self.required_credentials)
        out["health_check"] = None if self.health_check is None else self.health_check.to_json()
        out["proxy_services"] = {
            name: service.to_json() for name, service in sorted(self.proxy_services.items())
        }
        out["origin"] = self.origin
        return {k: v for k, v in out.items() if v or (v is not None and k in _NESTED)}
