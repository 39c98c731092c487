"""A bundle whose routes name a credential it does not hold is refused when the launcher
loads it, as `bureau credentials provision` refuses to write one: such a route could only
ever answer 503. Crafted here by hand, since bureau's own tools never write one."""

from __future__ import annotations

from pathlib import Path

from conftest import Fleet
from launcher_proc import UNSIGNED, launcher
from machine_helpers import enroll
from processes import launcher_ensure

from bureau import age_keys
from bureau.operator.credentials import admin_client
from bureau.operator.principal_credentials import machine_public_key
from bureau.secret import Secret
from bureau.wire import names
from bureau.wire.credentials import (
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
    rfc3339_now,
)
from bureau.wire.service_route import ServiceRoute


def test_a_route_naming_a_credential_the_bundle_lacks_is_refused_at_load(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    server = fleet.hub.server_name
    principal = names.user_id(f"{fleet.name}/agent/short", server)
    services = {
        "api": ServiceRoute(
            "http://127.0.0.1:9", {"Authorization": "TOKEN", "X-Other": "ABSENT"}, "Bearer"
        )
    }
    key = machine_public_key(admin_client(fleet.creds), fleet.creds, machine.machine.localpart)
    plaintext = bundle_plaintext({"TOKEN": Secret("held-canary")}, principal, services)
    event = CredentialsEvent(
        principal=principal,
        encrypted_for=(names.user_id(machine.machine.localpart, server),),
        keys=("TOKEN",),
        ciphertext=age_keys.encrypt(plaintext, [key]),
        provisioned_by=fleet.creds.admin_user,
        provisioned_at=rfc3339_now(),
        signature=binding_digest(principal, services),
        services=services,
    )
    name, state = machine.machine.short_name, machine.state_dir
    with launcher(name, state, run_dir, *UNSIGNED) as running:
        reply = launcher_ensure(running.socket, principal, event.to_json())
    assert not reply["ok"]
    assert reply["error"] == (
        f"credentials for {principal}: its services name ABSENT, which the bundle lacks"
    )
    assert "held-canary" not in running.log()
