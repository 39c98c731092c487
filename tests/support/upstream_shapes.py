"""Upstream Bureau's operator-side shapes, transcribed from its Go source
(bureau-foundation/bureau; the file and line are cited at each), so that tests can check
that we read, accept and leave alone what upstream writes.

Nothing here imports bureau.wire.rooms or bureau.operator: a fixture computed by the code under
test would prove nothing. The Matrix calls go through bureau.matrix.client, the transport
only, with the request bodies upstream sends."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau.matrix.client import MatrixHTTP
from bureau.secret import Secret

# Event types, as lib/schema names them (events.go:74-322, events_fleet.go:34-141,
# authorization.go:40, reservation.go:26-57, ticket and relay types).
MACHINE_KEY = "m.bureau.machine_key"
MACHINE_INFO = "m.bureau.machine_info"
MACHINE_STATUS = "m.bureau.machine_status"
MACHINE_CONFIG = "m.bureau.machine_config"
CREDENTIALS = "m.bureau.credentials"
DEV_TEAM = "m.bureau.dev_team"
RESERVATION = "m.bureau.reservation"
MACHINE_DRAIN = "m.bureau.machine_drain"


def admin_protected_events() -> dict[str, int]:
    """lib/schema/events.go:350 AdminProtectedEvents."""
    return {
        "m.room.avatar": 100,
        "m.room.canonical_alias": 100,
        "m.room.encryption": 100,
        "m.room.history_visibility": 100,
        "m.room.join_rules": 100,
        "m.room.name": 100,
        "m.room.power_levels": 100,
        "m.room.server_acl": 100,
        "m.room.tombstone": 100,
        "m.room.topic": 100,
        "m.space.child": 100,
        DEV_TEAM: 100,
    }


def admin_only_power_levels(admin: str, member_settable: tuple[str, ...] = ()) -> dict[str, Any]:
    """cmd/bureau/matrix/setup.go:446 adminOnlyPowerLevels: the space, the template and
    the dev room."""
    events = admin_protected_events()
    for event_type in member_settable:
        events[event_type] = 0
    return {
        "ban": 100,
        "invite": 100,
        "kick": 100,
        "redact": 50,
        "events_default": 0,
        "state_default": 100,
        "notifications": {"room": 50},
        "users": {admin: 100},
        "users_default": 0,
        "events": events,
    }


def _room_power_levels(
    users: dict[str, int],
    events: dict[str, int],
    events_default: int,
    state_default: int,
    invite: int,
) -> dict[str, Any]:
    """lib/schema/events.go:382 roomPowerLevels."""
    return {
        "users": users,
        "users_default": 0,
        "events": events,
        "events_default": events_default,
        "state_default": state_default,
        "ban": 100,
        "kick": 100,
        "invite": invite,
        "redact": 100,
        "notifications": {"room": 100},
    }


def config_room_power_levels(admin: str, machine: str) -> dict[str, Any]:
    """lib/schema/events.go:468 ConfigRoomPowerLevels (users: events.go:402)."""
    events = admin_protected_events()
    events[MACHINE_CONFIG] = 50
    events[CREDENTIALS] = 100
    events["m.bureau.layout"] = 0
    events["m.room.message"] = 0
    return _room_power_levels({admin: 100, machine: 50}, events, 100, 0, 50)


def pipeline_room_power_levels(admin: str) -> dict[str, Any]:
    """lib/schema/events.go:495 PipelineRoomPowerLevels."""
    events = admin_protected_events()
    events["m.bureau.pipeline"] = 100
    return _room_power_levels({admin: 100}, events, 100, 100, 50)


def system_room_power_levels(admin: str) -> dict[str, Any]:
    """lib/schema/events.go:516 SystemRoomPowerLevels."""
    events = admin_protected_events()
    events["m.bureau.token_signing_key"] = 0
    return {
        "users": {admin: 100},
        "users_default": 0,
        "events": events,
        "events_default": 0,
        "state_default": 100,
        "ban": 100,
        "kick": 100,
        "invite": 50,
        "redact": 50,
        "notifications": {"room": 50},
    }


def artifact_room_power_levels(admin: str) -> dict[str, Any]:
    """lib/schema/events_artifact.go:16 ArtifactRoomPowerLevels."""
    return _room_power_levels({admin: 100}, admin_protected_events(), 100, 100, 100)


def _member_room(admin: str, events: dict[str, int], invite: int) -> dict[str, Any]:
    return {
        "users": {admin: 100},
        "users_default": 0,
        "events": events,
        "events_default": 0,
        "state_default": 100,
        "ban": 100,
        "kick": 100,
        "invite": invite,
        "redact": 50,
        "notifications": {"room": 50},
    }


def machine_room_power_levels(admin: str) -> dict[str, Any]:
    """lib/schema/events_fleet.go:148 MachineRoomPowerLevels."""
    events = admin_protected_events()
    for event_type in (
        MACHINE_KEY,
        MACHINE_INFO,
        MACHINE_STATUS,
        "m.bureau.webrtc_offer",
        "m.bureau.webrtc_answer",
    ):
        events[event_type] = 0
    return _member_room(admin, events, 100)


def service_room_power_levels(admin: str) -> dict[str, Any]:
    """lib/schema/events_fleet.go:182 ServiceRoomPowerLevels."""
    events = admin_protected_events()
    events["m.bureau.service"] = 0
    return _member_room(admin, events, 50)


def fleet_room_power_levels(admin: str) -> dict[str, Any]:
    """lib/schema/events_fleet.go:210 FleetRoomPowerLevels."""
    events = admin_protected_events()
    for event_type in ("m.bureau.ha_lease", "m.bureau.service_status", "m.bureau.fleet_alert"):
        events[event_type] = 0
    for event_type in (
        "m.bureau.fleet_service",
        "m.bureau.machine_definition",
        "m.bureau.fleet_config",
        "m.bureau.fleet_cache",
        "m.bureau.environment_build",
        "m.bureau.provenance_roots",
        "m.bureau.provenance_policy",
    ):
        events[event_type] = 100
    return _member_room(admin, events, 100)


def ops_room_power_levels(admin: str) -> dict[str, Any]:
    """lib/schema/reservation.go:556 OpsRoomPowerLevels."""
    events = admin_protected_events()
    for event_type in (
        "m.bureau.ticket",
        "m.bureau.ticket_config",
        "m.bureau.relay_link",
        "m.bureau.drain_status",
    ):
        events[event_type] = 25
    events[RESERVATION] = 50
    events[MACHINE_DRAIN] = 50
    events["m.bureau.relay_policy"] = 100
    events["m.room.message"] = 0
    events["m.bureau.service_ready"] = 0
    return _room_power_levels({admin: 100}, events, 100, 100, 100)


# cmd/bureau/matrix/doctor.go:234 standardRoomsForNamespace: suffix, display name, topic,
# credential file key, power levels.
STANDARD_ROOMS = (
    ("system", "Bureau System", "Operational messages", "MATRIX_SYSTEM_ROOM"),
    ("template", "Bureau Template", "Sandbox templates", "MATRIX_TEMPLATE_ROOM"),
    ("pipeline", "Bureau Pipeline", "Pipeline definitions", "MATRIX_PIPELINE_ROOM"),
    ("artifact", "Bureau Artifact", "Artifact coordination", "MATRIX_ARTIFACT_ROOM"),
    (
        "dev",
        "Bureau Dev Team",
        "Development team coordination and work routing",
        "MATRIX_DEV_TEAM_ROOM",
    ),
)


def standard_room_power_levels(suffix: str, admin: str) -> dict[str, Any]:
    """doctor.go:223 standardRoom.powerLevels: powerLevelsFunc, else adminOnlyPowerLevels
    with the room's memberSettableEventTypes (none for template and dev)."""
    special = {
        "system": system_room_power_levels,
        "pipeline": pipeline_room_power_levels,
        "artifact": artifact_room_power_levels,
    }
    return special[suffix](admin) if suffix in special else admin_only_power_levels(admin)


