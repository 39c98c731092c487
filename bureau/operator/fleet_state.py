"""Fleet-wide, non-secret state that operators publish in the fleet room: the binary
cache (``m.bureau.fleet_cache``) that machines trust in nix.conf."""

from __future__ import annotations

from bureau import rooms
from bureau.operator.credentials import admin_client
from bureau.operator.fleet import resolve_fleet_rooms
from bureau.schema import FleetCache, OperatorCredentials


def set_cache(creds: OperatorCredentials, cache: FleetCache) -> bool:
    """Publish the cache; returns whether it changed."""
    admin = admin_client(creds)
    room = resolve_fleet_rooms(admin, creds.fleet, creds.server_name).fleet
    if admin.get_state(room, rooms.FLEET_CACHE, "") == cache.to_json():
        return False
    admin.put_state(room, rooms.FLEET_CACHE, "", cache.to_json())
    return True
