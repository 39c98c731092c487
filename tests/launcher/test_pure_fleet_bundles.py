"""The launcher's checks on a fleet bundle shard (launcher/fleet_bundles.py), with real age
keys: a shard not encrypted for this machine, expired, bound to another bundle or to other
services, or holding the principal's Matrix identity is refused in one line naming the
principal and the bundle; a name in both bundles is refused by name, never by value; the
recorded spec round-trips."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bureau import age_keys
from bureau.launcher import fleet_bundles
from bureau.launcher.children import LauncherError
from bureau.secret import Secret
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
)
from bureau.wire.fleet_bundle import binding_principal
from bureau.wire.launcher_protocol import FleetCredentials
from bureau.wire.service_route import ServiceRoute

MACHINE = "@ns/fleet/prod/machine/w1:hub.example"
PRINCIPAL = "@ns/fleet/prod/agent/a:hub.example"
VALUE = "fleet-secret-value-91c2"
SERVICES = {"fleet": ServiceRoute("https://api.example", {"X-Api-Key": "FLEET_TOKEN"})}
KEY, PUBLIC = age_keys.generate()


def _shard(
    secrets: dict[str, str] | None = None,
    *,
    recipients: tuple[str, ...] = (MACHINE,),
    bound_to: str = "shared",
    services: dict[str, ServiceRoute] | None = None,
    expires_at: str | None = None,
) -> tuple[FleetCredentials, bytes]:
    secrets = secrets if secrets is not None else {"FLEET_TOKEN": VALUE}
    services = SERVICES if services is None else services
    plaintext = bundle_plaintext(
        {k: Secret(v) for k, v in secrets.items()}, binding_principal(bound_to), services
    )
    event = CredentialsEvent(
        principal="",
        encrypted_for=(*recipients, ESCROW_RECIPIENT),
        keys=tuple(sorted(secrets)),
        ciphertext=age_keys.encrypt(plaintext, [PUBLIC]),
        provisioned_by="@admin:hub.example",
        provisioned_at="2026-11-28T00:00:00Z",
        signature=binding_digest(binding_principal(bound_to), services),
        services=SERVICES,
        expires_at=expires_at,
    )
    fleet = FleetCredentials.from_json({"state_key": "shared", "content": event.to_json()})
    return fleet, age_keys.decrypt(event.ciphertext, KEY)


def _opened(fleet: FleetCredentials, plaintext: bytes) -> Any:
    return fleet_bundles.opened(PRINCIPAL, fleet, plaintext, unbound_allowed=False)


def test_a_shard_for_this_machine_opens_and_merges() -> None:
    fleet, plaintext = _shard()
    fleet_bundles.check(PRINCIPAL, fleet, {MACHINE})
    found = _opened(fleet, plaintext)
    own = ({"TOKEN": Secret("own")}, {"api": ServiceRoute("https://own.example")})
    credentials, services = fleet_bundles.merged(
        PRINCIPAL, fleet, own, (found.credentials, fleet.event.services)
    )
    assert sorted(credentials) == ["FLEET_TOKEN", "TOKEN"]
    assert sorted(services) == ["api", "fleet"]
    spec = fleet_bundles.proxy_spec({"principal": PRINCIPAL}, fleet)
    assert fleet_bundles.split_spec(PRINCIPAL, spec) == ({"principal": PRINCIPAL}, fleet)
    assert fleet_bundles.split_spec(PRINCIPAL, {"principal": PRINCIPAL}) == (
        {"principal": PRINCIPAL},
        None,
    )


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        (
            {"recipients": ("@ns/fleet/prod/machine/w2:hub.example",)},
            f"fleet bundle shared for {PRINCIPAL} is not encrypted for this machine; refused",
        ),
        (
            {"expires_at": "2020-01-01T00:00:00Z"},
            f"fleet bundle shared for {PRINCIPAL} expired at 2020-01-01T00:00:00Z",
        ),
    ],
)
def test_a_shard_this_machine_may_not_serve_is_refused(shard: dict[str, Any], message: str) -> None:
    fleet, _ = _shard(**shard)
    with pytest.raises(LauncherError) as caught:
        fleet_bundles.check(PRINCIPAL, fleet, {MACHINE})
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ({"bound_to": "other"}, "bureau.binding: does not match this event's principal"),
        ({"services": {}}, "bureau.binding: does not match this event's principal"),
        ({"secrets": {"MATRIX_TOKEN": VALUE}}, "holds MATRIX_TOKEN or a matrix route"),
    ],
)
def test_a_shard_whose_plaintext_does_not_fit_is_refused(
    shard: dict[str, Any], message: str
) -> None:
    fleet, plaintext = _shard(**shard)
    with pytest.raises(LauncherError) as caught:
        _opened(fleet, plaintext)
    assert f"fleet bundle shared for {PRINCIPAL}" in str(caught.value)
    assert message in str(caught.value)
    assert VALUE not in str(caught.value)


def test_a_name_in_both_bundles_is_refused_by_name() -> None:
    fleet, plaintext = _shard({"FLEET_TOKEN": VALUE, "TOKEN": VALUE})
    found = _opened(fleet, plaintext)
    for own, named in (
        (({"TOKEN": Secret("own")}, {}), "credential TOKEN"),
        (({}, {"fleet": ServiceRoute("https://own.example")}), "service fleet"),
    ):
        with pytest.raises(LauncherError) as caught:
            fleet_bundles.merged(PRINCIPAL, fleet, own, (found.credentials, SERVICES))
        assert str(caught.value) == (
            f"fleet bundle shared for {PRINCIPAL}: {named} is also in the principal's own "
            "bundle; refused"
        )
        assert VALUE not in repr(caught.value)


def test_the_earlier_expiry_holds() -> None:
    late, early = "2031-01-01T00:00:00Z", "2030-01-01T00:00:00+00:00"
    assert fleet_bundles.expiry(late, early) == early
    assert fleet_bundles.expiry(None, late) == late
    assert fleet_bundles.expiry(None, None) is None
    assert replace(_shard()[0], state_key="shared#1").name == "shared"
