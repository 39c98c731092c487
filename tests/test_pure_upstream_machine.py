"""Upstream Bureau's shapes on the machine side, each written from upstream's code (the file
and line are cited beside each fixture; bureau-foundation/bureau): credentials events and
their plaintexts as upstream's tools write them, read by ours; ours as upstream's launcher
reads them. Pure."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bureau import age_keys
from bureau.credentials_event import (
    BINDING_KEY,
    CredentialsEvent,
    ServiceRoute,
    binding_digest,
    bundle_plaintext,
    open_plaintext,
    unbound_services,
)
from bureau.errors import InputError
from bureau.secret import Secret

SERVER = "bureau.local"
MACHINE = f"@bureau/fleet/prod/machine/gpu-box:{SERVER}"
PRINCIPAL = f"@bureau/fleet/prod/agent/pm:{SERVER}"
OPERATOR = f"@bureau-admin:{SERVER}"
AGE_KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def go_json(value: dict[str, str]) -> bytes:
    """encoding/json's Marshal of a map[string]string: keys sorted, compact, and <, > and &
    escaped as \\u003c, \\u003e and \\u0026."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def go_base64(data: bytes) -> str:
    # lib/sealed/sealed.go:106: base64.StdEncoding (padded, standard alphabet).
    return base64.b64encode(data).decode()


# lib/credential/provision.go:151-159: version, principal, encrypted_for (the machine, and
# "escrow:operator" with an escrow key, :121-128), keys, ciphertext, provisioned_by,
# provisioned_at (time.RFC3339 in UTC); no services, and signature "" since its field has
# no omitempty (lib/schema/events_machine.go:444) while expires_at has (:448).
def upstream_principal_event(ciphertext: bytes = b"age-encryption.org/v1\n") -> dict[str, Any]:
    return {
        "version": 1,
        "principal": PRINCIPAL,
        "encrypted_for": [MACHINE, "escrow:operator"],
        # lib/schema/events_machine_test.go:481: keys need not be sorted.
        "keys": ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "github-token"],
        "ciphertext": go_base64(ciphertext),
        "provisioned_by": OPERATOR,
        "provisioned_at": "2026-02-09T18:30:00Z",
        "signature": "",
    }


# lib/credential/provision_fleet.go:184-191: no Principal at all, so ref.UserID's
# MarshalText writes "" (lib/ref/user.go:112-116).
FLEET_EVENT: dict[str, Any] = {
    "version": 1,
    "principal": "",
    "encrypted_for": [MACHINE, f"@bureau/fleet/prod/machine/other:{SERVER}"],
    "keys": ["ATTIC_PUSH_TOKEN", "CACHIX_AUTH_TOKEN"],
    "ciphertext": go_base64(b"fleet"),
    "provisioned_by": OPERATOR,
    "provisioned_at": "2026-02-09T18:30:00Z",
    "signature": "",
}

# cmd/bureau-daemon/admin.go:168-182: the daemon's provision-credential re-encryption; a
# fresh bundle's encrypted_for is the recipients' age keys (:180), and keys are every
# plaintext entry, sorted (cmd/bureau-launcher/handlers.go:929-934): a binding of ours too.
DAEMON_REWRITE: dict[str, Any] = {
    "version": 1,
    "principal": PRINCIPAL,
    "encrypted_for": [AGE_KEY],
    "keys": ["MATRIX_TOKEN", BINDING_KEY, "github-pat"],
    "ciphertext": go_base64(b"rewritten"),
    "provisioned_by": f"@bureau/fleet/prod/service/github:{SERVER}",
    "provisioned_at": "2026-02-09T19:30:00+01:00",
    "signature": "",
}


def test_upstream_events_parse_and_write_back_as_they_came() -> None:
    for content in (upstream_principal_event(), FLEET_EVENT, DAEMON_REWRITE):
        event = CredentialsEvent.from_json(content)
        assert event.services == {}
        assert event.signature == ""
        assert event.to_json() == content
    assert CredentialsEvent.from_json(upstream_principal_event()).keys == (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "github-token",
    )
    assert CredentialsEvent.from_json(FLEET_EVENT).principal == ""
    # Go writes a nil slice as null; expires_at "" is absent to upstream (omitempty).
    sparse = {**upstream_principal_event(), "keys": None, "expires_at": ""}
    assert CredentialsEvent.from_json(sparse).keys == ()
    assert CredentialsEvent.from_json(sparse).expires_at is None
    # A field a later upstream adds is no reason to refuse.
    assert CredentialsEvent.from_json({**FLEET_EVENT, "credential_ref": "x"}).principal == ""


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"keys": ["API KEY"]}, "keys"),
        ({"keys": ["bureau.other"]}, "keys"),  # reserved, the binding aside
        ({"keys": ["-x"]}, "keys"),
        ({"principal": "@Bad Name:x"}, "principal"),
        ({"signature": None}, "signature"),
        ({"provisioned_by": 5}, "provisioned_by"),
        ({"services": {}}, "services"),  # present, it must route something
        ({"expires_at": "tomorrow"}, "expires_at"),
    ],
)
def test_what_is_still_refused_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as refused:
        CredentialsEvent.from_json({**upstream_principal_event(), **change}, "credentials")
    assert str(refused.value).startswith(f"credentials: {field}: ")
    assert "\n" not in str(refused.value)


