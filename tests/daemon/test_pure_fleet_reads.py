"""Which fleet room changes the daemon reads back (bureau/daemon/fleet_reads.py)."""

from __future__ import annotations

from typing import Any

from bureau.daemon.fleet_reads import split
from bureau.wire import rooms
from bureau.wire.operator_keys import EVENT_TYPE as OPERATOR_KEYS

ME = "@bureau/fleet/prod/machine/w1:hub.test"
OTHER = "@bureau/fleet/prod/machine/w2:hub.test"


def shard(key: str, *machines: str) -> dict[str, Any]:
    content = {"encrypted_for": [*machines, "escrow:operator"]}
    return {"type": rooms.CREDENTIALS, "state_key": key, "content": content}


def test_shard_zero_and_mine_are_read_back_the_rest_applied_as_sent() -> None:
    other = shard("nix#1", OTHER)
    read, as_sent = split(
        [shard("nix", OTHER), other, shard("nix#2", ME), {"type": OPERATOR_KEYS, "state_key": ""}],
        ME,
    )
    assert read == [(rooms.CREDENTIALS, "nix"), (rooms.CREDENTIALS, "nix#2"), (OPERATOR_KEYS, "")]
    assert as_sent == [other]


def test_the_last_event_for_a_key_decides() -> None:
    read, as_sent = split([shard("nix#1", OTHER), shard("nix#1", ME)], ME)
    assert read == [(rooms.CREDENTIALS, "nix#1")]
    assert as_sent == []
    read, as_sent = split([shard("nix#1", ME), shard("nix#1", OTHER)], ME)
    assert read == []
    assert [e["content"]["encrypted_for"][0] for e in as_sent] == [OTHER]


def test_a_removed_shard_and_other_credentials_keys_are_read_back() -> None:
    gone = {"type": rooms.CREDENTIALS, "state_key": "nix#3", "content": {}}
    odd = {"type": rooms.CREDENTIALS, "state_key": "not a bundle#x", "content": {}}
    read, as_sent = split([gone, odd], ME)
    assert read == [(rooms.CREDENTIALS, "not a bundle#x")]
    assert as_sent == [gone]  # a tombstone names nobody: applied as sent, it drops the key
