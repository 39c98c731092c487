"""The launcher's checks on a fleet bundle shard (launcher/fleet_bundles.py and
operator_trust.check_fleet), with real age keys and operator signatures. Only the bundle
the signed templates name, signed about its place in the fleet room by a pinned key
(unsigned only where the machine allows it), is taken. A shard not encrypted for this
machine, expired, bound to another bundle or to other services, or holding the principal's
Matrix identity is refused in one line naming the principal and the bundle; a name in both
bundles is refused by name, never by value; the recorded spec round-trips."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bureau import age_keys
from bureau.launcher import fleet_bundles
from bureau.launcher.children import LauncherError
from bureau.launcher.operator_trust import OperatorTrust
from bureau.secret import Secret
from bureau.wire import rooms
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
)
from bureau.wire.fleet_bundle import binding_principal, signing_target
from bureau.wire.launcher_protocol import EnsureRequest, FleetCredentials, RelayedCredentials
from bureau.wire.names import PrincipalRef
from bureau.wire.operator_keys import TrustedKeys
from bureau.wire.service_route import ServiceRoute
from bureau.wire.signing import OperatorKey, sign

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


OPERATOR = OperatorKey.generate()
TRUSTED = TrustedKeys({OPERATOR.key_id: OPERATOR.public})
TARGET = signing_target("ns/fleet/prod", "hub.example", "shared")


def _request(fleet: dict[str, Any] | None) -> EnsureRequest:
    own = {**_shard()[0].to_json()["content"], "principal": PRINCIPAL}
    shard = None if fleet is None else FleetCredentials.from_json(fleet)
    return EnsureRequest(
        PrincipalRef.from_user_id(PRINCIPAL),
        RelayedCredentials.from_json(own),
        fleet_credentials=shard,
    )


def _signed(target: str = TARGET, key: OperatorKey = OPERATOR) -> dict[str, Any]:
    content = _shard()[0].to_json()["content"]
    return {"state_key": "shared", "content": sign(content, rooms.CREDENTIALS, target, key)}


@pytest.mark.parametrize(
    ("ref", "fleet", "message"),
    [
        ("", _signed(), "fleet bundle shared for {p}: its signed templates name no fleet bundle"),
        ("${FLEET_ROOM}:shared", None, "{p}: its template names fleet bundle shared, which did "
         "not come with the request; refused"),
        ("${FLEET_ROOM}:other", _signed(), "fleet bundle shared for {p}: not other, the bundle "
         "its signed templates name; refused"),
        ("ns/fleet/staging:shared", _signed(), "template of {p}: credential_ref: names "
         "ns/fleet/staging:shared; only the fleet room's bundles"),
        ("${FLEET_ROOM}:shared", _signed(key=OperatorKey.generate()),
         "fleet bundle shared for {p}: signatures: signed by no operator key this machine trusts"),
        ("${FLEET_ROOM}:shared", _signed(target=TARGET + "#1"),
         "fleet bundle shared for {p}: signatures: the signature by"),
        ("${FLEET_ROOM}:shared", {**_signed(), "content": _shard()[0].to_json()["content"]},
         "fleet bundle shared for {p}: signatures: absent"),
    ],
)  # fmt: skip
def test_the_launcher_takes_only_the_signed_bundle_its_templates_name(
    tmp_path: Path, ref: str, fleet: dict[str, Any] | None, message: str
) -> None:
    trust = OperatorTrust(tmp_path, MACHINE, allow_unsigned=False)
    with pytest.raises(LauncherError) as caught:
        trust.check_fleet(_request(fleet), ref, TRUSTED)
    assert message.format(p=PRINCIPAL) in str(caught.value)


def test_the_signed_bundle_its_templates_name_is_taken() -> None:
    trust = OperatorTrust(Path("/nonexistent"), MACHINE, allow_unsigned=False)
    trust.check_fleet(_request(_signed()), "${FLEET_ROOM}:shared", TRUSTED)
    trust.check_fleet(_request(None), "", TRUSTED)
    unsigned = {"state_key": "shared", "content": _shard()[0].to_json()["content"]}
    lenient = OperatorTrust(Path("/nonexistent"), MACHINE, allow_unsigned=True)
    lenient.check_fleet(_request(unsigned), "${FLEET_ROOM}:shared", TRUSTED)
