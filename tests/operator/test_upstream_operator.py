"""The operator side of a mixed fleet, against the real Synapse: a hub set up the upstream
way (tests/upstream_shapes.py, transcribed from upstream's Go source) is read, checked and
left alone by our commands, and what ours write is what upstream's tools read."""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import upstream_shapes as upstream
from conftest import Fleet, RunningHub, fresh, one_line_error, run
from machine_helpers import boot, provision
from upstream_shapes import (
    STANDARD_ROOMS,
    UpstreamHub,
    credential_file_text,
    read_credential_file,
    setup_hub,
    standard_room_power_levels,
)

from bureau.cli.main import build_parser
from bureau.errors import InputError, MatrixError
from bureau.launcher.first_boot import load_bootstrap
from bureau.machine_state import load_session
from bureau.matrix.client import MatrixHTTP, segment
from bureau.operator import credentials
from bureau.wire import names, rooms
from bureau.wire.files import FleetCache, OperatorCredentials

ROOM_IDS = {suffix: f"!{suffix}room:example.org" for suffix, _, _, _ in STANDARD_ROOMS}


def _upstream_file(directory: Path, **change: str) -> Path:
    text = credential_file_text(
        homeserver="http://127.0.0.1:6167",
        admin_user="@bureau-admin:example.org",
        admin_token="syt_YWRtaW4_token",
        registration_token="0123abcd",
        space_room="!space:example.org",
        room_ids=ROOM_IDS,
    )
    for key, value in change.items():
        text = "".join(
            f"{key}={value}\n" if line.startswith(f"{key}=") else f"{line}\n"
            for line in text.splitlines()
        )
    path = directory / "upstream-creds"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def upstream_hub(hub: RunningHub, tmp_path: Path) -> UpstreamHub:
    return setup_hub(hub.url, hub.server_name, hub.token.reveal(), fresh("u"), tmp_path)


def test_upstream_credential_file_is_read(tmp_path: Path) -> None:
    path = _upstream_file(tmp_path)
    creds = credentials.load(path)
    assert creds.server_name == "example.org"  # from MATRIX_ADMIN_USER, as upstream does
    assert creds.fleet == "bureau/fleet/prod"
    assert not creds.recorded_fleet
    assert creds.space_room == "!space:example.org"
    assert creds.namespace_rooms == ROOM_IDS
    assert credentials.load(path, "acme/fleet/edge").fleet == "acme/fleet/edge"
    # Written back, upstream's keys keep their values and order; ours follow.
    env = creds.to_env()
    upstream_keys = list(read_credential_file(path.read_text()))
    assert list(env)[: len(upstream_keys)] == upstream_keys
    assert {k: env[k] for k in upstream_keys} == read_credential_file(path.read_text())
    assert list(env)[len(upstream_keys) :] == ["BUREAU_SERVER_NAME", "BUREAU_FLEET"]


