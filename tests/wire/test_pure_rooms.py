"""bureau.wire.rooms: the power levels of each room, as WIRE.md gives them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bureau.wire import rooms


def test_config_room_levels_follow_wire() -> None:
    levels = rooms.config_room_power_levels("@admin:s", "@m:s")
    assert levels["users"] == {"@admin:s": 100, "@m:s": 50}
    assert levels["events_default"] == 100
    assert levels["state_default"] == 0
    assert levels["events"][rooms.MACHINE_CONFIG] == 50
    assert levels["events"][rooms.CREDENTIALS] == 100
    # The machine (50) cannot rewrite who may do what.
    assert levels["events"]["m.room.power_levels"] == 100


def test_fleet_and_machine_room_levels() -> None:
    assert rooms.fleet_power_levels("@a:s")["state_default"] == 100
    machine_room = rooms.machine_room_power_levels("@a:s")
    for kind in (rooms.MACHINE_KEY, rooms.MACHINE_STATUS, rooms.MACHINE_INFO):
        assert machine_room["events"][kind] == 0
    assert machine_room["state_default"] == 100


# -- every room, transcribed from WIRE.md's table (not computed by the code under test) --

ADMIN, MACHINE = "@bureau-admin:s", "@bureau/fleet/prod/machine/w:s"
# WIRE.md: "at 100 in events the room metadata and the dev team", in every room.
PROTECTED = [
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.room.name",
    "m.room.power_levels",
    "m.room.server_acl",
    "m.room.tombstone",
    "m.room.topic",
    "m.space.child",
    "m.bureau.dev_team",
]
B = "m.bureau."
FLEET_ADMIN_EVENTS = [
    "fleet_service",
    "machine_definition",
    "fleet_config",
    "fleet_cache",
    "environment_build",
    "provenance_roots",
    "provenance_policy",
]
# room: (levels, events_default, state_default, invite, redact, events at 0, others)
TABLE: dict[str, tuple[dict[str, Any], int, int, int, int, list[str], dict[str, int]]] = {
    "space": (rooms.space_power_levels(ADMIN), 0, 100, 100, 50, [], {}),
    "template": (rooms.template_room_power_levels(ADMIN), 0, 100, 100, 50, [], {}),
    "dev": (rooms.dev_room_power_levels(ADMIN), 0, 100, 100, 50, [], {}),
    "system": (
        rooms.system_room_power_levels(ADMIN),
        0,
        100,
        50,
        50,
        [B + "token_signing_key"],
        {},
    ),
    "pipeline": (
        rooms.pipeline_room_power_levels(ADMIN),
        *(100, 100, 50, 100),
        [],
        {B + "pipeline": 100},
    ),
    "artifact": (rooms.artifact_room_power_levels(ADMIN), 100, 100, 100, 100, [], {}),
    "fleet": (
        rooms.fleet_power_levels(ADMIN),
        *(0, 100, 100, 50),
        [B + "ha_lease", B + "service_status", B + "fleet_alert"],
        {B + e: 100 for e in FLEET_ADMIN_EVENTS},
    ),
    "machine": (
        rooms.machine_room_power_levels(ADMIN),
        *(0, 100, 100, 50),
        [B + e for e in ("machine_key", "machine_info", "machine_status")]
        + [B + "webrtc_offer", B + "webrtc_answer"],
        {},
    ),
    "service": (rooms.service_room_power_levels(ADMIN), 0, 100, 50, 50, [B + "service"], {}),
    "config": (
        rooms.config_room_power_levels(ADMIN, MACHINE),
        *(100, 0, 50, 100),
        ["m.room.message", B + "layout"],
        {B + "machine_config": 50, B + "credentials": 100},
    ),
}


@pytest.mark.parametrize("room", list(TABLE))
def test_each_rooms_levels_are_wires_table_exactly(room: str) -> None:
    levels, events_default, state_default, invite, redact, at_zero, others = TABLE[room]
    users = {ADMIN: 100, MACHINE: 50} if room == "config" else {ADMIN: 100}
    assert levels == {
        "users": users,
        "users_default": 0,
        "events": {**dict.fromkeys(PROTECTED, 100), **dict.fromkeys(at_zero, 0), **others},
        "events_default": events_default,
        "state_default": state_default,
        "ban": 100,
        "kick": 100,
        "invite": invite,
        "redact": redact,
        "notifications": {"room": redact},
    }


def test_ours_adds_the_parent_pointer_and_overrides_nothing() -> None:
    levels = rooms.fleet_power_levels(ADMIN)
    ours = rooms.with_ours(levels)
    assert ours["events"] == {**levels["events"], "m.space.parent": 100}
    assert {k: v for k, v in ours.items() if k != "events"} == {
        k: v for k, v in levels.items() if k != "events"
    }
    assert rooms.with_ours({"events": {"m.space.parent": 0}}) == {"events": {"m.space.parent": 0}}


def test_dev_team_points_at_the_namespaces_dev_room() -> None:
    assert rooms.dev_team_content("bureau/fleet/prod", "bureau.local") == {
        "room": "#bureau/dev:bureau.local"
    }
    assert rooms.dev_team_content("acme/fleet/x", "hub:8448") == {"room": "#acme/dev:hub:8448"}
    assert rooms.namespace_room_localpart("acme/fleet/x", "system") == "acme/system"
    assert rooms.NAMESPACE_ROOMS == ("system", "template", "pipeline", "artifact", "dev")


def _paths(levels: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [
        (key, sub)
        for key, value in levels.items()
        for sub in (value if isinstance(value, dict) else [None])
    ]


def _with_extras(levels: dict[str, Any]) -> dict[str, Any]:
    """What a live room may hold beyond the design: more operators, more event types, a
    key the design leaves alone."""
    actual = copy.deepcopy(levels)
    actual["users"]["@another-operator:s"] = 100
    actual["events"]["m.bureau.something_later"] = 0
    actual["historical"] = 100
    return actual


@pytest.mark.parametrize("room", list(TABLE))
def test_drift_names_each_level_the_design_sets_and_the_merge_mends_it(room: str) -> None:
    expected = TABLE[room][0]
    assert rooms.power_level_drift(_with_extras(expected), expected) == []
    for key, sub in _paths(expected):
        want = expected[key][sub] if sub else expected[key]
        name = f"{key}.{sub}" if sub else key
        for have in (want + 1, None):
            actual = _with_extras(expected)
            target, field = (actual[key], sub) if sub else (actual, key)
            if have is None:
                del target[field]
            else:
                target[field] = have
            assert rooms.power_level_drift(actual, expected) == [f"{name} is {have}, not {want}"]
            mended = rooms.with_power_levels(actual, expected)
            assert mended == _with_extras(expected)


def test_a_map_that_is_not_one_drifts_in_every_entry() -> None:
    expected = rooms.config_room_power_levels(ADMIN, MACHINE)
    drift = rooms.power_level_drift({**expected, "events": None}, expected)
    assert drift == [f"events.{e} is None, not {n}" for e, n in expected["events"].items()]
    mended = rooms.with_power_levels({**expected, "events": None}, expected)
    assert mended == expected
