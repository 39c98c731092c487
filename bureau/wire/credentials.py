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

from bureau.errors import InputError
from bureau.secret import Secret
from bureau.wire import names

# Routes live in service_route.py; re-exported while callers move to importing it there.
from bureau.wire.route_checks import (
    HEADER_NAME as HEADER_NAME,  # noqa: PLC0414
)
from bureau.wire.route_checks import (
    RESERVED_PREFIX as RESERVED_PREFIX,  # noqa: PLC0414
)
from bureau.wire.route_checks import (
    check_inject_headers as check_inject_headers,  # noqa: PLC0414
)
from bureau.wire.route_checks import (
    check_upstream_url as check_upstream_url,  # noqa: PLC0414
)
from bureau.wire.route_checks import (
    has_control_character as has_control_character,  # noqa: PLC0414
)
from bureau.wire.route_checks import (
    shown as shown,  # noqa: PLC0414
)
from bureau.wire.route_checks import (
    valid_credential_name as valid_credential_name,  # noqa: PLC0414
)
from bureau.wire.service_route import (
    ServiceRoute as ServiceRoute,  # noqa: PLC0414
)
from bureau.wire.service_route import (
    parse_services as parse_services,  # noqa: PLC0414
)
from bureau.wire.service_route import (
    referenced_credentials as referenced_credentials,  # noqa: PLC0414
)
from bureau.wire.service_route import (
    services_json as services_json,  # noqa: PLC0414
)

VERSION = 1
BINDING_KEY = "bureau.binding"
ESCROW_RECIPIENT = "escrow:operator"
MATRIX_TOKEN = "MATRIX_TOKEN"  # noqa: S105 -- the name of a credential, not one
MATRIX_SERVICE = "matrix"
# Short: it ends up in machine_status, whose reasons are cut at 200 characters.
UNBOUND_REFUSED = (
    "unbound bundle refused (no bureau.binding, as upstream writes them; "
    "--allow-unbound-bundles serves them)"
)
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_digest(content: object) -> str:
    """Identity of a credentials event's content, as the daemon and launcher compare it."""
    return "sha256:" + hashlib.sha256(canonical_json(content)).hexdigest()


def rfc3339_now(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime:
    if not _RFC3339.fullmatch(value):
        raise ValueError(f"{shown(value)} is not an RFC 3339 time (e.g. 2026-12-31T23:59:59Z)")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def binding_digest(principal: str, services: dict[str, ServiceRoute]) -> str:
    payload = {"principal": principal, "services": services_json(services)}
    return "sha256:" + hashlib.sha256(canonical_json(payload)).hexdigest()


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
        if MATRIX_TOKEN in route.names():
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