def test_a_key_this_version_does_not_know_is_kept(tmp_path: Path) -> None:
    path = _upstream_file(tmp_path)
    path.write_text(path.read_text() + "MATRIX_OBSERVE_ROOM=!observe:example.org\n")
    creds = credentials.load(path)
    assert creds.to_env()["MATRIX_OBSERVE_ROOM"] == "!observe:example.org"
    again = OperatorCredentials.from_env(creds.to_env(), "again")
    assert again == replace(creds, recorded_fleet=True)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"MATRIX_SYSTEM_ROOM": "#bureau/system:example.org"}, "MATRIX_SYSTEM_ROOM: '#bureau"),
        ({"MATRIX_SPACE_ROOM": "space"}, "MATRIX_SPACE_ROOM: 'space' is not a room ID"),
        ({"MATRIX_ADMIN_USER": "bureau-admin"}, "MATRIX_ADMIN_USER: 'bureau-admin' is not"),
        ({"MATRIX_REGISTRATION_TOKEN": ""}, "MATRIX_REGISTRATION_TOKEN: missing"),
    ],
)
def test_a_bad_upstream_credential_file_is_one_line_naming_the_key(
    tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    path = _upstream_file(tmp_path, **change)
    with pytest.raises(InputError) as caught:
        credentials.load(path)
    assert str(caught.value).startswith(f"{path}: {expected}")
    result = run("bureau", "machine", "list", "--credential-file", path)
    assert result.returncode == 1
    assert one_line_error(result).startswith(f"bureau: {path}: {expected}")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    if not parser._subparsers:
        options = {o for a in parser._actions for o in a.option_strings}
        if "--credential-file" in options:
            found.append(path if "--fleet" in options else (*path, "WITHOUT --fleet"))
    return found


def test_every_command_that_reads_a_credential_file_takes_fleet() -> None:
    """Upstream's file names no fleet: every command must be able to be told one."""
    commands = _commands(build_parser())
    assert len(commands) > 15
    assert [c for c in commands if c[-1] == "WITHOUT --fleet"] == []


def test_commands_work_with_upstreams_credential_file(
    upstream_hub: UpstreamHub, tmp_path: Path
) -> None:
    creds = ("--credential-file", str(upstream_hub.credential_file), "--fleet", upstream_hub.fleet)
    for argv in (
        ("machine", "list", "--json"),
        ("template", "list"),
        ("agent", "list"),
        ("machine", "provision", "machine/w1", "--output", str(tmp_path / "bootstrap.json")),
    ):
        result = run("bureau", *argv, *creds)
        assert result.returncode == 0, (argv, result.stderr)
    bootstrap = json.loads((tmp_path / "bootstrap.json").read_text())
    assert bootstrap["machine_name"] == f"{upstream_hub.fleet}/machine/w1"
    listed = run("bureau", "machine", "list", "--json", *creds)
    assert [r["name"] for r in json.loads(listed.stdout)] == [f"{upstream_hub.fleet}/machine/w1"]


# -- step 2: upstream's rooms and m.bureau.dev_team --------------------------------------


def _state(admin: MatrixHTTP, room_id: str, event_type: str) -> dict[str, object] | None:
    return admin.get_state(room_id, event_type, "")


def test_setup_creates_upstreams_rooms_and_dev_team(fleet: Fleet) -> None:
    admin = credentials.admin_client(fleet.creds)
    server, ns = fleet.hub.server_name, names.namespace_of(fleet.name)
    values = read_credential_file(fleet.credential_file.read_text())  # as upstream reads it
    space = admin.resolve_alias(f"#{ns}:{server}")
    assert space is not None
    assert values["MATRIX_SPACE_ROOM"] == space
    children = {
        e["state_key"] for e in admin.room_state_events(space) if e["type"] == "m.space.child"
    }
    dev_team = {"room": f"#{ns}/dev:{server}"}  # upstream lib/schema/rooms.go:23
    admin_user = fleet.creds.admin_user
    for suffix, _, _, key in STANDARD_ROOMS:
        room = admin.resolve_alias(f"#{ns}/{suffix}:{server}")
        assert room is not None, suffix
        # What upstream's `matrix user create --operator` reads (matrix/user.go:316).
        assert values[key] == room
        assert room in children
        levels = _state(admin, room, "m.room.power_levels") or {}
        assert rooms.power_level_drift(levels, standard_room_power_levels(suffix, admin_user)) == []
    for localpart in (ns, *(f"{ns}/{s}" for s, _, _, _ in STANDARD_ROOMS), fleet.name):
        room = admin.resolve_alias(f"#{localpart}:{server}")
        assert room is not None
        assert _state(admin, room, "m.bureau.dev_team") == dev_team, localpart
    for suffix in ("machine", "service"):
        room = admin.resolve_alias(f"#{fleet.name}/{suffix}:{server}")
        assert room is not None
        assert _state(admin, room, "m.bureau.dev_team") == dev_team


def _doctor(credential_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("bureau", "matrix", "doctor", "--credential-file", credential_file, *extra)


def test_an_existing_hub_gets_upstreams_rooms_on_the_next_run(fleet: Fleet) -> None:
    """A hub set up before these rooms existed: no system, pipeline, artifact or dev
    room, no m.bureau.dev_team, a credential file without their keys."""
    admin = credentials.admin_client(fleet.creds)
    server, ns = fleet.hub.server_name, names.namespace_of(fleet.name)
    for suffix in ("system", "pipeline", "artifact", "dev"):
        alias = f"#{ns}/{suffix}:{server}"
        admin.send("DELETE", f"/_matrix/client/v3/directory/room/{segment(alias)}", what="unalias")
    template = admin.resolve_alias(f"#{ns}/template:{server}")
    machine_room = admin.resolve_alias(f"#{fleet.name}/machine:{server}")
    assert template is not None
    assert machine_room is not None
    for room in (template, machine_room, fleet.creds.space_room):
        admin.put_state(room, "m.bureau.dev_team", "", {})
    old = {
        k: v
        for k, v in fleet.creds.to_env().items()
        if k not in ("MATRIX_SYSTEM_ROOM", "MATRIX_PIPELINE_ROOM", "MATRIX_ARTIFACT_ROOM")
        and k != "MATRIX_DEV_TEAM_ROOM"
    }
    fleet.credential_file.write_text("".join(f"{k}={v}\n" for k, v in old.items()))

    missing = _doctor(fleet.credential_file)
    assert missing.returncode == 1
    for suffix in ("system", "pipeline", "artifact", "dev"):
        assert f"FAIL  room #{ns}/{suffix}:{server}: missing" in missing.stdout
    assert f"FAIL  m.bureau.dev_team in #{ns}/template:{server}: missing" in missing.stdout
    assert f"FAIL  m.bureau.dev_team in #{fleet.name}/machine:{server}: missing" in missing.stdout

    again = run(
        "bureau",
        "matrix",
        "setup",
        "--homeserver",
        fleet.hub.url,
        "--server-name",
        server,
        "--registration-token-file",
        fleet.hub.token_file,
        "--credential-file",
        fleet.credential_file,
        "--fleet",
        fleet.name,
    )
    assert again.returncode == 0, again.stderr
    assert f"created system room #{ns}/system:{server}" in again.stdout
    assert f"published m.bureau.dev_team in #{ns}/template:{server}" in again.stdout
    healthy = _doctor(fleet.credential_file)
    assert healthy.returncode == 0, healthy.stdout
    values = read_credential_file(fleet.credential_file.read_text())
    assert values["MATRIX_DEV_TEAM_ROOM"] == admin.resolve_alias(f"#{ns}/dev:{server}")


@pytest.mark.slow
def test_matrix_doctor_fix_creates_upstreams_rooms_and_records_them(fleet: Fleet) -> None:
    admin = credentials.admin_client(fleet.creds)
    server, ns = fleet.hub.server_name, names.namespace_of(fleet.name)
    alias = f"#{ns}/pipeline:{server}"
    admin.send("DELETE", f"/_matrix/client/v3/directory/room/{segment(alias)}", what="unalias")
    assert f"FAIL  room {alias}: missing" in _doctor(fleet.credential_file).stdout
    fixed = _doctor(fleet.credential_file, "--fix")
    assert fixed.returncode == 0, fixed.stdout
    room = admin.resolve_alias(alias)
    assert room is not None
    assert read_credential_file(fleet.credential_file.read_text())["MATRIX_PIPELINE_ROOM"] == room

    # A file written before the namespace's rooms were recorded (ours until now).
    text = fleet.credential_file.read_text()
    fleet.credential_file.write_text(
        "".join(f"{line}\n" for line in text.splitlines() if "_ARTIFACT_ROOM=" not in line)
    )
    stale = _doctor(fleet.credential_file)
    assert stale.returncode == 1
    assert "MATRIX_ARTIFACT_ROOM is missing, not !" in stale.stdout
    assert _doctor(fleet.credential_file, "--fix").returncode == 0
    artifact = admin.resolve_alias(f"#{ns}/artifact:{server}")
    assert (
        read_credential_file(fleet.credential_file.read_text())["MATRIX_ARTIFACT_ROOM"] == artifact
    )


# -- step 3: upstream's power levels, and a doctor that leaves an upstream hub alone ------

ADMIN, MACHINE = "@bureau-admin:example.org", "@bureau/fleet/prod/machine/w1:example.org"


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (rooms.space_power_levels(ADMIN), upstream.admin_only_power_levels(ADMIN)),
        (rooms.template_room_power_levels(ADMIN), upstream.admin_only_power_levels(ADMIN)),
        (rooms.dev_room_power_levels(ADMIN), upstream.admin_only_power_levels(ADMIN)),
        (rooms.system_room_power_levels(ADMIN), upstream.system_room_power_levels(ADMIN)),
        (rooms.pipeline_room_power_levels(ADMIN), upstream.pipeline_room_power_levels(ADMIN)),
        (rooms.artifact_room_power_levels(ADMIN), upstream.artifact_room_power_levels(ADMIN)),
        (rooms.fleet_power_levels(ADMIN), upstream.fleet_room_power_levels(ADMIN)),
        (rooms.machine_room_power_levels(ADMIN), upstream.machine_room_power_levels(ADMIN)),
        (rooms.service_room_power_levels(ADMIN), upstream.service_room_power_levels(ADMIN)),
        (
            rooms.config_room_power_levels(ADMIN, MACHINE),
            upstream.config_room_power_levels(ADMIN, MACHINE),
        ),
    ],
    ids=[
        "space",
        "template",
        "dev",
        "system",
        "pipeline",
        "artifact",
        "fleet",
        "machine",
        "service",
        "config",
    ],
)
def test_power_levels_are_upstreams_exactly(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours == theirs
    # What we create adds only what upstream leaves unset (OURS: m.space.parent).
    added = rooms.with_ours(ours)
    assert {**added, "events": {}} == {**theirs, "events": {}}
    assert {k: v for k, v in added["events"].items() if k not in theirs["events"]} == {
        "m.space.parent": 100
    }
    assert {k: added["events"][k] for k in theirs["events"]} == theirs["events"]


def _with_machine(levels: dict[str, Any], machine_user: str) -> dict[str, Any]:
    return {**levels, "users": {**levels["users"], machine_user: 50}}


def test_rooms_we_create_hold_upstreams_levels(fleet: Fleet, tmp_path: Path) -> None:
    admin = credentials.admin_client(fleet.creds)
    server, admin_user = fleet.hub.server_name, fleet.creds.admin_user
    machine = provision(fleet, tmp_path)
    expected = {
        f"#{names.namespace_of(fleet.name)}:{server}": upstream.admin_only_power_levels(admin_user),
        f"#{fleet.name}:{server}": upstream.fleet_room_power_levels(admin_user),
        f"#{fleet.name}/machine:{server}": upstream.machine_room_power_levels(admin_user),
        # Upstream's provision grants the machine 50 in the service room (provision.go:371).
        f"#{fleet.name}/service:{server}": _with_machine(
            upstream.service_room_power_levels(admin_user), machine.user_id
        ),
        f"#{machine.localpart}:{server}": upstream.config_room_power_levels(
            admin_user, machine.user_id
        ),
    }
    for alias, theirs in expected.items():
        room = admin.resolve_alias(alias)
        assert room is not None
        actual = admin.get_state(room, "m.room.power_levels", "") or {}
        assert {k: actual[k] for k in theirs if k != "events"} == {
            k: v for k, v in theirs.items() if k != "events"
        }, alias
        assert actual["events"] == {**theirs["events"], "m.space.parent": 100}, alias


def test_matrix_doctor_passes_an_upstream_hub_and_fix_changes_nothing(
    upstream_hub: UpstreamHub, hub: RunningHub
) -> None:
    """Set up, fleet created and a machine provisioned by upstream's code: every check
    passes, and --fix writes nothing anywhere (every state event keeps its ID)."""
    machine = upstream.provision(upstream_hub, hub.token.reveal(), "w1")
    admin = upstream_hub.admin
    room_ids = [
        upstream_hub.space,
        *upstream_hub.rooms.values(),
        *upstream_hub.fleet_rooms.values(),
        machine.config_room,
        machine.ops_room,
    ]
    before = {room: upstream.room_state_ids(admin, room) for room in room_ids}
    file_before = upstream_hub.credential_file.read_bytes()
    doctor = (
        "--credential-file",
        str(upstream_hub.credential_file),
        "--fleet",
        upstream_hub.fleet,
    )
    checked = run("bureau", "matrix", "doctor", *doctor)
    assert checked.returncode == 0, checked.stdout
    assert "FAIL" not in checked.stdout
    alias = upstream_hub.alias(machine.localpart)
    assert f"ok    power levels of {alias}: as upstream's" in checked.stdout
    for suffix, _, _, _ in STANDARD_ROOMS:
        assert f"ok    power levels of #{upstream_hub.namespace}/{suffix}:" in checked.stdout
    fixed = run("bureau", "matrix", "doctor", *doctor, "--fix")
    assert fixed.returncode == 0, fixed.stdout
    assert "fixed" not in fixed.stdout
    assert {room: upstream.room_state_ids(admin, room) for room in room_ids} == before
    assert upstream_hub.credential_file.read_bytes() == file_before


# -- step 4: decommission as upstream's, and our deactivation ----------------------------

PUBLIC = "age1" + "q" * 58


def test_decommission_leaves_what_upstreams_provision_takes_back(
    upstream_hub: UpstreamHub, hub: RunningHub
) -> None:
    """A machine provisioned and running the upstream way (key, status, config, a
    credentials event, a reservation and a drain in its ops room): decommission leaves
    {} for each as upstream's does, no membership anywhere, and the account deactivated;
    upstream's provision would now take the name back."""
    machine = upstream.provision(upstream_hub, hub.token.reveal(), "w1")
    admin = upstream_hub.admin
    login = MatrixHTTP(hub.url).login_password(machine.localpart, machine.password)
    own = MatrixHTTP(hub.url, login.access_token)
    key = f"{machine.localpart}:{hub.server_name}"
    machine_room = upstream_hub.fleet_rooms["machine"]
    for room in (machine.config_room, machine.ops_room, *upstream_hub.fleet_rooms.values()):
        own.join(room)
    own.put_state(machine_room, upstream.MACHINE_KEY, key, upstream.machine_key(PUBLIC))
    own.put_state(
        machine_room, upstream.MACHINE_STATUS, key, upstream.machine_status(login.user_id)
    )
    principal = f"{upstream_hub.fleet}/agent/a:{hub.server_name}"
    assignment = {"principals": [{"principal": f"@{principal}", "auto_start": True}]}
    admin.put_state(machine.config_room, upstream.MACHINE_CONFIG, key, assignment)
    credentials_event = {"version": 1, "ciphertext": "x", "encrypted_for": [login.user_id]}
    admin.put_state(machine.config_room, upstream.CREDENTIALS, principal, credentials_event)
    own.put_state(machine.ops_room, upstream.RESERVATION, key, {"mode": "exclusive"})
    own.put_state(machine.ops_room, upstream.MACHINE_DRAIN, "", {"services": []})
    assert upstream.verify_full_decommission(upstream_hub, machine) != []

    creds = ("--credential-file", str(upstream_hub.credential_file), "--fleet", upstream_hub.fleet)
    done = run("bureau", "machine", "decommission", "machine/w1", *creds)
    assert done.returncode == 0, done.stderr
    for what in ("machine key", "machine status", "machine config", "reservation", "drain"):
        assert f"{what} tombstoned" in done.stdout
    assert f"account {login.user_id} deactivated" in done.stdout
    # Removed by decommission itself, as upstream's (which deactivates nothing), not
    # merely by the deactivation that follows.
    for room in (*upstream_hub.rooms.values(), *upstream_hub.fleet_rooms.values()):
        if room not in (upstream_hub.rooms["artifact"], upstream_hub.rooms["dev"]):
            assert f"removed from {room}" in done.stdout
    for room in (machine.config_room, machine.ops_room):
        assert f"removed from {room}" in done.stdout

    assert admin.get_state(machine_room, upstream.MACHINE_KEY, key) == {}
    assert admin.get_state(machine_room, upstream.MACHINE_STATUS, key) == {}
    assert admin.get_state(machine.config_room, upstream.MACHINE_CONFIG, key) == {}
    assert admin.get_state(machine.config_room, upstream.CREDENTIALS, principal) == {}
    assert admin.get_state(machine.ops_room, upstream.RESERVATION, key) == {}
    assert admin.get_state(machine.ops_room, upstream.MACHINE_DRAIN, "") == {}
    every_room = [
        *upstream_hub.rooms.values(),
        *upstream_hub.fleet_rooms.values(),
        machine.config_room,
        machine.ops_room,
    ]
    for room in every_room:
        member = admin.get_state(room, "m.room.member", login.user_id) or {}
        assert member.get("membership") in (None, "leave"), room
    assert upstream.verify_full_decommission(upstream_hub, machine) == []
    with pytest.raises(MatrixError) as caught:  # upstream's revoke; ours decommissions so
        own.whoami()
    assert caught.value.status == 401

    again = run("bureau", "machine", "decommission", "machine/w1", *creds)
    assert again.returncode == 0, again.stderr
    assert "was already decommissioned" in again.stdout


# -- step 5: upstream's fleet cache, session.json and bootstrap.json ---------------------

NIX_KEY = "cache.example:" + "A" * 43 + "="
GO_AMPERSAND = "\\u0026"  # how Go's encoder writes & in a string


def test_fleet_cache_without_name_is_read_and_we_write_none_when_not_given(
    fleet: Fleet,
) -> None:
    # lib/schema/events_fleet.go:274 FleetCacheContent: name and the two compose fields
    # are omitempty; public_keys is always written.
    upstream_cache: dict[str, Any] = {
        "url": "http://attic.internal:5580/main",
        "public_keys": [NIX_KEY],
        "compose_template": "bureau/template:nix-builder",
        "default_system": "x86_64-linux",
    }
    cache = FleetCache.from_json(upstream_cache)
    assert (cache.url, cache.name, cache.public_keys) == (upstream_cache["url"], None, (NIX_KEY,))
    assert FleetCache.from_json({**upstream_cache, "name": "main"}).name == "main"
    with pytest.raises(InputError, match=r"^m\.bureau\.fleet_cache: name: expected a string$"):
        FleetCache.from_json({**upstream_cache, "name": 7})
    with pytest.raises(InputError, match=r"^m\.bureau\.fleet_cache: public_keys\[0\]: "):
        FleetCache.from_json({**upstream_cache, "public_keys": ["nope"]})

    published = run(
        "bureau",
        "fleet",
        "cache",
        "set",
        "--url",
        upstream_cache["url"],
        "--public-key",
        NIX_KEY,
        "--credential-file",
        fleet.credential_file,
    )
    assert published.returncode == 0, published.stderr
    admin = credentials.admin_client(fleet.creds)
    room = admin.resolve_alias(f"#{fleet.name}:{fleet.hub.server_name}")
    assert room is not None
    content = admin.get_state(room, "m.bureau.fleet_cache", "")
    assert content == {"url": upstream_cache["url"], "public_keys": [NIX_KEY]}

    # Over upstream's event, `cache set` keeps the fields it does not set (upstream's
    # compose fields), and a name left out is gone, as it would be written fresh.
    admin.put_state(room, "m.bureau.fleet_cache", "", {**upstream_cache, "name": "main"})
    moved = "http://attic.internal:5581/main"
    args = ["--public-key", NIX_KEY, "--credential-file", str(fleet.credential_file)]
    again = run("bureau", "fleet", "cache", "set", "--url", moved, *args)
    assert again.returncode == 0, again.stderr
    assert admin.get_state(room, "m.bureau.fleet_cache", "") == {
        "url": moved,
        "public_keys": [NIX_KEY],
        "compose_template": "bureau/template:nix-builder",
        "default_system": "x86_64-linux",
    }


@pytest.mark.parametrize("order", ["go", "reversed"])
def test_session_json_written_compact_by_go_is_read(tmp_path: Path, order: str) -> None:
    # lib/service/session.go:21 SessionData and :88 SaveSession: json.Marshal (compact, no
    # newline, field order as declared, <>& escaped as \u003c \u003e \u0026), 0600.
    fields = [
        ("homeserver_url", "http://matrix.internal:6167"),
        ("user_id", "@bureau/fleet/prod/machine/w1:bureau.local"),
        ("access_token", "syt_a&b"),
    ]
    if order == "reversed":
        fields.reverse()
    escaped = [(k, v.replace("&", GO_AMPERSAND)) for k, v in fields]
    body = "{" + ",".join(f'"{k}":"{v}"' for k, v in escaped) + "}"
    assert " " not in body
    assert GO_AMPERSAND in body
    (tmp_path / "session.json").write_text(body)
    (tmp_path / "session.json").chmod(0o600)
    session = load_session(tmp_path)
    assert session is not None
    assert session.homeserver_url == "http://matrix.internal:6167"
    assert session.user_id == "@bureau/fleet/prod/machine/w1:bureau.local"
    assert session.access_token.reveal() == "syt_a&b"
    assert session.device_id is None


def _go_bootstrap(config: dict[str, str], **later: str) -> str:
    """lib/bootstrap/config.go:82 WriteConfig: MarshalIndent with two spaces, in the
    struct's field order (config.go:23), and a newline; ``later`` are fields a newer
    upstream adds."""
    order = ("homeserver_url", "server_name", "machine_name", "password", "fleet_prefix")
    fields = {**{k: config[k] for k in order}, **later}
    body = ",\n".join(f'  "{k}": "{v}"' for k, v in fields.items())
    return "{\n" + body + "\n}\n"


def test_bootstrap_from_a_later_upstream_boots(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    ours = json.loads(machine.bootstrap.read_text())
    machine.bootstrap.write_text(_go_bootstrap(ours, ops_room_alias="#x/ops:bureau.local"))
    booted = boot(machine, "--key-storage", "plain")
    assert booted.returncode == 0, booted.stderr
    assert not machine.bootstrap.exists()  # read, used and deleted


def test_bootstrap_with_a_new_field_still_checks_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    good = {
        "homeserver_url": "http://matrix.internal:6167",
        "server_name": "bureau.local",
        "machine_name": "bureau/fleet/prod/machine/w1",
        "password": "ab" * 32,
        "fleet_prefix": "bureau/fleet/prod",
    }
    for change, problem in (
        ({}, None),
        ({"machine_name": "bureau/fleet/prod/w1"}, "machine_name: "),
        ({"homeserver_url": "ftp://x"}, "homeserver_url: 'ftp://x' is not an http"),
        ({"password": "short"}, "password: expected 64 lowercase hex characters"),
    ):
        path.write_text(_go_bootstrap({**good, **change}, attestation="tpm2", zz_new="1"))
        path.chmod(0o600)
        if problem is None:
            assert load_bootstrap(path, "machine/w1").machine_name == good["machine_name"]
            continue
        with pytest.raises(InputError) as caught:
            load_bootstrap(path, "machine/w1")
        assert str(caught.value).startswith(f"{path}: {problem}"), caught.value
