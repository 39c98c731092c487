"""The fleet's and the namespace's rooms, found by alias: what a machine's first boot joins
and what the operator's commands act on. Resolution only: making rooms and inviting
machines is the operator's (bureau.operator.machine_rooms). Blocking calls through
bureau.matrix.client only, so the launcher may import this module."""

from __future__ import annotations

from dataclasses import dataclass

from bureau.errors import MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.wire import names, rooms


@dataclass(frozen=True)
class FleetRooms:
    fleet: str
    machine: str
    service: str

    def all(self) -> tuple[str, str, str]:
        return (self.fleet, self.machine, self.service)


def fleet_room_aliases(fleet: str, server: str) -> dict[str, str]:
    return {
        "fleet": names.room_alias(names.fleet_room_localpart(fleet), server),
        "machine": names.room_alias(names.machine_room_localpart(fleet), server),
        "service": names.room_alias(names.service_room_localpart(fleet), server),
    }


def resolve_fleet_rooms(client: MatrixHTTP, fleet: str, server: str) -> FleetRooms:
    found: dict[str, str] = {}
    for role, alias in fleet_room_aliases(fleet, server).items():
        room_id = client.resolve_alias(alias)
        if room_id is None:
            raise MatrixError(f"{alias}: no such room; run `bureau matrix setup` for this fleet")
        found[role] = room_id
    return FleetRooms(**found)


def template_room(client: MatrixHTTP, fleet: str, server: str) -> str | None:
    """The namespace's template room; None on a hub set up before it existed (the next
    `bureau matrix setup` or `matrix doctor --fix` creates it)."""
    return namespace_room(client, fleet, server, "template")


def namespace_room(client: MatrixHTTP, fleet: str, server: str, role: str) -> str | None:
    """One of the namespace's rooms (rooms.NAMESPACE_ROOMS); None where it is missing."""
    return client.resolve_alias(
        names.room_alias(rooms.namespace_room_localpart(fleet, role), server)
    )
