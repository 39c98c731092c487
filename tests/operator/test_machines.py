"""`bureau machine provision` and `bureau machine list` against the real Synapse."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from conftest import Fleet, fresh, one_line_error, run
from machine_helpers import boot, provision

from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.secret import Secret
from bureau.wire import names, rooms


def test_provision_writes_bootstrap_and_prepares_rooms(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    key = fleet.creds.signing_key
    assert key is not None
    assert stat.S_IMODE(machine.bootstrap.stat().st_mode) == 0o600
    text = machine.bootstrap.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2) + "\n"
    assert data == {
        "homeserver_url": fleet.hub.url,
        "server_name": fleet.hub.server_name,
        "machine_name": machine.localpart,
        "password": data["password"],
        "fleet_prefix": fleet.name,
        # OURS: the operator keys first boot pins (upstream's reader ignores the field).
        "operator_keys": {key.key_id: key.public.base64},
    }
    assert len(data["password"]) == 64

    admin = credentials.admin_client(fleet.creds)
    server = fleet.hub.server_name
    config_room = admin.resolve_alias(names.room_alias(machine.localpart, server))
    assert config_room is not None
    state = admin.room_state_events(config_room)
    levels = next(e["content"] for e in state if e["type"] == "m.room.power_levels")
    assert levels["users"] == {fleet.creds.admin_user: 100, machine.user_id: 50}
    assert levels["events_default"] == 100
    assert levels["state_default"] == 0
    assert levels["events"][rooms.MACHINE_CONFIG] == 50
    assert levels["events"][rooms.CREDENTIALS] == 100
    members = {
        e["state_key"]: e["content"]["membership"] for e in state if e["type"] == "m.room.member"
    }
    assert members[machine.user_id] == "invite"
    for alias in (fleet.name, f"{fleet.name}/machine", f"{fleet.name}/service"):
        room_id = admin.resolve_alias(names.room_alias(alias, server))
        assert room_id is not None
        invited = [
            e
            for e in admin.room_state_events(room_id)
            if e["type"] == "m.room.member" and e["state_key"] == machine.user_id
        ]
        assert invited[0]["content"]["membership"] == "invite"
    # As upstream's provision: invited to the system and pipeline rooms, and at level 50
    # there and in the service room (its daemon invites principals into them).
    for role in ("system", "pipeline", "service"):
        localpart = (
            f"{fleet.name}/service" if role == "service"
            else rooms.namespace_room_localpart(fleet.name, role)
        )  # fmt: skip
        room_id = admin.resolve_alias(names.room_alias(localpart, server))
        assert room_id is not None, role
        room_state = admin.room_state_events(room_id)
        levels = next(e["content"] for e in room_state if e["type"] == "m.room.power_levels")
        assert levels["users"][machine.user_id] == 50, role
        assert levels["users"][fleet.creds.admin_user] == 100, role
        member = [e for e in room_state if e["type"] == "m.room.member"]
        assert {e["state_key"]: e["content"]["membership"] for e in member}[
            machine.user_id
        ] == "invite", role

    # The one-time password works (the machine can log in exactly once it is handed over).
    login = MatrixHTTP(fleet.hub.url).login_password(
        machine.localpart, Secret(machine.one_time_password)
    )
    assert login.user_id == machine.user_id
    MatrixHTTP(fleet.hub.url, login.access_token).logout()


def test_provision_to_stdout_with_a_full_name(fleet: Fleet) -> None:
    full = f"{fleet.name}/machine/{fresh('s')}"
    result = run("bureau", "machine", "provision", full, "--credential-file", fleet.credential_file)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["machine_name"] == full
    assert "one-time password" in result.stderr


def test_list_follows_provisioned_then_enrolled(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    listed = run("bureau", "machine", "list", "--credential-file", fleet.credential_file, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {
            "name": machine.localpart,
            "user_id": machine.user_id,
            "state": "provisioned",
            "public_key": None,
            "last_heartbeat": None,
        }
    ]

    assert boot(machine).returncode == 0
    public_key = (machine.state_dir / "machine-key.pub").read_text().strip()
    listed = run("bureau", "machine", "list", "--credential-file", fleet.credential_file, "--json")
    (record,) = json.loads(listed.stdout)
    assert record["state"] == "enrolled"
    assert record["public_key"] == public_key

    table = run("bureau", "machine", "list", "--credential-file", fleet.credential_file)
    assert table.stdout.splitlines()[0].split() == [
        "NAME",
        "STATE",
        "PUBLIC",
        "KEY",
        "LAST",
        "HEARTBEAT",
    ]
    assert table.stdout.splitlines()[1].split()[:3] == [machine.localpart, "enrolled", public_key]


@pytest.mark.slow
def test_provision_refusals(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    assert boot(machine).returncode == 0
    again = run(
        "bureau",
        "machine",
        "provision",
        machine.short_name,
        "--credential-file",
        fleet.credential_file,
    )
    assert again.returncode == 1
    assert "is enrolled" in one_line_error(again)
    assert again.stdout == ""

    pending = provision(fleet, tmp_path / "p")
    twice = run(
        "bureau",
        "machine",
        "provision",
        pending.short_name,
        "--credential-file",
        fleet.credential_file,
    )
    assert twice.returncode == 1
    assert "already exists and has not enrolled" in one_line_error(twice)

    exists = tmp_path / "taken.json"
    exists.write_text("keep me")
    taken = run(
        "bureau",
        "machine",
        "provision",
        f"machine/{fresh('t')}",
        "--credential-file",
        fleet.credential_file,
        "--output",
        exists,
    )
    assert taken.returncode == 1
    assert "exists; remove it or choose another --output" in one_line_error(taken)
    assert exists.read_text() == "keep me"

    bad_name = run(
        "bureau", "machine", "provision", "agent/alpha", "--credential-file", fleet.credential_file
    )
    assert bad_name.returncode == 2
    assert one_line_error(bad_name).startswith("bureau: NAME: 'agent/alpha' is not a machine")

    loose = tmp_path / "loose-creds"
    loose.write_bytes(fleet.credential_file.read_bytes())
    loose.chmod(0o644)
    refused = run("bureau", "machine", "list", "--credential-file", loose)
    assert refused.returncode == 1
    assert f"{loose}: mode 0644 lets other users read it" in one_line_error(refused)
