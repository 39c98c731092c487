"""Fleet-wide, non-secret state that operators publish in the fleet room: the binary
cache (``m.bureau.fleet_cache``) that machines trust in nix.conf, and the fleet profile
(``m.bureau.fleet_profile``) that their daemons materialize."""

from __future__ import annotations

from collections.abc import Callable

from bureau.matrix.fleet_rooms import resolve_fleet_rooms
from bureau.operator.credentials import admin_client
from bureau.profile import model
from bureau.wire import rooms
from bureau.wire.files import FleetCache, OperatorCredentials


def _put(
    creds: OperatorCredentials,
    event_type: str,
    content: dict[str, object],
    merge: Callable[[object], dict[str, object]] | None = None,
) -> bool:
    admin = admin_client(creds)
    room = resolve_fleet_rooms(admin, creds.fleet, creds.server_name).fleet
    published = admin.get_state(room, event_type, "")
    if merge is not None:
        content = merge(published)
    if published == content:
        return False
    admin.put_state(room, event_type, "", content)
    return True


def set_cache(creds: OperatorCredentials, cache: FleetCache) -> bool:
    """Publish the cache; returns whether it changed. Fields of the published event this
    command does not set (upstream's ``compose_template`` and ``default_system``, or any a
    later version adds) are kept, as upstream's own command keeps them."""

    def keeping_the_rest(published: object) -> dict[str, object]:
        kept = published if isinstance(published, dict) else {}
        ours = cache.to_json()
        return {**{k: v for k, v in kept.items() if k not in ours and k != "name"}, **ours}

    return _put(creds, rooms.FLEET_CACHE, cache.to_json(), keeping_the_rest)


def set_profile(creds: OperatorCredentials, profile: model.Profile) -> bool:
    """Publish the fleet profile (already checked by the model); whether it changed."""
    return _put(creds, rooms.FLEET_PROFILE, dict(model.to_event(profile)))
