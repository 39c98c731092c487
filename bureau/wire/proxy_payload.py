"""What the launcher writes to a proxy's stdin: one JSON object, then EOF. Pure.

{"principal": "@...", "services": {name: route}, "credentials": {name: value},
 "expires_at": "RFC 3339" | null}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bureau.errors import InputError
from bureau.secret import Secret
from bureau.wire.credentials import parse_rfc3339
from bureau.wire.names import InvalidName, PrincipalRef
from bureau.wire.route_checks import has_control_character, valid_credential_name
from bureau.wire.service_route import ServiceRoute, parse_services, services_json

WHERE = "proxy payload (stdin)"


@dataclass(frozen=True)
class ProxyPayload:
    principal: str  # a PrincipalRef's user ID
    services: dict[str, ServiceRoute]
    credentials: dict[str, Secret]
    expires_at: str | None = None

    @property
    def expires_epoch(self) -> float | None:
        return parse_rfc3339(self.expires_at).timestamp() if self.expires_at else None

    @classmethod
    def from_bytes(cls, raw: bytes) -> ProxyPayload:
        try:
            obj = json.loads(raw)
        except ValueError:
            raise InputError(WHERE, None, "not JSON") from None
        if not isinstance(obj, dict):
            raise InputError(WHERE, None, "expected an object")
        raw_principal = obj.get("principal")
        if not isinstance(raw_principal, str):
            raise InputError(WHERE, "principal", "expected a user ID")
        try:
            principal = PrincipalRef.from_user_id(raw_principal).user_id
        except InvalidName as exc:
            raise InputError(WHERE, "principal", str(exc)) from None
        raw_credentials = obj.get("credentials")
        if not isinstance(raw_credentials, dict):
            raise InputError(WHERE, "credentials", "expected an object")
        credentials = {}
        for name, value in raw_credentials.items():
            if not valid_credential_name(name) or not isinstance(value, str):
                raise InputError(WHERE, f"credentials.{name}", "expected name -> string")
            if has_control_character(value):
                # A header value with CR/LF could inject headers of its own.
                raise InputError(WHERE, f"credentials.{name}", "contains a control character")
            credentials[name] = Secret(value)
        expires_at = obj.get("expires_at")
        if expires_at is not None:
            try:
                parse_rfc3339(expires_at)
            except (ValueError, TypeError):
                raise InputError(WHERE, "expires_at", "expected an RFC 3339 time") from None
        services = parse_services(obj.get("services"), f"{WHERE}: services")
        return cls(principal, services, credentials, expires_at)

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "principal": self.principal,
            "services": services_json(self.services),
            "credentials": {k: v.reveal() for k, v in self.credentials.items()},
            "expires_at": self.expires_at,
        }
        return json.dumps(body).encode()
