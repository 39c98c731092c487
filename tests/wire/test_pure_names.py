"""bureau.wire.names: localparts, server names, fleets, short-name expansion, IDs."""

from __future__ import annotations

import pytest

from bureau.wire import names

FLEET = "bureau/fleet/prod"
WORKER = "bureau/fleet/prod/machine/worker-01"


@pytest.mark.parametrize(
    "name",
    ["a", "bureau/fleet/prod", "x.y_z=w-1/2", "a" * 84],
)
def test_valid_localparts(name: str) -> None:
    assert names.validate_localpart(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("a" * 85, "at most 84"),
        ("Upper", "may contain only"),
        ("sp ace", "may contain only"),
        ("/lead", "start or end"),
        ("trail/", "start or end"),
        ("a//b", "empty segment"),
        ("a/./b", "starting with '.'"),
        ("a/../b", "starting with '.'"),
        ("a/.hidden", "starting with '.'"),
        ("a\0b", "may contain only"),
        ("agent%2Fx", "may contain only"),
        ("agent/%2e%2e", "may contain only"),
    ],
)
def test_invalid_localparts(name: str, problem: str) -> None:
    with pytest.raises(names.InvalidName, match=problem):
        names.validate_localpart(name)


def test_server_names() -> None:
    assert names.validate_server_name("bureau.local:8448") == "bureau.local:8448"
    assert names.validate_server_name("[::1]:8448") == "[::1]:8448"
    for bad in ("", "a b", "x@y", "#x", "host:0", "host:70000", ":80", "ho\0st", "h/st"):
        with pytest.raises(names.InvalidName):
            names.validate_server_name(bad)


def test_fleet_shape() -> None:
    assert names.validate_fleet(FLEET) == FLEET
    for bad in ("bureau", "bureau/prod", "bureau/fleet/prod/x", "bureau/fleets/prod"):
        with pytest.raises(names.InvalidName, match="not a fleet"):
            names.validate_fleet(bad)


def test_expand_short_and_full() -> None:
    assert names.expand_entity("machine/worker-01", FLEET, "machine") == WORKER
    assert names.expand_entity(WORKER, FLEET, "machine") == WORKER
    assert names.expand_entity("agent/a/b", FLEET) == f"{FLEET}/agent/a/b"
    with pytest.raises(names.InvalidName, match="belongs to fleet 'other/fleet/x'"):
        names.expand_entity("other/fleet/x/machine/w", FLEET, "machine")
    with pytest.raises(names.InvalidName, match="not a machine"):
        names.expand_entity("agent/alpha", FLEET, "machine")
    with pytest.raises(names.InvalidName, match="not <type>/<name>"):
        names.expand_entity("worker-01", FLEET, "machine")


def test_ids_and_aliases() -> None:
    assert names.user_id(WORKER, "s") == f"@{WORKER}:s"
    assert names.state_key(WORKER, "s") == f"{WORKER}:s"
    assert names.room_alias(names.machine_room_localpart(FLEET), "s") == f"#{FLEET}/machine:s"
    assert names.space_alias_localpart(FLEET) == "bureau"
    assert names.parse_user_id("@a/b:srv:8448") == ("a/b", "srv:8448")
    with pytest.raises(names.InvalidName):
        names.parse_user_id("a:b")