def credential_file_text(
    *,
    homeserver: str,
    admin_user: str,
    admin_token: str,
    registration_token: str,
    space_room: str,
    room_ids: dict[str, str],
) -> str:
    """cmd/bureau/matrix/setup.go:382 writeCredentials, byte for byte."""
    lines = [
        "# Bureau Matrix credentials",
        "# Written by bureau matrix setup. Do not edit manually.",
        "#",
        f"MATRIX_HOMESERVER_URL={homeserver}",
        f"MATRIX_ADMIN_USER={admin_user}",
        f"MATRIX_ADMIN_TOKEN={admin_token}",
        f"MATRIX_REGISTRATION_TOKEN={registration_token}",
        f"MATRIX_SPACE_ROOM={space_room}",
    ]
    lines += [f"{key}={room_ids[suffix]}" for suffix, _, _, key in STANDARD_ROOMS]
    return "\n".join(lines) + "\n"


def read_credential_file(text: str) -> dict[str, str]:
    """cmd/bureau/cli/session_config.go:252 ReadCredentialFile: how upstream's tools read
    a credential file (ours included): trimmed lines, ``#`` comments, split at the first
    ``=``, values taken as they are."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise AssertionError(f"line {number}: expected KEY=VALUE, got {line!r}")
        out[key] = value
    return out


def admin_password(registration_token: str) -> Secret:
    """cmd/bureau/cli/session_config.go:340 DeriveAdminPassword."""
    digest = hashlib.sha256(b"bureau-admin-password:" + registration_token.encode())
    return Secret(digest.hexdigest())


@dataclass(frozen=True)
class UpstreamHub:
    """What upstream's `bureau matrix setup --namespace NS` and `bureau fleet create
    NS/fleet/NAME` leave on a homeserver."""

    url: str
    server: str
    namespace: str
    fleet: str
    admin: MatrixHTTP
    admin_user: str
    space: str
    rooms: dict[str, str]  # standard room suffix -> room ID
    fleet_rooms: dict[str, str]  # "fleet", "machine", "service" -> room ID
    credential_file: Path

    def alias(self, localpart: str) -> str:
        return f"#{localpart}:{self.server}"


def _create(admin: MatrixHTTP, body: dict[str, Any]) -> str:
    return admin.create_room({k: v for k, v in body.items() if v}, what="create (upstream way)")


def _ensure_room(
    admin: MatrixHTTP,
    server: str,
    space: str,
    alias_local: str,
    *,
    name_topic: tuple[str, str],
    levels: dict[str, Any],
) -> str:
    """setup.go:324 ensureRoom and fleet/create.go:289 idempotentCreateRoom."""
    room_id = _create(
        admin,
        {
            "name": name_topic[0],
            "room_alias_name": alias_local,
            "topic": name_topic[1],
            "preset": "private_chat",
            "visibility": "private",
            "power_level_content_override": levels,
        },
    )
    admin.put_state(space, "m.space.child", room_id, {"via": [server]})
    return room_id


def setup_hub(
    url: str, server: str, registration_token: str, namespace: str, directory: Path
) -> UpstreamHub:
    """setup.go:150 runSetup (without its templates and pipelines, which our checks do not
    read), then fleet/create.go:186 EnsureFleetRooms for NAMESPACE/fleet/prod."""
    login = MatrixHTTP(url).login_password("bureau-admin", admin_password(registration_token))
    admin = MatrixHTTP(url, login.access_token)
    admin_user = login.user_id
    space = _create(  # setup.go:293 ensureSpace
        admin,
        {
            "name": namespace,
            "room_alias_name": namespace,
            "topic": "Bureau agent orchestration",
            "preset": "private_chat",
            "visibility": "private",
            "creation_content": {"type": "m.space"},
            "power_level_content_override": admin_only_power_levels(admin_user),
        },
    )
    rooms = {
        suffix: _ensure_room(
            admin,
            server,
            space,
            f"{namespace}/{suffix}",
            name_topic=(name, topic),
            levels=standard_room_power_levels(suffix, admin_user),
        )
        for suffix, name, topic, _ in STANDARD_ROOMS
    }
    dev_team = {"room": f"#{namespace}/dev:{server}"}  # lib/schema/rooms.go:23
    for room_id in (*rooms.values(), space):  # setup.go:202-212
        admin.put_state(room_id, DEV_TEAM, "", dev_team)
    fleet = f"{namespace}/fleet/prod"
    fleet_rooms = {
        "fleet": _ensure_room(
            admin,
            server,
            space,
            fleet,
            name_topic=(
                f"Fleet: {namespace}/prod",
                "Fleet configuration, HA leases, and service definitions",
            ),
            levels=fleet_room_power_levels(admin_user),
        ),
        "machine": _ensure_room(
            admin,
            server,
            space,
            f"{fleet}/machine",
            name_topic=(
                f"Machines: {namespace}/prod",
                "Machine keys, hardware info, status heartbeats, and WebRTC signaling",
            ),
            levels=machine_room_power_levels(admin_user),
        ),
        "service": _ensure_room(
            admin,
            server,
            space,
            f"{fleet}/service",
            name_topic=(f"Services: {namespace}/prod", "Service registrations and discovery"),
            levels=service_room_power_levels(admin_user),
        ),
    }
    for room_id in fleet_rooms.values():  # fleet/create.go:253-258
        admin.put_state(room_id, DEV_TEAM, "", dev_team)
    credential_file = directory / "upstream-creds"
    credential_file.write_text(
        credential_file_text(
            homeserver=url,
            admin_user=admin_user,
            admin_token=login.access_token.reveal(),
            registration_token=registration_token,
            space_room=space,
            room_ids=rooms,
        )
    )
    credential_file.chmod(0o600)  # setup.go:398 os.WriteFile(path, ..., 0600)
    return UpstreamHub(
        url,
        server,
        namespace,
        fleet,
        admin,
        admin_user,
        space,
        rooms,
        fleet_rooms,
        credential_file,
    )


def _grant(admin: MatrixHTTP, room_id: str, user: str, level: int) -> None:
    """lib/schema/power_levels.go:170 grantPowerLevelsOnce."""
    levels = admin.get_state(room_id, "m.room.power_levels", "") or {}
    levels.setdefault("users", {})[user] = level
    admin.put_state(room_id, "m.room.power_levels", "", levels)


@dataclass(frozen=True)
class UpstreamMachine:
    localpart: str
    user_id: str
    config_room: str
    ops_room: str
    password: Secret  # the one-time password bootstrap.json would carry


def provision(hub: UpstreamHub, registration_token: str, name: str) -> UpstreamMachine:
    """cmd/bureau/machine/provision.go:231 Provision, without its fleet service binding
    (a state event our checks do not read)."""
    localpart = f"{hub.fleet}/machine/{name}"
    user = f"@{localpart}:{hub.server}"
    password = Secret(secrets.token_hex(32))  # provision.go:242-252
    MatrixHTTP(hub.url).register_with_token(localpart, password, Secret(registration_token))
    admin = hub.admin
    for suffix in ("template", "pipeline", "system"):  # machine/rooms.go:57 resolveGlobalRooms
        admin.invite(hub.rooms[suffix], user)
    _grant(admin, hub.rooms["system"], user, 50)  # provision.go:326
    _grant(admin, hub.rooms["pipeline"], user, 50)  # provision.go:337
    for role in ("machine", "service", "fleet"):  # provision.go:353
        admin.invite(hub.fleet_rooms[role], user)
    _grant(admin, hub.fleet_rooms["service"], user, 50)  # provision.go:371
    config_room = _create(  # provision.go:386
        admin,
        {
            "name": f"Config: {localpart}",
            "topic": f"Machine configuration and credentials for {localpart}",
            "room_alias_name": localpart,
            "preset": "private_chat",
            "invite": [user],
            "visibility": "private",
        },
    )
    admin.put_state(  # provision.go:419-420
        config_room, "m.room.power_levels", "", config_room_power_levels(hub.admin_user, user)
    )
    dev_team = {"room": f"#{hub.namespace}/dev:{hub.server}"}
    admin.put_state(config_room, DEV_TEAM, "", dev_team)  # provision.go:430
    ops_room = _create(  # provision.go:457
        admin,
        {
            "name": f"Ops: {localpart}",
            "topic": f"Operational coordination for {localpart}",
            "room_alias_name": f"{localpart}/ops",
            "preset": "private_chat",
            "invite": [user],
            "visibility": "private",
        },
    )
    admin.put_state(ops_room, "m.room.power_levels", "", ops_room_power_levels(hub.admin_user))
    _grant(admin, ops_room, user, 50)  # provision.go:497
    admin.put_state(ops_room, DEV_TEAM, "", dev_team)  # provision.go:504
    return UpstreamMachine(localpart, user, config_room, ops_room, password)


def machine_key(public_key: str) -> dict[str, str]:
    """lib/schema/events_machine.go:17 MachineKey."""
    return {"algorithm": "age-x25519", "public_key": public_key}


def machine_status(user: str) -> dict[str, Any]:
    """lib/schema/events_machine.go:29 MachineStatus, as upstream's daemon heartbeats."""
    return {
        "principal": user,
        "cpu_percent": 3,
        "memory_used_mb": 512,
        "sandboxes": {"running": 1, "idle": 0},  # events_machine.go:80 SandboxCounts
        "uptime_seconds": 42,
    }


def verify_full_decommission(hub: UpstreamHub, machine: UpstreamMachine) -> list[str]:
    """cmd/bureau/machine/provision.go:532 verifyFullDecommission: what upstream's
    provision checks before it takes a used name back. The reasons it would refuse."""
    admin, refusals = hub.admin, []
    rooms = [hub.rooms[s] for s in ("template", "pipeline", "system")]  # rooms.go:57
    config = admin.resolve_alias(hub.alias(machine.localpart))
    for room_id in (*rooms, *([config] if config else [])):  # rooms.go:90
        member = admin.get_state(room_id, "m.room.member", machine.user_id) or {}
        if member.get("membership") in ("join", "invite"):
            refusals.append(f"member of {room_id}")
    key = f"{machine.localpart}:{hub.server}"
    for event in admin.room_state_events(hub.fleet_rooms["machine"]):  # provision.go:593
        ours = event.get("state_key") == key and event["type"] in (MACHINE_KEY, MACHINE_STATUS)
        if ours and event.get("content") not in ({}, None):
            refusals.append(f"active {event['type']}")
    return refusals


def room_state_ids(admin: MatrixHTTP, room_id: str) -> dict[tuple[str, str], str]:
    """Every state event of a room by (type, state key) -> event ID: equal before and
    after means nothing was written."""
    return {
        (str(e["type"]), str(e["state_key"])): str(e["event_id"])
        for e in admin.room_state_events(room_id)
    }


def go_json(value: dict[str, str]) -> bytes:
    """encoding/json's Marshal of a map[string]string: keys sorted, compact, and <, > and &
    escaped as \\u003c, \\u003e and \\u0026."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def go_base64(data: bytes) -> str:
    # lib/sealed/sealed.go:106: base64.StdEncoding (padded, standard alphabet).
    return base64.b64encode(data).decode()
