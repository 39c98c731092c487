"""A principal's fleet bundle, on the launcher's side: the shard of the bundle its signed
templates name (operator_trust checks which, and the operator's signature), checked for
this machine, opened against its binding and merged into the principal's own credentials
and routes. Pure apart from the clock.

A proxy's recorded spec is its credentials content alone (as before fleet bundles), or,
with a fleet bundle, ``{"credentials": <content>, "fleet_credentials": {"state_key",
"content"}}``: public, as published, so that a restarted launcher decrypts both again.
Its digest is the running digest the daemon compares (launcher_protocol.running_digest).

Messages name the principal, the bundle and credential or service names; never values."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from bureau.errors import InputError
from bureau.launcher.children import LauncherError
from bureau.secret import Secret
from bureau.wire.credentials import (
    MATRIX_SERVICE,
    MATRIX_TOKEN,
    Opened,
    open_plaintext,
    parse_rfc3339,
)
from bureau.wire.fleet_bundle import binding_principal
from bureau.wire.launcher_protocol import FleetCredentials
from bureau.wire.service_route import ServiceRoute

CREDENTIALS = "credentials"
FLEET = "fleet_credentials"


def proxy_spec(credentials: dict[str, Any], fleet: FleetCredentials | None) -> dict[str, Any]:
    if fleet is None:
        return credentials
    return {CREDENTIALS: credentials, FLEET: fleet.to_json()}


def split_spec(
    principal: str, spec: dict[str, Any]
) -> tuple[dict[str, Any], FleetCredentials | None]:
    """(credentials content, fleet shard) of a recorded spec."""
    if FLEET not in spec:
        return spec, None
    content = spec.get(CREDENTIALS)
    if not isinstance(content, dict):
        raise LauncherError(f"proxy spec for {principal}: credentials: expected an object")
    try:
        fleet = FleetCredentials.from_json(spec[FLEET], f"fleet_credentials for {principal}")
    except InputError as exc:
        raise LauncherError(str(exc)) from None
    return content, fleet


def where(principal: str, fleet: FleetCredentials) -> str:
    return f"fleet bundle {fleet.state_key} for {principal}"


def check(principal: str, fleet: FleetCredentials, machine_names: Collection[str]) -> None:
    """Whether this machine may serve ``fleet`` at all: encrypted for it, not expired."""
    event = fleet.event
    if not set(machine_names).intersection(event.encrypted_for):
        raise LauncherError(f"{where(principal, fleet)} is not encrypted for this machine; refused")
    if event.expires_at and parse_rfc3339(event.expires_at).timestamp() <= time.time():
        raise LauncherError(f"{where(principal, fleet)} expired at {event.expires_at}")


def opened(
    principal: str, fleet: FleetCredentials, plaintext: bytes, *, unbound_allowed: bool
) -> Opened:
    """The shard's plaintext checked against its binding: ``fleet:<name>`` and the
    services the event carries (wire/fleet_bundle.py). A fleet bundle is nobody's Matrix
    identity: MATRIX_TOKEN and the built-in matrix route stay the principal's own."""
    at = where(principal, fleet)
    bound_as = replace(fleet.event, principal=binding_principal(fleet.name))
    try:
        found = open_plaintext(plaintext, bound_as, at, unbound_allowed=unbound_allowed)
    except InputError as exc:
        raise LauncherError(str(exc)) from None
    if MATRIX_TOKEN in found.credentials or MATRIX_SERVICE in fleet.event.services:
        raise LauncherError(
            f"{at}: holds {MATRIX_TOKEN} or a {MATRIX_SERVICE} route, a principal's own; refused"
        )
    return found


def merged(
    principal: str,
    fleet: FleetCredentials,
    own: tuple[dict[str, Secret], dict[str, ServiceRoute]],
    theirs: tuple[dict[str, Secret], dict[str, ServiceRoute]],
) -> tuple[dict[str, Secret], dict[str, ServiceRoute]]:
    """The principal's credentials and routes with the fleet bundle's; a name in both is
    refused, named (never its value): neither may silently replace the other."""
    at = where(principal, fleet)
    for kind, mine, other in (("credential", own[0], theirs[0]), ("service", own[1], theirs[1])):
        both = sorted(set(mine) & set(other))
        if both:
            raise LauncherError(
                f"{at}: {kind} {', '.join(both)} is also in the principal's own bundle; refused"
            )
    return {**own[0], **theirs[0]}, {**own[1], **theirs[1]}


def expiry(first: str | None, second: str | None) -> str | None:
    """The earlier of two expiries (None: never)."""
    times = [t for t in (first, second) if t]
    return min(times, key=lambda t: parse_rfc3339(t).timestamp()) if times else None