def _sealed(plaintext: bytes) -> tuple[Secret, CredentialsEvent]:
    key, public = age_keys.generate()
    content = upstream_principal_event(age_keys.encrypt(plaintext, [public]))
    return key, CredentialsEvent.from_json(content)


def test_upstream_plaintext_is_unbound_and_served_only_where_allowed() -> None:
    # lib/credential/provision.go:104: json.Marshal of the map[string]string it was given.
    plaintext = go_json(
        {"MATRIX_TOKEN": "syt_a&b<c>", "OPENAI_API_KEY": "sk-test", "github-token": "ghp_x"}
    )
    key, event = _sealed(plaintext)
    opened = open_plaintext(
        age_keys.decrypt(event.ciphertext, key), event, "c", unbound_allowed=True
    )
    assert opened.bound is False
    assert {k: v.reveal() for k, v in opened.credentials.items()} == {
        "MATRIX_TOKEN": "syt_a&b<c>",
        "OPENAI_API_KEY": "sk-test",
        "github-token": "ghp_x",
    }
    assert "syt_" not in repr(opened)
    with pytest.raises(InputError) as refused:
        open_plaintext(plaintext, event, "credentials for @p", unbound_allowed=False)
    message = str(refused.value)
    assert message.startswith("credentials for @p: the bundle is unbound")
    assert "--allow-unbound-bundles" in message
    assert "\n" not in message and "sk-test" not in message


def test_a_bound_bundle_stays_bound_whatever_the_event_says() -> None:
    services = {"api": ServiceRoute("https://api.example", {"Authorization": "TOKEN"}, "Bearer")}
    plaintext = bundle_plaintext({"TOKEN": Secret("v")}, PRINCIPAL, services)
    event = CredentialsEvent.from_json(
        {**upstream_principal_event(), "services": {"api": services["api"].to_json()}}
    )
    opened = open_plaintext(plaintext, event, "c", unbound_allowed=False)
    assert opened.bound is True
    assert list(opened.credentials) == ["TOKEN"]  # the binding is not a credential
    # Its services stripped (by a subverted daemon, or an upstream tool's rewrite): not an
    # unbound bundle, even where those are served.
    stripped = CredentialsEvent.from_json(upstream_principal_event())
    for allowed in (False, True):
        with pytest.raises(InputError, match="binds services this event does not carry"):
            open_plaintext(plaintext, stripped, "c", unbound_allowed=allowed)
    other = {"api": ServiceRoute("https://evil.example", {"Authorization": "TOKEN"}, "Bearer")}
    moved = CredentialsEvent.from_json(
        {**upstream_principal_event(), "services": {"api": other["api"].to_json()}}
    )
    with pytest.raises(InputError, match="does not match"):
        open_plaintext(plaintext, moved, "c", unbound_allowed=True)


def test_our_plaintext_is_what_upstreams_launcher_reads() -> None:
    """cmd/bureau-launcher/handlers.go:281 unmarshals the plaintext into a
    map[string]string, and proxy.go:241-249 hands every entry but the three MATRIX_ ones to
    the proxy as a credential of that name: ours must be a flat object of strings (it is),
    and the binding must be no name upstream gives a meaning to."""
    services = {"api": ServiceRoute("https://api.example", {"Authorization": "TOKEN"}, "Bearer")}
    plaintext = bundle_plaintext(
        {"TOKEN": Secret("v"), "MATRIX_TOKEN": Secret("syt")}, PRINCIPAL, services
    )
    data = json.loads(plaintext)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
    assert data[BINDING_KEY] == binding_digest(PRINCIPAL, services)
    assert BINDING_KEY not in ("MATRIX_HOMESERVER_URL", "MATRIX_TOKEN", "MATRIX_USER_ID")


def test_an_unbound_bundles_routes_never_carry_its_matrix_identity_elsewhere() -> None:
    template = {"api": ServiceRoute("https://api.example", {"x-api-key": "OPENAI_API_KEY"})}
    credentials = {"MATRIX_TOKEN": Secret("syt"), "OPENAI_API_KEY": Secret("sk")}
    routes = unbound_services(template, credentials, "http://hub.internal:8008/", "c")
    assert routes["api"] == template["api"]
    # The built-in route goes to the machine's own homeserver, whatever the daemon sent.
    assert routes["matrix"].to_json() == {
        "upstream_url": "http://hub.internal:8008",
        "inject_headers": {"Authorization": "MATRIX_TOKEN"},
        "auth_scheme": "Bearer",
    }
    assert "matrix" not in unbound_services(template, {"OPENAI_API_KEY": Secret("sk")}, "h", "c")
    stealing = {"x": ServiceRoute("https://evil.example", {"Authorization": "MATRIX_TOKEN"})}
    with pytest.raises(InputError) as refused:
        unbound_services(stealing, credentials, "http://hub", "credentials for @p")
    assert str(refused.value) == (
        "credentials for @p: services: x: MATRIX_TOKEN goes only to the built-in matrix service"
    )
    posing = {"matrix": ServiceRoute("https://evil.example", {"Authorization": "OPENAI_API_KEY"})}
    with pytest.raises(InputError, match="services: matrix: is built in"):
        unbound_services(posing, credentials, "http://hub", "c")
    with pytest.raises(InputError) as nothing:
        unbound_services({}, {"OPENAI_API_KEY": Secret("sk")}, "http://hub", "c")
    assert nothing.value.field == "services"
