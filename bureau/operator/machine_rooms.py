"""The rooms the operator makes and the invitations it gives a machine: a machine's config
room, its invitations to the fleet's rooms, its power level where its daemon invites
principals. Operator-only: a machine joins what it was invited to and makes nothing."""

from __future__ import annotations

from typing import Any

from bureau.matrix.client import MatrixHTTP
from bureau.matrix.fleet_rooms import FleetRooms
from bureau.wire import names, rooms


def private_room(
    alias_localpart: str, name: str, power_levels: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """createRoom content for a private, invite-only room with our power levels."""
    return {
        "room_alias_name": alias_localpart,
        "name": name,
        "preset": "private_chat",
        "room_version": rooms.ROOM_VERSION,
        "visibility": "private",
        "power_level_content_override": power_levels,
        "initial_state": [
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "shared"},
            },
            {
                "type": "m.room.guest_access",
                "state_key": "",
                "content": {"guest_access": "forbidden"},
            },
        ],
        **extra,
    }


def ensure_config_room(
    client: MatrixHTTP, admin_user: str, machine_localpart: str, server: str
) -> tuple[str, bool]:
    """The machine's config room, created when missing. Returns (room ID, created)."""
    alias = names.room_alias(machine_localpart, server)
    existing = client.resolve_alias(alias)
    if existing is not None:
        return existing, False
    machine_user = names.user_id(machine_localpart, server)
    content = private_room(
        machine_localpart,
        f"Config: {machine_localpart}",
        rooms.with_ours(rooms.config_room_power_levels(admin_user, machine_user)),
        topic=f"Machine configuration and credentials for {machine_localpart}",
    )
    room = client.create_room(content, what=f"create config room {alias}")
    dev_team = rooms.dev_team_content(names.fleet_of_entity(machine_localpart), server)
    client.put_state(room, rooms.DEV_TEAM, "", dev_team)  # as upstream's provision
    return room, True


def grant_machine_level(client: MatrixHTTP, room_id: str, machine_user: str) -> None:
    """The machine at level 50 in a room (its daemon invites principals there); the rest of
    the room's levels kept."""
    levels = client.get_state(room_id, "m.room.power_levels", "") or {}
    found = levels.get("users")
    users: dict[str, Any] = found if isinstance(found, dict) else {}
    if users.get(machine_user) != rooms.MACHINE_LEVEL:
        new = {**levels, "users": {**users, machine_user: rooms.MACHINE_LEVEL}}
        client.put_state(room_id, "m.room.power_levels", "", new)


def invite_machine(
    client: MatrixHTTP,
    machine_user: str,
    config_room: str,
    fleet_rooms: FleetRooms,
    templates: str | None = None,
) -> None:
    """Into its config room and the fleet rooms, and the template room (where its daemon
    reads the templates its principals run from) when the hub has one."""
    for room_id in (config_room, *fleet_rooms.all(), *([templates] if templates else [])):
        client.invite(room_id, machine_user)
