"""``bureau credentials provision`` and ``bureau credentials list``: age-encrypt a
principal's credentials to one machine's published key and publish them in that machine's
config room (WIRE.md ``m.bureau.credentials``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bureau import age_keys
from bureau.errors import BureauError, InputError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.fleet_rooms import resolve_fleet_rooms
from bureau.operator.credentials import admin_client
from bureau.operator.signed import sign_as
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
    rfc3339_now,
)
from bureau.wire.files import MachineKey, OperatorCredentials
from bureau.wire.service_route import ServiceRoute, referenced_credentials

# Synapse refuses events over 65536 bytes; the envelope (IDs, hashes, signatures, auth and
# prev events) takes up to about 2.5 KiB of that. Measured: 46 KiB of plaintext fits.
MAX_CONTENT_BYTES = 65536 - 2560


@dataclass(frozen=True)
class CredentialRequest:
    machine: str  # full localpart
    principal: str  # full localpart
    services: dict[str, ServiceRoute]
    secrets: dict[str, Secret]
    services_where: str
    escrow_recipient: str | None = None
    expires_at: str | None = None


def machine_public_key(admin: MatrixHTTP, creds: OperatorCredentials, machine: str) -> str:
    """The machine's published key, accepted only if the machine itself published it."""
    server = creds.server_name
    machine_user = names.user_id(machine, server)
    machine_room = resolve_fleet_rooms(admin, creds.fleet, server).machine
    key = names.state_key(machine, server)
    for event in admin.room_state_events(machine_room):
        if event.get("type") != rooms.MACHINE_KEY or event.get("state_key") != key:
            continue
        if not event.get("content"):
            raise BureauError(f"{machine} is decommissioned (its key was removed)")
        if event.get("sender") != machine_user:
            raise BureauError(
                f"the m.bureau.machine_key of {machine} was published by {event.get('sender')}, "
                "not by the machine itself; refusing to encrypt to it"
            )
        return MachineKey.from_json(event.get("content"), "m.bureau.machine_key").public_key
    raise BureauError(f"{machine} has published no key; has it completed its first boot?")


def config_room_of(admin: MatrixHTTP, creds: OperatorCredentials, machine: str) -> str:
    alias = names.room_alias(machine, creds.server_name)
    room_id = admin.resolve_alias(alias)
    if room_id is None:
        raise BureauError(f"{alias}: no such room; provision the machine first")
    return room_id


def check_held(services: dict[str, ServiceRoute], secrets: dict[str, Secret], where: str) -> None:
    """Every credential the routes name is among the secrets (InputError naming them)."""
    missing = sorted(referenced_credentials(services) - set(secrets))
    if missing:
        raise InputError(
            where, None, f"names credentials that the secrets do not hold: {', '.join(missing)}"
        )


def build_event(
    request: CredentialRequest, creds: OperatorCredentials, machine_key: str, now: datetime | None
) -> CredentialsEvent:
    server = creds.server_name
    principal_user = names.user_id(request.principal, server)
    check_held(request.services, request.secrets, request.services_where)
    recipients = [machine_key]
    encrypted_for = [names.user_id(request.machine, server)]
    if request.escrow_recipient:
        recipients.append(request.escrow_recipient)
        encrypted_for.append(ESCROW_RECIPIENT)
    plaintext = bundle_plaintext(request.secrets, principal_user, request.services)
    return CredentialsEvent(
        principal=principal_user,
        encrypted_for=tuple(encrypted_for),
        keys=tuple(sorted(request.secrets)),
        ciphertext=age_keys.encrypt(plaintext, recipients),
        provisioned_by=creds.admin_user,
        provisioned_at=rfc3339_now(now),
        signature=binding_digest(principal_user, request.services),
        services=request.services,
        expires_at=request.expires_at,
    )


def provision(
    creds: OperatorCredentials, request: CredentialRequest, now: datetime | None = None
) -> CredentialsEvent:
    admin = admin_client(creds)
    machine_key = machine_public_key(admin, creds, request.machine)
    config_room = config_room_of(admin, creds, request.machine)
    event = build_event(request, creds, machine_key, now)
    content = sign_as(creds, rooms.CREDENTIALS, event.principal, event.to_json())
    size = len(json.dumps(content, separators=(",", ":")).encode())
    if size > MAX_CONTENT_BYTES:
        raise BureauError(
            f"the encrypted bundle makes a {size}-byte event; a Matrix state event holds at most "
            f"about {MAX_CONTENT_BYTES} bytes of content (roughly 46 KiB of secrets)"
        )
    admin.put_state(
        config_room,
        rooms.CREDENTIALS,
        names.state_key(request.principal, creds.server_name),
        content,
    )
    return event


def list_credentials(creds: OperatorCredentials, machine: str) -> list[dict[str, Any]]:
    """What is provisioned for a machine: names, services and times, never values."""
    admin = admin_client(creds)
    config_room = config_room_of(admin, creds, machine)
    listed = []
    for event in admin.room_state_events(config_room):
        if event.get("type") != rooms.CREDENTIALS or not event.get("content"):
            continue
        try:
            parsed = CredentialsEvent.from_json(event["content"], f"{event.get('state_key')}")
        except InputError as exc:
            listed.append({"state_key": event.get("state_key"), "invalid": str(exc)})
            continue
        listed.append(
            {
                "principal": parsed.principal,
                "keys": list(parsed.keys),
                "services": {n: r.upstream_url for n, r in sorted(parsed.services.items())},
                "encrypted_for": list(parsed.encrypted_for),
                "provisioned_by": parsed.provisioned_by,
                "provisioned_at": parsed.provisioned_at,
                "expires_at": parsed.expires_at,
            }
        )
    return sorted(listed, key=lambda item: str(item.get("principal", item.get("state_key"))))
