"""``m.bureau.template`` content (upstream's ``TemplateContent``,
lib/schema/events_template.go), one template as stored. Pure.

Field names, JSON shapes and "zero means absent" follow upstream so that a template
written for one runs on the other. Liberal in what it reads: every upstream field is read,
kept and written back, those this bureau does not run as upstream does included
(``template_upstream``), and so is a field no version known here has (``extra``). Whether
a principal runs on a template that carries one is decided where it would run
(``template_policy``): never refused only because a field is new. Strict in what it
writes: ``bureau template push`` refuses a field it does not know (a typo, most likely).
Inheritance is resolved in ``template_resolve``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bureau.errors import InputError
from bureau.wire.route_checks import valid_credential_name
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
from bureau.wire.template_upstream import (
    OutputCapture,
    SecretBinding,
    read_argv_map,
    read_payload,
    read_pipelines,
    read_secrets,
)

EVENT_TYPE = "m.bureau.template"
ISOLATION = ("standard", "none")
# The same grammar as credentials_event's service names.
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_T = TypeVar("_T")

_ORIGIN_KEYS = frozenset({"flake_ref", "url", "resolved_rev", "content_hash"})
# Every field of upstream's TemplateContent, in its order (to_json's).
FIELDS = (
    "description",
    "isolation",
    "inherits",
    "command",
    "environment",
    "environment_variables",
    "prepend_variables",
    "filesystem",
    "namespaces",
    "resources",
    "security",
    "create_dirs",
    "roles",
    "required_credentials",
    "secrets",
    "credential_ref",
    "allowed_pipelines",
    "required_services",
    "default_payload",
    "health_check",
    "output_capture",
    "proxy_services",
    "origin",
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


def _nested(
    data: dict[str, Any], key: str, where: str, parse: Callable[[object, str], _T]
) -> _T | None:
    return parse(data[key], f"{where}: {key}") if key in data else None


# Kept in to_json even when all zero: present replaces a parent's, absent does not
# (allowed_pipelines: [] allows none, absent any).
_KEPT_EMPTY = frozenset(
    {"namespaces", "resources", "security", "health_check", "output_capture", "allowed_pipelines"}
)


@dataclass(frozen=True)
class Template:
    """One template as stored, parents not applied. Absent and zero are the same, as
    upstream's omitempty makes them, and so is null, as upstream's decoder reads it;
    ``namespaces``, ``security``, ``resources``, ``health_check``, ``output_capture`` and
    ``allowed_pipelines`` are None when absent, so that inheritance can tell them apart.
    ``extra``: fields upstream's TemplateContent does not have (a newer version's), kept
    as read."""

    description: str = ""
    isolation: str = ""  # "" = standard
    inherits: tuple[TemplateRef, ...] = ()
    command: tuple[str, ...] = ()
    environment: str = ""  # a Nix store path: the toolchain on PATH
    environment_variables: dict[str, str] = field(default_factory=dict)
    prepend_variables: dict[str, tuple[str, ...]] = field(default_factory=dict)
    filesystem: tuple[Mount, ...] = ()
    namespaces: Namespaces | None = None
    security: Security | None = None
    resources: Resources | None = None
    create_dirs: tuple[str, ...] = ()
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    required_credentials: tuple[str, ...] = ()
    secrets: tuple[SecretBinding, ...] = ()
    credential_ref: str = ""
    allowed_pipelines: tuple[str, ...] | None = None
    required_services: tuple[str, ...] = ()
    default_payload: dict[str, Any] = field(default_factory=dict)
    proxy_services: dict[str, ProxyService] = field(default_factory=dict)
    health_check: HealthCheck | None = None
    output_capture: OutputCapture | None = None
    origin: dict[str, str] | None = None  # where it was published from; never inherited
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, where: str = EVENT_TYPE) -> Template:
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        data = {k: v for k, v in obj.items() if v is not None}  # Go reads null as absent
        return cls(
            description=read_string(data, "description", where),
            isolation=read_choice(data, "isolation", where, ISOLATION),
            inherits=read_refs(data, "inherits", where),
            command=read_strings(data, "command", where),
            environment=read_string(data, "environment", where),
            environment_variables=_environment(data, where),
            prepend_variables=read_argv_map(data, "prepend_variables", where),
            filesystem=_filesystem(data, where),
            namespaces=_nested(data, "namespaces", where, Namespaces.from_json),
            security=_nested(data, "security", where, Security.from_json),
            resources=_nested(data, "resources", where, Resources.from_json),
            create_dirs=read_strings(data, "create_dirs", where),
            roles=read_argv_map(data, "roles", where),
            required_credentials=_credentials(data, where),
            secrets=read_secrets(data, "secrets", where),
            credential_ref=read_string(data, "credential_ref", where),
            allowed_pipelines=read_pipelines(data, where),
            required_services=read_strings(data, "required_services", where),
            default_payload=read_payload(data, "default_payload", where),
            proxy_services=_proxy_services(data, where),
            health_check=_nested(data, "health_check", where, HealthCheck.from_json),
            output_capture=_nested(data, "output_capture", where, OutputCapture.from_json),
            origin=_origin(data, where),
            # An operator's signatures (OURS, wire/signing.py) are checked where the
            # template is relayed, not a field of the template.
            extra={k: v for k, v in data.items() if k not in FIELDS and k != "signatures"},
        )

    def check_known(self, where: str) -> None:
        """Strict in what we write: a field no version known here has is refused."""
        if self.extra:
            read_object(self.extra, where, frozenset())

    def to_json(self) -> dict[str, Any]:
        """Upstream's field order, then ``extra``; absent and empty fields left out, as
        upstream does."""
        out: dict[str, Any] = {
            "description": self.description,
            "isolation": self.isolation,
            "inherits": [str(r) for r in self.inherits],
            "command": list(self.command),
            "environment": self.environment,
            "environment_variables": dict(sorted(self.environment_variables.items())),
            "prepend_variables": {k: list(v) for k, v in sorted(self.prepend_variables.items())},
            "filesystem": [m.to_json() for m in self.filesystem],
        }
        for key in ("namespaces", "resources", "security"):
            value = getattr(self, key)
            out[key] = None if value is None else value.to_json()
        out["create_dirs"] = list(self.create_dirs)
        out["roles"] = {k: list(v) for k, v in sorted(self.roles.items())}
        out["required_credentials"] = list(self.required_credentials)
        out["secrets"] = [b.to_json() for b in self.secrets]
        out["credential_ref"] = self.credential_ref
        pipelines = self.allowed_pipelines
        out["allowed_pipelines"] = None if pipelines is None else list(pipelines)
        out["required_services"] = list(self.required_services)
        out["default_payload"] = self.default_payload
        out["health_check"] = None if self.health_check is None else self.health_check.to_json()
        capture = self.output_capture
        out["output_capture"] = None if capture is None else capture.to_json()
        out["proxy_services"] = {
            name: service.to_json() for name, service in sorted(self.proxy_services.items())
        }
        out["origin"] = self.origin
        out = {k: v for k, v in out.items() if v or (v is not None and k in _KEPT_EMPTY)}
        return {**out, **self.extra}  # extra never holds one of FIELDS
