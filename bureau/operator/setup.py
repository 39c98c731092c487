"""``bureau matrix setup``: the admin account, the namespace's space and rooms (system,
template, pipeline, artifact, dev: upstream's), the fleet's rooms, ``m.bureau.dev_team``
in each, and the operator credential file. Creates only what is missing; a second run
changes nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau.errors import InputError, MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials, signed, templates
from bureau.operator.machine_rooms import private_room
from bureau.passwords import ADMIN_LOCALPART, admin_password
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.files import NAMESPACE_ROOM_KEYS, OperatorCredentials
from bureau.wire.operator_keys import EVENT_TYPE as OPERATOR_KEYS
from bureau.wire.signing import OperatorKey


@dataclass(frozen=True)
class RoomSpec:
    role: str
    alias_localpart: str
    name: str
    topic: str
    power_levels: Callable[[str], dict[str, Any]]  # upstream's: what the doctor requires
    is_space: bool = False
    # Whether m.bureau.dev_team must name the namespace's dev room exactly (upstream's
    # matrix doctor requires it in the namespace's rooms; `fleet setup --dev-team` may
    # point a fleet's rooms elsewhere).
    exact_dev_team: bool = True


def room_specs(fleet: str) -> list[RoomSpec]:
    """The namespace's space and rooms (upstream's `matrix setup`, cmd/bureau/matrix/
    doctor.go standardRoomsForNamespace), then the fleet's (upstream's `fleet create`),
    with upstream's names, topics and power levels."""
    ns = names.namespace_of(fleet)
    fleet_name = fleet.rsplit("/", 1)[1]

    def namespace_room(role: str, name: str, topic: str, levels: Any) -> RoomSpec:
        return RoomSpec(role, rooms.namespace_room_localpart(fleet, role), name, topic, levels)

    def fleet_room(role: str, alias: str, name: str, topic: str, levels: Any) -> RoomSpec:
        return RoomSpec(role, alias, name, topic, levels, exact_dev_team=False)

    return [
        RoomSpec(
            "space",
            names.space_alias_localpart(fleet),
            ns,
            "Bureau agent orchestration",
            rooms.space_power_levels,
            is_space=True,
        ),
        namespace_room(
            "system", "Bureau System", "Operational messages", rooms.system_room_power_levels
        ),
        namespace_room(
            "template", "Bureau Template", "Sandbox templates", rooms.template_room_power_levels
        ),
        namespace_room(
            "pipeline",
            "Bureau Pipeline",
            "Pipeline definitions",
            rooms.pipeline_room_power_levels,
        ),
        namespace_room(
            "artifact",
            "Bureau Artifact",
            "Artifact coordination",
            rooms.artifact_room_power_levels,
        ),
        namespace_room(
            "dev",
            "Bureau Dev Team",
            "Development team coordination and work routing",
            rooms.dev_room_power_levels,
        ),
        fleet_room(
            "fleet",
            names.fleet_room_localpart(fleet),
            f"Fleet: {ns}/{fleet_name}",
            "Fleet configuration, HA leases, and service definitions",
            rooms.fleet_power_levels,
        ),
        fleet_room(
            "machine",
            names.machine_room_localpart(fleet),
            f"Machines: {ns}/{fleet_name}",
            "Machine keys, hardware info, status heartbeats, and WebRTC signaling",
            rooms.machine_room_power_levels,
        ),
        fleet_room(
            "service",
            names.service_room_localpart(fleet),
            f"Services: {ns}/{fleet_name}",
            "Service registrations and discovery",
            rooms.service_room_power_levels,
        ),
    ]


def dev_team_ok(content: dict[str, Any] | None, want: dict[str, str], *, exact: bool) -> bool:
    if exact or content is None:
        return content == want
    room = content.get("room")
    return isinstance(room, str) and room.startswith("#")


def _earlier(
    credential_file: Path, homeserver: str, admin_user: str, fleet: str
) -> OperatorCredentials | None:
    """The file from an earlier run (ours or upstream's), if any. A file for another hub
    or fleet is refused rather than overwritten: it may be the only copy of that login.
    Upstream's file names no fleet, so any fleet may adopt it."""
    if not credential_file.exists():
        return None
    old = credentials.load(credential_file)
    where = str(credential_file)
    checks = [
        ("MATRIX_HOMESERVER_URL", old.homeserver_url, homeserver),
        ("MATRIX_ADMIN_USER", old.admin_user, admin_user),
    ]
    if old.recorded_fleet:
        checks.append(("BUREAU_FLEET", old.fleet, fleet))
    for key, have, want in checks:
        if have != want:
            raise InputError(
                where, key, f"is {have!r}, not {want!r}; use another --credential-file"
            )
    return old


