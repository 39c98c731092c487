"""bureau.wire.rooms: the power levels of each room, as WIRE.md gives them."""

from __future__ import annotations

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
