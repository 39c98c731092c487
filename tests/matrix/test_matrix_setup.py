"""`bureau matrix setup` against the real Synapse."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

from conftest import Fleet, RunningHub, fresh, one_line_error, run

from bureau.files import parse_env
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.secret import Secret
from bureau.wire import names, rooms


def _setup(hub: RunningHub, creds: Path, fleet: str, *extra: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    token_args = (
        ["--registration-token-file", "-"]
        if stdin
        else ["--registration-token-file", str(hub.token_file)]
    )
    return run(
        "bureau",
        "matrix",
        "setup",
        "--homeserver",
        hub.url,
        "--server-name",
        hub.server_name,
        *token_args,
        "--credential-file",
        creds,
        "--fleet",
        fleet,
        *extra,
        stdin=stdin,
    )


def _levels(client: MatrixHTTP, room_id: str) -> dict[str, object]:
    for event in client.room_state_events(room_id):
        if event["type"] == "m.room.power_levels":
            return dict(event["content"])
    raise AssertionError("no power levels")


def test_setup_creates_rooms_and_credential_file_then_changes_nothing(
    hub: RunningHub, tmp_path: Path
) -> None:
    fleet = f"{fresh('s')}/fleet/prod"
    creds_path = tmp_path / "bureau-creds"
    first = _setup(hub, creds_path, fleet)
    assert first.returncode == 0, first.stderr
    assert "created space room" in first.stdout
    assert "created fleet room" in first.stdout

    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    values = parse_env(creds_path.read_text(), "creds")
    assert set(values) == {
        "MATRIX_HOMESERVER_URL",
        "MATRIX_ADMIN_USER",
        "MATRIX_ADMIN_TOKEN",
        "MATRIX_REGISTRATION_TOKEN",
        "MATRIX_SPACE_ROOM",
        "MATRIX_SYSTEM_ROOM",
        "MATRIX_TEMPLATE_ROOM",
        "MATRIX_PIPELINE_ROOM",
        "MATRIX_ARTIFACT_ROOM",
        "MATRIX_DEV_TEAM_ROOM",
        "BUREAU_SERVER_NAME",
        "BUREAU_FLEET",
        "BUREAU_OPERATOR_SIGNING_KEY",
    }
    assert values["MATRIX_ADMIN_USER"] == f"@bureau-admin:{hub.server_name}"
    assert values["MATRIX_REGISTRATION_TOKEN"] == hub.token.reveal()
    assert values["BUREAU_FLEET"] == fleet

    creds = credentials.load(creds_path)
    admin = credentials.admin_client(creds)
    assert admin.whoami()[0] == creds.admin_user
    server = hub.server_name
    space = admin.resolve_alias(names.room_alias(names.namespace_of(fleet), server))
    assert space == creds.space_room
    fleet_room = admin.resolve_alias(names.room_alias(fleet, server))
    machine_room = admin.resolve_alias(names.room_alias(f"{fleet}/machine", server))
    service_room = admin.resolve_alias(names.room_alias(f"{fleet}/service", server))
    template_room = admin.resolve_alias(
        names.room_alias(names.template_room_localpart(fleet), server)
    )
    assert fleet_room
    assert machine_room
    assert service_room
    assert template_room
    template_levels = _levels(admin, template_room)  # templates are admins'; talk is free
    assert (template_levels["events_default"], template_levels["state_default"]) == (0, 100)
    assert _levels(admin, fleet_room)["state_default"] == 100
    machine_levels = _levels(admin, machine_room)
    assert machine_levels["users"] == {creds.admin_user: 100}
    assert machine_levels["events"][rooms.MACHINE_KEY] == 0  # type: ignore[index]
    children = {
        e["state_key"] for e in admin.room_state_events(space) if e["type"] == "m.space.child"
    }
    namespace_rooms = {
        admin.resolve_alias(names.room_alias(f"{names.namespace_of(fleet)}/{role}", server))
        for role in ("system", "template", "pipeline", "artifact", "dev")
    }
    assert children == {fleet_room, machine_room, service_room, *namespace_rooms}
    for room_id in (space, fleet_room, machine_room, service_room, template_room):
        join_rules = [
            e for e in admin.room_state_events(room_id) if e["type"] == "m.room.join_rules"
        ]
        assert join_rules[0]["content"]["join_rule"] == "invite"

    before = creds_path.read_bytes()
    second = _setup(hub, creds_path, fleet, stdin=hub.token.reveal() + "\n")
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("nothing to change")
    assert creds_path.read_bytes() == before


def test_setup_refuses_a_credential_file_for_another_fleet(hub: RunningHub, tmp_path: Path) -> None:
    creds_path = tmp_path / "bureau-creds"
    assert _setup(hub, creds_path, f"{fresh('a')}/fleet/prod").returncode == 0
    before = creds_path.read_bytes()
    result = _setup(hub, creds_path, f"{fresh('b')}/fleet/prod")
    assert result.returncode == 1
    assert "BUREAU_FLEET" in one_line_error(result)
    assert creds_path.read_bytes() == before


def test_setup_errors_are_one_line(hub: RunningHub, tmp_path: Path) -> None:
    creds_path = tmp_path / "bureau-creds"
    missing = run(
        "bureau",
        "matrix",
        "setup",
        "--homeserver",
        hub.url,
        "--server-name",
        hub.server_name,
        "--registration-token-file",
        tmp_path / "nope",
        "--credential-file",
        creds_path,
    )
    assert missing.returncode == 1
    assert one_line_error(missing) == f"bureau: {tmp_path / 'nope'}: no such file"

    bad_fleet = _setup(hub, creds_path, "prod")
    assert bad_fleet.returncode == 2
    assert one_line_error(bad_fleet).startswith("bureau: --fleet: 'prod' is not a fleet")

    wrong_token = tmp_path / "wrong"
    wrong_token.write_text("not-the-token\n")
    wrong_token.chmod(0o600)
    other_admin = run(
        "bureau",
        "matrix",
        "setup",
        "--homeserver",
        hub.url,
        "--server-name",
        hub.server_name,
        "--registration-token-file",
        wrong_token,
        "--credential-file",
        creds_path,
        "--fleet",
        f"{fresh('w')}/fleet/x",
    )
    assert other_admin.returncode == 1
    assert "refuses the password derived from this registration token" in one_line_error(
        other_admin
    )
    assert not creds_path.exists()

    unreachable = run(
        "bureau",
        "matrix",
        "setup",
        "--homeserver",
        "http://127.0.0.1:1",
        "--server-name",
        hub.server_name,
        "--registration-token-file",
        hub.token_file,
        "--credential-file",
        creds_path,
    )
    assert unreachable.returncode == 1
    assert "cannot reach homeserver http://127.0.0.1:1" in one_line_error(unreachable)

    usage = run("bureau", "matrix", "setup", "--homeserver", hub.url)
    assert usage.returncode == 2
    assert "the following arguments are required" in one_line_error(usage)


def test_admin_password_is_the_wire_derivation(hub: RunningHub, fleet: Fleet) -> None:
    # Another implementation (the upstream Go Bureau) must be able to log in as the admin
    # with nothing but the registration token.
    assert fleet.creds.admin_user == f"@bureau-admin:{hub.server_name}"
    password = hashlib.sha256(b"bureau-admin-password:" + hub.token.reveal().encode()).hexdigest()
    login = MatrixHTTP(hub.url).login_password("bureau-admin", Secret(password))
    assert login.user_id == f"@bureau-admin:{hub.server_name}"
    MatrixHTTP(hub.url, login.access_token).logout()
