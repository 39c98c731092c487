"""The fleet bundle names, refs and shards (bureau/wire/fleet_bundle.py)."""

from __future__ import annotations

import pytest

from bureau.errors import InputError
from bureau.wire.fleet_bundle import (
    CredentialRef,
    Shard,
    binding_principal,
    bundle_of,
    shard_for,
    shard_key,
    signing_target,
)

FLEET_ROOM = "bureau/fleet/prod"
M1 = "@bureau/fleet/prod/machine/w1:hub.test"
M2 = "@bureau/fleet/prod/machine/w2:hub.test"


def test_ref_substitutes_the_fleet_room() -> None:
    ref = CredentialRef.parse("${FLEET_ROOM}:nix-cache", FLEET_ROOM, "template")
    assert (ref.room, ref.name, ref.server) == (FLEET_ROOM, "nix-cache", "")
    assert str(ref) == "bureau/fleet/prod:nix-cache"
    assert ref.in_fleet_room(FLEET_ROOM, "hub.test")


def test_ref_with_a_server_names_it() -> None:
    ref = CredentialRef.parse("bureau/fleet/prod@hub.test:nix", FLEET_ROOM, "template")
    assert str(ref) == "bureau/fleet/prod@hub.test:nix"
    assert ref.in_fleet_room(FLEET_ROOM, "hub.test")
    assert not ref.in_fleet_room(FLEET_ROOM, "other.test")


def test_ref_to_another_room_is_not_the_fleet_room() -> None:
    ref = CredentialRef.parse("bureau/creds:nix", FLEET_ROOM, "template")
    assert not ref.in_fleet_room(FLEET_ROOM, "hub.test")


@pytest.mark.parametrize("value", ["nix", ":nix", "room:", "room:a#1", "room:.x", "Bad Room:x"])
def test_bad_refs_name_the_field(value: str) -> None:
    with pytest.raises(InputError) as caught:
        CredentialRef.parse(value, FLEET_ROOM, "template x")
    assert "credential_ref" in str(caught.value)


def test_shard_keys_round_trip() -> None:
    assert shard_key("nix", 0) == "nix"
    assert shard_key("nix", 3) == "nix#3"
    assert bundle_of("nix") == ("nix", 0)
    assert bundle_of("nix#3") == ("nix", 3)
    for other in ("nix#0", "nix#03", "nix#x", "@a:b", "nix#9999"):
        assert bundle_of(other) is None, other


def test_shard_field_is_checked() -> None:
    assert Shard.from_content({}, "w") == Shard(0, 1)
    assert Shard.from_content({"shard": {"index": 1, "count": 2}}, "w") == Shard(1, 2)
    for bad, field in (
        ({"index": 2, "count": 2}, "shard.index"),
        ({"index": 0, "count": 0}, "shard.count"),
        ({"index": True, "count": 2}, "shard.index"),
        ([], "shard"),
    ):
        with pytest.raises(InputError) as caught:
            Shard.from_content({"shard": bad}, "w")
        assert field in str(caught.value)


def test_each_machine_finds_its_own_shard() -> None:
    events = {
        "nix": {"encrypted_for": [M1, "escrow:operator"], "shard": {"index": 0, "count": 2}},
        "nix#1": {"encrypted_for": [M2, "escrow:operator"], "shard": {"index": 1, "count": 2}},
        "nix#2": {"encrypted_for": ["@x:hub.test"], "shard": {"index": 2, "count": 3}},
    }
    assert shard_for(events, "nix", M1) == "nix"
    assert shard_for(events, "nix", M2) == "nix#1"
    # A shard left over from a bigger fleet is not read.
    assert shard_for(events, "nix", "@x:hub.test") is None
    assert shard_for(events, "other", M1) is None


def test_binding_and_target_cannot_pass_for_a_principal() -> None:
    assert binding_principal("nix") == "fleet:nix"
    assert signing_target(FLEET_ROOM, "hub.test", "nix#1") == "bureau/fleet/prod@hub.test:nix#1"
