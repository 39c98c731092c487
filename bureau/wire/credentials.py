"""``m.bureau.credentials`` (WIRE.md) and the routes it carries. Pure.

Binding: the encrypted plaintext of a bundle bureau writes carries, besides the
credentials, one reserved entry ``bureau.binding`` = ``sha256:<hex>`` of the canonical JSON
of ``{"principal", "services"}``. The daemon relays events and is the network-facing
process; if it were subverted it could rewrite ``services`` to send a credential to another
host, or move a bundle to another principal. It cannot rewrite the binding without the
plaintext, and the launcher refuses a bundle whose binding does not match the event it came
in. ``signature`` carries the same digest in the clear, for operators and tools.

Upstream Bureau's tools write bundles without a binding (lib/credential/provision.go): no
``services`` in the event, ``signature`` "", a plaintext of credentials only. Those are
read here as *unbound*; whether a machine serves one is its launcher's choice
(``--allow-unbound-bundles``), and its routes then come from the principal's template
through the daemon, which is trusted for them (see ``unbound_services``).

Reading is liberal where upstream is (credential names such as ``github-token``, ``keys``
in any order, ``principal`` "" for a fleet bundle, fields this version does not know);
writing stays as strict as it was. Upstream's launcher reads a plaintext into a
``map[string]string`` and passes every entry to its proxy
(cmd/bureau-launcher/handlers.go, proxy.go buildCredentialPayload), so the binding entry in
ours is one more harmless string there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from bureau.errors import InputError
from bureau.secret import Secret
from bureau.wire import names

VERSION = 1
BINDING_KEY = "bureau.binding"
ESCROW_RECIPIENT = "escrow:operator"
# Upstream sets no grammar for credential names (MATRIX_TOKEN, github-token, ...); this is
# the printable subset they use, so that a name is safe in a log line and a header map.
# ``bureau.`` is reserved: the binding, and any entry a later version adds beside it.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RESERVED_PREFIX = "bureau."
MATRIX_TOKEN = "MATRIX_TOKEN"  # noqa: S105 -- the name of a credential, not one
MATRIX_SERVICE = "matrix"
# Short: it ends up in machine_status, whose reasons are cut at 200 characters.
UNBOUND_REFUSED = (
    "unbound bundle refused (no bureau.binding, as upstream writes them; "
    "--allow-unbound-bundles serves them)"
)
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
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


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_digest(content: object) -> str:
    """Identity of a credentials event's content, as the daemon and launcher compare it."""
    return "sha256:" + hashlib.sha256(canonical_json(content)).hexdigest()


