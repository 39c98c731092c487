"""bureau.wire.names: localparts, server names, fleets, short-name expansion, IDs; and the
account references, each spelling of a name converting to the others and back, each bad
part refused with an error naming it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bureau.wire import names
from bureau.wire.names import InvalidName, MachineRef, PrincipalRef, UserRef

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


# -- account references --------------------------------------------------------------

SERVER = "bureau.local:8448"
AGENT = "bureau/fleet/prod/agent/alpha"
MACHINE = WORKER


@pytest.mark.parametrize("kind", [UserRef, PrincipalRef])
def test_every_spelling_round_trips(kind: type[UserRef]) -> None:
    ref = kind.from_localpart(AGENT, SERVER)
    assert ref.user_id == f"@{AGENT}:{SERVER}"
    assert ref.state_key == f"{AGENT}:{SERVER}"
    assert ref.room_alias == f"#{AGENT}:{SERVER}"
    assert str(ref) == ref.user_id
    assert kind.from_user_id(ref.user_id) == ref
    assert kind.from_state_key(ref.state_key) == ref
    assert kind.from_localpart(ref.localpart, ref.server) == ref
    assert type(kind.from_user_id(ref.user_id)) is kind


def test_a_machine_knows_its_fleet() -> None:
    machine = MachineRef.from_user_id(f"@{MACHINE}:{SERVER}")
    assert (machine.localpart, machine.server) == (MACHINE, SERVER)
    assert machine.fleet == "bureau/fleet/prod"
    assert MachineRef.from_state_key(machine.state_key) == machine
    # Any account, outside a fleet too (the admin's).
    assert UserRef.from_user_id("@bureau-admin:x").localpart == "bureau-admin"


def test_a_principal_knows_its_socket_and_fleet() -> None:
    ref = PrincipalRef.from_localpart(AGENT, SERVER)
    assert ref.proxy_socket_relpath == "fleet/prod/agent/alpha.proxy.sock"
    assert ref.check_fleet(SERVER, "bureau/fleet/prod") is ref
    with pytest.raises(InvalidName, match="not in this machine's fleet"):
        ref.check_fleet(SERVER, "bureau/fleet/other")
    colliding = PrincipalRef.from_localpart(f"{AGENT}.proxy.sock/x", SERVER)
    with pytest.raises(InvalidName, match="collides"):
        colliding.check_fleet(SERVER, "bureau/fleet/prod")
    # Stopping takes any name of the fleet, one that could never run too.
    assert colliding.check_fleet(SERVER, "bureau/fleet/prod", to_run=False) is colliding


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: UserRef("", "s"), "localpart: empty name"),
        (lambda: UserRef("Alpha", "s"), "localpart: 'Alpha' may contain only"),
        (lambda: UserRef("a//b", "s"), "localpart: 'a//b' has an empty segment"),
        (lambda: UserRef("a/.b", "s"), "localpart: 'a/.b' has a segment starting with '.'"),
        (lambda: UserRef("a" * 85, "s"), "localpart: 'aaa"),
        (lambda: UserRef("a", ""), "server name: empty server name"),
        (lambda: UserRef("a", "ex ample"), "server name: 'ex ample' may contain only"),
        (lambda: UserRef("a", "h:99999"), "server name: 'h:99999' has an invalid port"),
        (lambda: UserRef.from_user_id("a:s"), "'a:s' is not a Matrix user ID"),
        (lambda: UserRef.from_user_id("@a"), "'@a' is not a Matrix user ID"),
        (lambda: UserRef.from_user_id("@Bad:s"), "localpart: 'Bad'"),
        (lambda: UserRef.from_user_id("@a:s s"), "server name: 's s'"),
        (lambda: UserRef.from_state_key("@a:s"), "'@a:s' is not an account's state key"),
        (lambda: UserRef.from_state_key("a"), "'a' is not an account's state key"),
        (lambda: UserRef.from_state_key("a:"), "server name: empty server name"),
        (lambda: MachineRef.from_localpart(AGENT, "s"), f"localpart: '{AGENT}' is not a machine"),
        (lambda: MachineRef.from_localpart("worker-01", "s"), "localpart: 'worker-01' is not a"),
        (lambda: PrincipalRef.from_localpart(MACHINE, "s"), f"@{MACHINE}:s is a machine"),
        (lambda: PrincipalRef.from_state_key(f"{MACHINE}:s"), f"@{MACHINE}:s is a machine"),
    ],
)
def test_each_bad_part_is_refused_by_name(make: Callable[[], object], problem: str) -> None:
    with pytest.raises(InvalidName) as refused:
        make()
    assert str(refused.value).startswith(problem), str(refused.value)


def test_kinds_are_not_interchangeable() -> None:
    assert PrincipalRef(AGENT, SERVER) != UserRef(AGENT, SERVER)
    refs = {PrincipalRef(AGENT, SERVER), PrincipalRef(AGENT, SERVER)}
    assert len(refs) == 1  # frozen: usable as a key
    with pytest.raises(AttributeError):
        refs.pop().localpart = "x"  # type: ignore[misc]
