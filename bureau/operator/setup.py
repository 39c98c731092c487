"""``bureau matrix setup``: the admin account, the space and the fleet rooms, and the
operator credential file. Creates only what is missing; a second run changes nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau import names, rooms
from bureau.errors import InputError, MatrixError
from bureau.matrix_http import MatrixHTTP
from bureau.operator import credentials, templates
from bureau.operator.fleet import private_room
from bureau.passwords import ADMIN_LOCALPART, admin_password
from bureau.schema import NAMESPACE_ROOM_KEYS, OperatorCredentials
from bureau.secret import Secret


@dataclass(frozen=True)
class RoomSpec:
    role: str
    alias_localpart: str
    name: str
    power_levels: Callable[[str], dict[str, Any]]
    is_space: bool = False


def room_specs(fleet: str) -> list[RoomSpec]:
    return [
        RoomSpec(
            "space",
            names.space_alias_localpart(fleet),
            names.namespace_of(fleet),
            rooms.space_power_levels,
            is_space=True,
        ),
        RoomSpec("fleet", names.fleet_room_localpart(fleet), fleet, rooms.fleet_power_levels),
        RoomSpec(
            "machine",
            names.machine_room_localpart(fleet),
            f"{fleet}: machines",
            rooms.machine_room_power_levels,
        ),
        RoomSpec(
            "service",
            names.service_room_localpart(fleet),
            f"{fleet}: services",
            rooms.service_room_power_levels,
        ),
        RoomSpec(
            "template",
            names.template_room_localpart(fleet),
            f"{names.namespace_of(fleet)}: templates",
            rooms.template_room_power_levels,
        ),
    ]


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
    for spec in room_specs(fleet):
        alias = names.room_alias(spec.alias_localpart, server_name)
        room_id = admin.resolve_alias(alias)
        if room_id is None:
            extra: dict[str, Any] = {}
            if spec.is_space:
                extra["creation_content"] = {"type": "m.space"}
            content = private_room(
                spec.alias_localpart, spec.name, spec.power_levels(admin_user), **extra
            )
            room_id = admin.create_room(content, what=f"create {alias}")
            note(f"created {spec.role} room {alias} ({room_id})")
            if not spec.is_space:
                via = {"via": [server_name]}
                admin.put_state(room_ids["space"], "m.space.child", room_id, via)
                admin.put_state(room_id, "m.space.parent", room_ids["space"], via)
        else:
            admin.join(room_id)  # no-op when joined; fails clearly when we may not
        room_ids[spec.role] = room_id

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
    )
    if credentials.write(credential_file, creds):
        note(f"wrote {credential_file}")
    for ref in templates.push_builtins(admin, creds):
        note(f"pushed template {ref}")
    return changed
