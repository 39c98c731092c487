"""`bureau machine decommission` against the real Synapse, with the machine's launcher,
daemon and a principal's proxy running: everything about the machine is tombstoned, its
daemon sees the kick, stops every principal and exits 77, its account is deactivated, and
the same name can be provisioned and enrolled again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Fleet, one_line_error, run
from launcher_proc import daemon, launcher, proxies_under
from machine_helpers import (
    assign,
    boot,
    enroll,
    eventually,
    provision,
    provision_credentials,
    proxy_socket,
    served_token,
    services_file,
)
from processes import echo_upstream

from bureau.errors import MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.secret import Secret
from bureau.wire import names, rooms

PRINCIPAL = "agent/alpha"


def _decommission(fleet: Fleet, name: str):  # type: ignore[no-untyped-def]
    return run(
        "bureau", "machine", "decommission", name, "--credential-file", fleet.credential_file
    )


@pytest.mark.slow
def test_decommission_stops_the_machine_and_the_name_can_come_back(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path / "first")
    name, state = machine.machine.short_name, machine.state_dir
    server = fleet.hub.server_name
    session = json.loads((state / "session.json").read_text())
    with echo_upstream() as upstream, launcher(name, state, run_dir):
        services = services_file(tmp_path, upstream)
        assign(fleet, machine)
        result = provision_credentials(fleet, machine, PRINCIPAL, services, "TOKEN=decom-1\n")
        assert result.returncode == 0
        with daemon(name, state, run_dir) as the_daemon:
            assert eventually(lambda: served_token(proxy_socket(run_dir))) == "Bearer decom-1"
            result = _decommission(fleet, name)
            assert result.returncode == 0, result.stderr
            assert f"{machine.machine.localpart} is decommissioned" in result.stdout
            assert "machine key tombstoned" in result.stdout
            assert "machine status tombstoned" in result.stdout
            assert the_daemon.proc.wait(timeout=60) == 77
            assert proxies_under(run_dir) == []
            assert not proxy_socket(run_dir).exists()
            assert "every principal was stopped" in the_daemon.log()

    admin = credentials.admin_client(fleet.creds)
    key = names.state_key(machine.machine.localpart, server)
    config_room = admin.resolve_alias(names.room_alias(machine.machine.localpart, server))
    machine_room = admin.resolve_alias(names.room_alias(f"{fleet.name}/machine", server))
    assert config_room is not None
    assert machine_room is not None
    principal_key = names.state_key(f"{fleet.name}/{PRINCIPAL}", server)
    assert admin.get_state(config_room, rooms.CREDENTIALS, principal_key) == {}
    # Upstream's tombstones (cmd/bureau/machine/decommission.go:159-185): {} for the
    # config, the key and the status, which its provision checks before taking a name back.
    assert admin.get_state(config_room, rooms.MACHINE_CONFIG, key) == {}
    assert admin.get_state(machine_room, rooms.MACHINE_KEY, key) == {}
    assert admin.get_state(machine_room, rooms.MACHINE_STATUS, key) == {}
    member = admin.get_state(config_room, "m.room.member", machine.machine.user_id)
    assert member is not None
    assert member["membership"] == "leave"
    # The account is gone: its old token and its password log in no more.
    with pytest.raises(MatrixError) as refused:
        MatrixHTTP(fleet.hub.url, Secret(session["access_token"])).whoami()
    assert refused.value.status == 401

    listed = run("bureau", "machine", "list", "--json", "--credential-file", fleet.credential_file)
    (record,) = [r for r in json.loads(listed.stdout) if r["name"] == machine.machine.localpart]
    assert record["state"] == "decommissioned"
    assert record["last_heartbeat"] is None  # the status tombstone is no heartbeat

    # Again: nothing left to do, and it says so.
    again = _decommission(fleet, name)
    assert again.returncode == 0, again.stderr
    assert "was already decommissioned" in again.stdout

    # The same name, provisioned and enrolled afresh.
    bootstrap = tmp_path / "second" / "bootstrap.json"
    bootstrap.parent.mkdir()
    result = run(
        "bureau",
        "machine",
        "provision",
        name,
        "--credential-file",
        fleet.credential_file,
        "--output",
        bootstrap,
    )
    assert result.returncode == 0, result.stderr
    second = type(machine.machine)(
        fleet, name, machine.machine.localpart, bootstrap, tmp_path / "second" / "state"
    )
    booted = boot(second, "--key-storage", "plain")
    assert booted.returncode == 0, booted.stderr
    listed = run("bureau", "machine", "list", "--json", "--credential-file", fleet.credential_file)
    (record,) = [r for r in json.loads(listed.stdout) if r["name"] == machine.machine.localpart]
    assert record["state"] == "enrolled"
    assert record["public_key"] == (second.state_dir / "machine-key.pub").read_text().strip()


def test_decommission_of_an_unknown_machine_is_one_line(fleet: Fleet, tmp_path: Path) -> None:
    provision(fleet, tmp_path)  # another machine exists; this one does not
    result = _decommission(fleet, "machine/nosuch")
    assert result.returncode == 1
    assert "no such machine" in one_line_error(result)
