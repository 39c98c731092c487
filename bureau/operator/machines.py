"""``bureau machine provision`` and ``bureau machine list``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bureau.errors import BureauError, InputError, MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.fleet_rooms import namespace_room, resolve_fleet_rooms, template_room
from bureau.matrix.homeserver_admin import homeserver_admin
from bureau.operator import signed
from bureau.operator.credentials import admin_client
from bureau.operator.machine_rooms import ensure_config_room, grant_machine_level, invite_machine
from bureau.passwords import one_time_password
from bureau.wire import names, rooms
from bureau.wire.files import BootstrapConfig, MachineKey, OperatorCredentials

PROVISIONED = "provisioned"
ENROLLED = "enrolled"
DECOMMISSIONED = "decommissioned"


@dataclass(frozen=True)
class MachineRecord:
    name: str
    user_id: str
    state: str
    public_key: str | None
    last_heartbeat: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "user_id": self.user_id,
            "state": self.state,
            "public_key": self.public_key,
            "last_heartbeat": self.last_heartbeat,
        }


def _rfc3339(ms: object) -> str | None:
    if not isinstance(ms, int):
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_records(events: list[dict[str, Any]], fleet: str, server: str) -> list[MachineRecord]:
    """Classify the fleet's machines from the machine room's state. Pure.

    A machine is *provisioned* once invited, *enrolled* once it has joined and published a
    key event that it sent itself, *decommissioned* once it left or was removed, or its key
    was replaced by the empty tombstone."""
    prefix = f"{fleet}/machine/"
    members: dict[str, str] = {}
    keys: dict[str, dict[str, Any]] = {}
    heartbeats: dict[str, int] = {}
    for event in events:
        kind, key = event.get("type"), event.get("state_key")
        if not isinstance(key, str):
            continue
        if kind == "m.room.member":
            members[key] = str((event.get("content") or {}).get("membership", ""))
        elif kind == rooms.MACHINE_KEY:
            keys[f"@{key}"] = event
        elif (
            kind == rooms.MACHINE_STATUS
            and isinstance(event.get("origin_server_ts"), int)
            and event.get("content") != {}  # decommission's tombstone is no heartbeat
        ):
            heartbeats[f"@{key}"] = event["origin_server_ts"]
    records = []
    for user, membership in sorted(members.items()):
        try:
            localpart, user_server = names.parse_user_id(user)
        except names.InvalidName:
            continue
        if user_server == server and localpart.startswith(prefix):
            state, public_key = _classify(user, membership, keys.get(user))
            records.append(
                MachineRecord(localpart, user, state, public_key, _rfc3339(heartbeats.get(user)))
            )
    return records


def _classify(
    user: str, membership: str, key_event: dict[str, Any] | None
) -> tuple[str, str | None]:
    public_key = None
    tombstoned = key_event is not None and not key_event.get("content")
    if key_event is not None and key_event.get("sender") == user and not tombstoned:
        try:
            public_key = MachineKey.from_json(key_event.get("content")).public_key
        except InputError:
            public_key = None
    if membership in ("leave", "ban") or tombstoned:
        return DECOMMISSIONED, public_key
    if membership == "join" and public_key is not None:
        return ENROLLED, public_key
    return PROVISIONED, public_key


def list_machines(creds: OperatorCredentials) -> list[MachineRecord]:
    admin = admin_client(creds)
    fleet_rooms = resolve_fleet_rooms(admin, creds.fleet, creds.server_name)
    events = admin.room_state_events(fleet_rooms.machine)
    return machine_records(events, creds.fleet, creds.server_name)


def provision(creds: OperatorCredentials, machine_localpart: str) -> BootstrapConfig:
    """Create the machine's account with a fresh one-time password, its config room, and
    its invitations. Everything that can be checked is checked before the account exists,
    because once it does, only its bootstrap file can log in to it."""
    server = creds.server_name
    machine_user = names.user_id(machine_localpart, server)
    admin = admin_client(creds)
    fleet_rooms = resolve_fleet_rooms(admin, creds.fleet, server)
    state = None
    for record in machine_records(
        admin.room_state_events(fleet_rooms.machine), creds.fleet, server
    ):
        if record.user_id == machine_user:
            state = record.state
            if state == ENROLLED:
                raise BureauError(
                    f"{machine_localpart} is enrolled (key {record.public_key} is published); "
                    "decommission it before provisioning it again"
                )
    config_room, _ = ensure_config_room(admin, creds.admin_user, machine_localpart, server)
    password = one_time_password()
    try:
        MatrixHTTP(creds.homeserver_url).register_with_token(
            machine_localpart, password, creds.registration_token
        )
    except MatrixError as exc:
        if exc.errcode != "M_USER_IN_USE":
            raise
        if state != DECOMMISSIONED:
            raise BureauError(
                f"{machine_user} already exists and has not enrolled: boot it with the "
                "bootstrap.json it was provisioned with, or provision another name"
            ) from None
        # A decommissioned machine's name comes back: its deactivated account is
        # reactivated with the new one-time password.
        homeserver_admin(admin).reactivate(machine_user, password)
    templates = template_room(admin, creds.fleet, server)
    invite_machine(admin, machine_user, config_room, fleet_rooms, templates)
    # As upstream's provision (provision.go:292-376): invited to the namespace's system and
    # pipeline rooms, and at level 50 there and in the fleet's service room, where its
    # daemon invites service and pipeline principals.
    for role in ("system", "pipeline"):
        room = namespace_room(admin, creds.fleet, server, role)
        if room is None:
            raise BureauError(
                f"#{rooms.namespace_room_localpart(creds.fleet, role)}:{server}: no such room; "
                "run `bureau matrix setup` (it adds the rooms a hub set up earlier lacks)"
            )
        admin.invite(room, machine_user)
        grant_machine_level(admin, room, machine_user)
    grant_machine_level(admin, fleet_rooms.service, machine_user)
    return BootstrapConfig(
        homeserver_url=creds.homeserver_url,
        server_name=server,
        machine_name=machine_localpart,
        password=password,
        fleet_prefix=creds.fleet,
        operator_keys=signed.keys_to_pin(admin, creds),
    )