def rfc3339_now(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shown(value: str, limit: int = 80) -> str:
    """A value quoted in an error, cut short: errors travel into logs and heartbeats."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def parse_rfc3339(value: str) -> datetime:
    if not _RFC3339.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not an RFC 3339 time (e.g. 2026-12-31T23:59:59Z)")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def valid_credential_name(name: str) -> bool:
    return bool(_CREDENTIAL_NAME.fullmatch(name)) and not name.startswith(RESERVED_PREFIX)


def has_control_character(value: str) -> bool:
    """CR, LF, NUL and the other C0 controls (tab aside) and DEL: a credential becomes a
    header value, and these would split or end the header."""
    return any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value)


def check_upstream_url(url: str, where: str) -> None:
    """An http(s) URL with a host and, if any, a port in 1-65535; nothing a proxy would have
    to guess at. urlsplit raises plain ValueError for a broken IPv6 literal or a bad port:
    caught here so that a malformed event is one refusal, never an uncaught exception."""
    field_name = "upstream_url"
    if not url.isascii() or has_control_character(url) or " " in url:
        raise InputError(where, field_name, "must be ASCII without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(where, field_name, f"{_shown(url)} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(where, field_name, f"{_shown(url)} is not an http(s) URL with a host")
    if parts.netloc.endswith(":") or port == 0:
        raise InputError(where, field_name, f"{_shown(url)}: the port must be 1-65535")
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


@dataclass(frozen=True)
class ServiceRoute:
    upstream_url: str
    inject_headers: dict[str, str]
    auth_scheme: str | None = None
    strip_headers: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: object, where: str) -> ServiceRoute:
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        unknown = set(obj) - {"upstream_url", "inject_headers", "auth_scheme", "strip_headers"}
        if unknown:
            raise InputError(where, sorted(unknown)[0], "unknown field")
        url = obj.get("upstream_url")
        if not isinstance(url, str):
            raise InputError(where, "upstream_url", "expected a string")
        check_upstream_url(url, where)
        inject = obj.get("inject_headers")
        if not isinstance(inject, dict) or not inject:
            raise InputError(where, "inject_headers", "expected a non-empty object")
        check_inject_headers(inject, where)
        scheme = obj.get("auth_scheme")
        if scheme is not None and (
            not isinstance(scheme, str) or not HEADER_NAME.fullmatch(scheme)
        ):
            raise InputError(where, "auth_scheme", "expected a single word such as Bearer")
        strip = obj.get("strip_headers", [])
        if not isinstance(strip, list) or not all(
            isinstance(h, str) and HEADER_NAME.fullmatch(h) for h in strip
        ):
            raise InputError(where, "strip_headers", "expected a list of header names")
        return cls(url.rstrip("/"), dict(inject), scheme, tuple(strip))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "upstream_url": self.upstream_url,
            "inject_headers": self.inject_headers,
        }
        if self.auth_scheme is not None:
            out["auth_scheme"] = self.auth_scheme
        if self.strip_headers:
            out["strip_headers"] = list(self.strip_headers)
        return out


def parse_services(obj: object, where: str) -> dict[str, ServiceRoute]:
    if not isinstance(obj, dict) or not obj:
        raise InputError(where, None, "expected an object of service name -> route")
    services = {}
    for name, route in obj.items():
        if not _SERVICE_NAME.fullmatch(name):
            raise InputError(where, name, "service names are a-z 0-9 . _ - (at most 63)")
        services[name] = ServiceRoute.from_json(route, f"{where}: {name}")
    return services


def services_json(services: dict[str, ServiceRoute]) -> dict[str, Any]:
    return {name: route.to_json() for name, route in sorted(services.items())}


def binding_digest(principal: str, services: dict[str, ServiceRoute]) -> str:
    payload = {"principal": principal, "services": services_json(services)}
    return "sha256:" + hashlib.sha256(canonical_json(payload)).hexdigest()


def referenced_credentials(services: dict[str, ServiceRoute]) -> set[str]:
    return {c for route in services.values() for c in route.inject_headers.values()}


@dataclass(frozen=True)
class CredentialsEvent:
    """``principal`` is "" for upstream's fleet bundles (lib/credential/provision_fleet.go),
    which no principal is served from; ``services`` is empty for an unbound event."""

    principal: str
    encrypted_for: tuple[str, ...]
    keys: tuple[str, ...]
    ciphertext: bytes
    provisioned_by: str
    provisioned_at: str
    signature: str
    services: dict[str, ServiceRoute] = field(default_factory=dict)
    expires_at: str | None = None

    @classmethod
    def from_json(cls, obj: object, where: str = "m.bureau.credentials") -> CredentialsEvent:
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        if obj.get("version") != VERSION:
            raise InputError(where, "version", f"expected {VERSION}")

        def text(key: str, *, empty: bool = False) -> str:
            value = obj.get(key)
            if not isinstance(value, str) or not (value or empty):
                raise InputError(where, key, "expected a non-empty string")
            return value

        principal = text("principal", empty=True)
        if principal:
            try:
                names.validate_localpart(names.parse_user_id(principal)[0])
            except names.InvalidName as exc:
                raise InputError(where, "principal", str(exc)) from None
        recipients = obj.get("encrypted_for")
        if (
            not isinstance(recipients, list)
            or not recipients
            or not all(isinstance(r, str) for r in recipients)
        ):
            raise InputError(where, "encrypted_for", "expected a non-empty list of strings")
        # Go writes a nil slice as null. Upstream's daemon lists every plaintext entry, a
        # binding included, when it re-encrypts a bundle (handlers.go provision-credential).
        keys = obj.get("keys", ()) if obj.get("keys", ()) is not None else []
        if not isinstance(keys, list) or not all(
            isinstance(k, str) and (valid_credential_name(k) or k == BINDING_KEY) for k in keys
        ):
            raise InputError(where, "keys", "expected a list of credential names")
        try:
            # ValueError, not binascii.Error: a non-ASCII character raises the former.
            ciphertext = base64.b64decode(text("ciphertext"), validate=True)
        except ValueError:
            raise InputError(where, "ciphertext", "not standard padded base64") from None
        for key in ("provisioned_at", "expires_at"):
            if key in obj and not (key == "expires_at" and obj[key] == ""):
                try:
                    parse_rfc3339(text(key))
                except ValueError as exc:
                    raise InputError(where, key, str(exc)) from None
        services = {}
        if "services" in obj:  # absent: an unbound event, as upstream writes them
            services = parse_services(obj.get("services"), f"{where}: services")
        return cls(
            principal=principal,
            encrypted_for=tuple(recipients),
            keys=tuple(keys),
            ciphertext=ciphertext,
            provisioned_by=text("provisioned_by", empty=True),
            provisioned_at=text("provisioned_at"),
            signature=text("signature", empty=True),
            services=services,
            expires_at=obj.get("expires_at") or None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": VERSION,
            "principal": self.principal,
            "encrypted_for": list(self.encrypted_for),
            "keys": list(self.keys),
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
            "provisioned_by": self.provisioned_by,
            "provisioned_at": self.provisioned_at,
            "signature": self.signature,
        }
        if self.services:
            out["services"] = services_json(self.services)
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        return out


def bundle_plaintext(
    credentials: dict[str, Secret], principal: str, services: dict[str, ServiceRoute]
) -> bytes:
    """The JSON object (string -> string) that gets encrypted, binding included."""
    body = {name: value.reveal() for name, value in sorted(credentials.items())}
    body[BINDING_KEY] = binding_digest(principal, services)
    return canonical_json(body)


@dataclass(frozen=True)
class Opened:
    """A decrypted bundle: its credentials, and whether it carried a binding."""

    credentials: dict[str, Secret]
    bound: bool

    def __repr__(self) -> str:
        return f"Opened(credentials={sorted(self.credentials)}, bound={self.bound})"


def open_plaintext(
    plaintext: bytes, event: CredentialsEvent, where: str, *, unbound_allowed: bool
) -> Opened:
    """Parse decrypted plaintext and check it against the event it came in. A bundle with a
    binding is served only with the principal and services it binds; one without (as
    upstream writes them) only where ``unbound_allowed``. Messages name keys, never
    values."""
    try:
        data = json.loads(plaintext)
    except ValueError:
        raise InputError(where, None, "decrypted bundle is not JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise InputError(where, None, "decrypted bundle is not an object of string -> string")
    binding = data.pop(BINDING_KEY, None)
    if binding is None and not unbound_allowed:
        raise InputError(where, None, UNBOUND_REFUSED)
    if binding is not None and binding != binding_digest(event.principal, event.services):
        problem = "does not match this event's principal and services; refused"
        if not event.services:
            # Stripping a bound event's services must not make it an unbound one.
            problem = "binds services this event does not carry; refused"
        raise InputError(where, BINDING_KEY, problem)
    credentials: dict[str, Secret] = {}
    for name, value in data.items():
        if not valid_credential_name(name):
            # Not named: a name that is not a credential name may be anything.
            raise InputError(
                where, None, "decrypted bundle holds a key that is not a credential name"
            )
        if has_control_character(value):
            raise InputError(where, name, "value contains a control character; refused")
        credentials[name] = Secret(value)
    return Opened(credentials, bound=binding is not None)


def unbound_services(
    services: dict[str, ServiceRoute],
    credentials: dict[str, Secret],
    homeserver_url: str,
    where: str,
) -> dict[str, ServiceRoute]:
    """The routes an unbound bundle is served with. ``services`` came from the daemon (the
    principal's template ``proxy_services``), which nothing binds; so none of them may carry
    MATRIX_TOKEN (the principal's Matrix identity) or take the built-in service's name, and
    the built-in ``matrix`` route goes to the homeserver this machine's own session names,
    never to one the daemon chose."""
    for name, route in services.items():
        if name == MATRIX_SERVICE:
            raise InputError(f"{where}: services", name, "is built in; choose another name")
        if MATRIX_TOKEN in route.inject_headers.values():
            raise InputError(
                f"{where}: services",
                name,
                f"{MATRIX_TOKEN} goes only to the built-in {MATRIX_SERVICE} service",
            )
    routes = dict(services)
    if MATRIX_TOKEN in credentials:
        routes[MATRIX_SERVICE] = ServiceRoute(
            homeserver_url.rstrip("/"), {"Authorization": MATRIX_TOKEN}, "Bearer"
        )
    if not routes:
        raise InputError(
            where,
            "services",
            "none: the bundle is unbound, holds no MATRIX_TOKEN, and the principal's "
            "template names no proxy_services",
        )
    return routes