def _valid_token(homeserver: str, old: OperatorCredentials, admin_user: str) -> Secret | None:
    with contextlib.suppress(MatrixError):
        if MatrixHTTP(homeserver, old.admin_token).whoami()[0] == admin_user:
            return old.admin_token
    return None


def _admin_login(client: MatrixHTTP, token: Secret, report: Callable[[str], None]) -> Secret:
    password = admin_password(token)
    try:
        client.register_with_token(ADMIN_LOCALPART, password, token)
        report(f"registered {ADMIN_LOCALPART}")
    except MatrixError as exc:
        if exc.errcode != "M_USER_IN_USE":
            raise
    try:
        return client.login_password(ADMIN_LOCALPART, password).access_token
    except MatrixError as exc:
        if exc.errcode == "M_FORBIDDEN":
            raise MatrixError(
                f"{ADMIN_LOCALPART} exists but refuses the password derived from this "
                "registration token (was the hub set up with another token?)"
            ) from None
        raise


def _write_and_publish(
    admin: MatrixHTTP,
    creds: OperatorCredentials,
    credential_file: Path,
    note: Callable[[str], None],
) -> None:
    """The credential file, its public key beside it, the key published in the fleet."""
    if credentials.write(credential_file, creds):
        note(f"wrote {credential_file}")
    if creds.signing_key is None:
        return
    if signed.write_public_key(credential_file, creds.signing_key.public):
        note(f"wrote {signed.public_key_file(credential_file)}")
    if signed.publish(admin, creds):
        note(f"published {creds.signing_key.key_id} in {OPERATOR_KEYS}")


def setup(
    *,
    homeserver: str,
    server_name: str,
    registration_token: Secret,
    credential_file: Path,
    fleet: str,
    report: Callable[[str], None],
) -> bool:
    """Bring the hub's Bureau accounts and rooms into place. Returns whether anything
    changed; ``report`` receives one line per change."""
    client = MatrixHTTP(homeserver)
    client.versions()
    admin_user = names.user_id(ADMIN_LOCALPART, server_name)
    changed = False

    def note(line: str) -> None:
        nonlocal changed
        changed = True
        report(line)

    earlier = _earlier(credential_file, homeserver, admin_user, fleet)
    token = _valid_token(homeserver, earlier, admin_user) if earlier else None
    if token is None:
        token = _admin_login(client, registration_token, note)
        note(f"logged in as {admin_user}")
    admin = client.with_token(token)
    whoami = admin.whoami()[0]
    if whoami != admin_user:
        raise MatrixError(f"the homeserver says this login is {whoami}, expected {admin_user}")

    room_ids: dict[str, str] = {}
    dev_team = rooms.dev_team_content(fleet, server_name)
    for spec in room_specs(fleet):
        alias = names.room_alias(spec.alias_localpart, server_name)
        room_id = admin.resolve_alias(alias)
        if room_id is None:
            extra: dict[str, Any] = {"topic": spec.topic}
            if spec.is_space:
                extra["creation_content"] = {"type": "m.space"}
            levels = rooms.with_ours(spec.power_levels(admin_user))
            content = private_room(spec.alias_localpart, spec.name, levels, **extra)
            room_id = admin.create_room(content, what=f"create {alias}")
            note(f"created {spec.role} room {alias} ({room_id})")
            if not spec.is_space:
                via = {"via": [server_name]}
                admin.put_state(room_ids["space"], "m.space.child", room_id, via)
                admin.put_state(room_id, "m.space.parent", room_ids["space"], via)
        else:
            admin.join(room_id)  # no-op when joined; fails clearly when we may not
        room_ids[spec.role] = room_id
        published = admin.get_state(room_id, rooms.DEV_TEAM, "")
        if not dev_team_ok(published, dev_team, exact=spec.exact_dev_team):
            admin.put_state(room_id, rooms.DEV_TEAM, "", dev_team)
            note(f"published {rooms.DEV_TEAM} in {alias}")

    signing_key = earlier.signing_key if earlier else None
    if signing_key is None:
        signing_key = OperatorKey.generate()  # stays in the credential file (0600)
        note(f"created operator signing key {signing_key.key_id}")
    creds = OperatorCredentials(
        homeserver_url=homeserver,
        admin_user=admin_user,
        admin_token=token,
        registration_token=registration_token,
        space_room=room_ids["space"],
        server_name=server_name,
        fleet=fleet,
        namespace_rooms={r: room_ids[r] for r in NAMESPACE_ROOM_KEYS if r in room_ids},
        extra=earlier.extra if earlier else {},
        signing_key=signing_key,
    )
    _write_and_publish(admin, creds, credential_file, note)
    for ref in templates.push_builtins(admin, creds):
        note(f"pushed template {ref}")
    return changed
