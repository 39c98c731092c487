"""Room layout and power levels (WIRE.md "Rooms"). Pure: builds request content only."""

from __future__ import annotations

from typing import Any

MACHINE_KEY = "m.bureau.machine_key"
MACHINE_STATUS = "m.bureau.machine_status"
MACHINE_INFO = "m.bureau.machine_info"
MACHINE_CONFIG = "m.bureau.machine_config"
CREDENTIALS = "m.bureau.credentials"
FLEET_CACHE = "m.bureau.fleet_cache"
FLEET_PROFILE = "m.bureau.fleet_profile"

# Pinned: from room version 12 on, a room's creator holds unlimited power and may not be
# listed in the power levels, which cannot express WIRE.md's table (operators at 100,
# machines at 50, as the upstream Go Bureau's rooms have). Version 11 is served by every
# homeserver we target; its state-resolution weaknesses need federation to matter.
ROOM_VERSION = "11"

ADMIN_LEVEL = 100
MACHINE_LEVEL = 50

# Room-shaping state stays with admins even where state_default is low, so a machine
# (level 50 in its config room) can never change who may do what.
_ADMIN_ONLY_STATE = (
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.tombstone",
    "m.room.canonical_alias",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.space.child",
    "m.space.parent",
)


def _levels(
    users: dict[str, int],
    *,
    events_default: int,
    state_default: int,
    events: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "users": dict(users),
        "users_default": 0,
        "events_default": events_default,
        "state_default": state_default,
        "ban": ADMIN_LEVEL,
        "kick": ADMIN_LEVEL,
        "redact": ADMIN_LEVEL,
        "invite": ADMIN_LEVEL,
        "notifications": {"room": ADMIN_LEVEL},
        "events": {**dict.fromkeys(_ADMIN_ONLY_STATE, ADMIN_LEVEL), **(events or {})},
    }


def space_power_levels(admin: str) -> dict[str, Any]:
    return _levels({admin: ADMIN_LEVEL}, events_default=ADMIN_LEVEL, state_default=ADMIN_LEVEL)


def fleet_power_levels(admin: str) -> dict[str, Any]:
    return _levels({admin: ADMIN_LEVEL}, events_default=0, state_default=ADMIN_LEVEL)


def machine_room_power_levels(admin: str) -> dict[str, Any]:
    # Machines publish their own key, status and info; consumers check the sender.
    return _levels(
        {admin: ADMIN_LEVEL},
        events_default=0,
        state_default=ADMIN_LEVEL,
        events={MACHINE_KEY: 0, MACHINE_STATUS: 0, MACHINE_INFO: 0},
    )


def service_room_power_levels(admin: str) -> dict[str, Any]:
    return _levels({admin: ADMIN_LEVEL}, events_default=0, state_default=ADMIN_LEVEL)


def template_room_power_levels(admin: str) -> dict[str, Any]:
    # Admins only: a template says what runs and with which mounts; machines read it.
    return _levels({admin: ADMIN_LEVEL}, events_default=ADMIN_LEVEL, state_default=ADMIN_LEVEL)


def config_room_power_levels(admin: str, machine: str) -> dict[str, Any]:
    # Only operators (100) publish credentials; the machine (50) may write its config.
    return _levels(
        {admin: ADMIN_LEVEL, machine: MACHINE_LEVEL},
        events_default=ADMIN_LEVEL,
        state_default=0,
        events={MACHINE_CONFIG: MACHINE_LEVEL, CREDENTIALS: ADMIN_LEVEL},
    )


def power_level_drift(actual: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """How a room's power levels differ from what the design gives it, one phrase per
    difference (``events.m.bureau.credentials is 50, not 100``). Extra users and event
    types are allowed (more operators, more state); what the design sets must hold."""
    drift = []
    for key, want in expected.items():
        have = actual.get(key)
        if isinstance(want, dict):
            have_map = have if isinstance(have, dict) else {}
            for sub, sub_want in want.items():
                if have_map.get(sub) != sub_want:
                    drift.append(f"{key}.{sub} is {have_map.get(sub)}, not {sub_want}")
        elif have != want:
            drift.append(f"{key} is {have}, not {want}")
    return drift


def with_power_levels(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """``actual`` with everything the design sets put back; the rest kept."""
    merged = dict(actual)
    for key, want in expected.items():
        if isinstance(want, dict):
            have = actual.get(key)
            merged[key] = {**(have if isinstance(have, dict) else {}), **want}
        else:
            merged[key] = want
    return merged
