"""Fleet bundles' sizes and shards (bureau/operator/fleet_bundles.py), with real age
encryption and real operator signatures, no hub: how many recipients one state event
holds, and an oversized fleet split into the fewest shards that fit, each machine in
exactly one, each machine's identity opening its own."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest

from bureau import age_keys
from bureau.errors import InputError
from bureau.launcher import fleet_bundles as launcher_side
from bureau.operator.fleet_bundles import (
    ALL,
    MAX_RECIPIENTS,
    SEALED_FOR_FIELD,
    Recipient,
    Sealer,
    content_size,
    sealed_for,
    split,
)
from bureau.operator.principal_credentials import MAX_CONTENT_BYTES
from bureau.secret import Secret
from bureau.wire import rooms
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    CredentialsEvent,
    bundle_plaintext,
    open_plaintext,
)
from bureau.wire.fleet_bundle import (
    Shard,
    binding_principal,
    shard_for,
    shard_key,
    signing_target,
)
from bureau.wire.launcher_protocol import FleetCredentials
from bureau.wire.service_route import ServiceRoute
from bureau.wire.signing import OperatorKey, sign, verify

SERVER = "hub.example.org"
FLEET_ROOM = "bureau/fleet/prod"
SMALL = {"NIX_CACHE_TOKEN": Secret("c" * 40)}
# A large set: 32 KiB of values (46 KiB is the most a principal bundle holds).
LARGE = {f"KEY_{i:02d}": Secret(f"{i:02d}" * 512) for i in range(32)}
SERVICES = {
    "cache": ServiceRoute("https://cache.example.org", {"Authorization": "NIX_CACHE_TOKEN"})
}


def _sealer(key: OperatorKey, escrow: str, secrets: dict[str, Secret], name: str) -> Sealer:
    services = SERVICES if "NIX_CACHE_TOKEN" in secrets else {}

    def signer(state_key: str, content: dict[str, Any]) -> dict[str, Any]:
        target = signing_target(FLEET_ROOM, SERVER, state_key)
        return sign(content, rooms.CREDENTIALS, target, key)

    return Sealer(
        name=name,
        plaintext=bundle_plaintext(secrets, binding_principal(name), services),
        keys=tuple(sorted(secrets)),
        services=services,
        escrow=escrow,
        mode=ALL,
        provisioned_by=f"@bureau-admin:{SERVER}",
        provisioned_at="2026-11-28T12:00:00Z",
        sign=signer,
    )


def _machines(count: int) -> tuple[list[Recipient], dict[str, Secret]]:
    """``count`` machines with real age keys and user IDs of a realistic length."""
    recipients, identities = [], {}
    for i in range(count):
        secret, public = age_keys.generate()
        user = f"@{FLEET_ROOM}/machine/worker-{i:04d}:{SERVER}"
        recipients.append(Recipient(user, public))
        identities[user] = secret
    return recipients, identities


def _fits_in_one(sealer: Sealer, recipients: list[Recipient]) -> int:
    """The most recipients one event holds, by bisection over real shards."""
    low, high = 0, len(recipients)
    while low < high:
        mid = (low + high + 1) // 2
        if content_size(sealer.shard(0, 1, recipients[:mid])) <= MAX_CONTENT_BYTES:
            low = mid
        else:
            high = mid - 1
    return low


@pytest.fixture(scope="module")
def fleet() -> tuple[list[Recipient], dict[str, Secret]]:
    return _machines(900)


@pytest.fixture(scope="module")
def operator_key() -> OperatorKey:
    return OperatorKey.generate()


def test_recipients_per_event_small_and_large(
    fleet: tuple[list[Recipient], dict[str, Secret]], operator_key: OperatorKey
) -> None:
    recipients, _ = fleet
    escrow = age_keys.generate()[1]
    small = _fits_in_one(_sealer(operator_key, escrow, SMALL, "nix-cache"), recipients)
    large = _fits_in_one(_sealer(operator_key, escrow, LARGE, "big"), recipients)
    print(f"\nrecipients per event (+ escrow): small secrets {small}, 32 KiB of secrets {large}")
    # What WIRE.md states: about 330 machines beside a small set, about 90 beside 32 KiB.
    assert 300 <= small <= 360
    assert 80 <= large <= 100
    # The planner agrees with this bound (without the cap on recipients a shard, which keeps
    # each machine's decrypt short), give or take the few recipients age's random grease
    # stanza makes room for or not.
    sealer = _sealer(operator_key, escrow, SMALL, "nix-cache")
    for n, each in ((small, sealer), (large, _sealer(operator_key, escrow, LARGE, "big"))):
        assert len(each.plan(recipients[: n - 3], max_recipients=n)) == 1
        assert len(each.plan(recipients[: n + 3], max_recipients=n + 3)) == 2
    assert len(sealer.plan(recipients[:MAX_RECIPIENTS])) == 1
    assert len(sealer.plan(recipients[: MAX_RECIPIENTS + 1])) == 2


def test_an_oversized_fleet_is_sharded_each_machine_in_one_shard(
    fleet: tuple[list[Recipient], dict[str, Secret]], operator_key: OperatorKey
) -> None:
    recipients, identities = fleet
    escrow_secret, escrow = age_keys.generate()
    name = "nix-cache"
    shards = _sealer(operator_key, escrow, SMALL, name).plan(
        list(reversed(recipients)), max_recipients=len(recipients)
    )
    assert len(shards) == 3  # 900 machines at about 330 an event: the fewest that fit
    events = {shard_key(name, i): s for i, s in enumerate(shards)}
    seen: dict[str, int] = {}
    for index, content in enumerate(shards):
        key = shard_key(name, index)
        assert content_size(content) <= MAX_CONTENT_BYTES < 64 * 1024
        assert Shard.from_content(content, key) == Shard(index, 3)
        verify(
            content,
            rooms.CREDENTIALS,
            signing_target(FLEET_ROOM, SERVER, key),
            {operator_key.key_id: operator_key.public},
            key,
        )
        event = CredentialsEvent.from_json(content, key)
        assert event.principal == ""
        assert event.encrypted_for[-1] == ESCROW_RECIPIENT
        for user in event.encrypted_for[:-1]:
            seen[user] = seen.get(user, 0) + 1
        # The escrow opens every shard, and the plaintext is bound to this bundle.
        opened = open_plaintext(
            age_keys.decrypt(event.ciphertext, escrow_secret),
            replace(event, principal=binding_principal(name)),
            key,
            unbound_allowed=False,
        )
        assert opened.credentials["NIX_CACHE_TOKEN"].reveal() == "c" * 40
        with pytest.raises(InputError, match="binding"):
            open_plaintext(
                age_keys.decrypt(event.ciphertext, escrow_secret),
                replace(event, principal=binding_principal("other")),
                key,
                unbound_allowed=False,
            )
    assert seen == dict.fromkeys(identities, 1)
    # Each machine finds its own shard and opens it; a machine of another shard cannot.
    for user, identity in list(identities.items())[::37]:
        mine = shard_for(events, name, user)
        assert mine is not None
        ciphertext = CredentialsEvent.from_json(events[mine], mine).ciphertext
        assert json.loads(age_keys.decrypt(ciphertext, identity))["NIX_CACHE_TOKEN"] == "c" * 40
        other = shard_key(name, (int(mine.partition("#")[2] or 0) + 1) % 3)
        with pytest.raises(age_keys.DecryptFailed):
            age_keys.decrypt(CredentialsEvent.from_json(events[other], other).ciphertext, identity)


def test_two_hundred_machines_in_shards_of_at_most_the_cap(
    fleet: tuple[list[Recipient], dict[str, Secret]], operator_key: OperatorKey
) -> None:
    recipients, identities = fleet
    escrow = age_keys.generate()[1]
    shards = _sealer(operator_key, escrow, SMALL, "n").plan(recipients[:200])
    assert [len(s["encrypted_for"]) - 1 for s in shards] == [50, 50, 50, 50]
    # What a machine pays for its shard: decrypting as its last recipient.
    last = CredentialsEvent.from_json(shards[-1], "n")
    identity = identities[last.encrypted_for[-2]]
    started = time.perf_counter()
    for _ in range(10):
        age_keys.decrypt(last.ciphertext, identity)
    per = (time.perf_counter() - started) / 10
    print(f"\ndecrypt as the 50th of 51 recipients: {per * 1000:.2f} ms")
    assert per < 0.02


def test_sealed_for_changes_with_a_key_and_not_with_order() -> None:
    a, b = Recipient("@a:s", "age1a"), Recipient("@b:s", "age1b")
    assert sealed_for([a, b], "age1e") == sealed_for([b, a], "age1e")
    assert sealed_for([a, b], "age1e") != sealed_for([a, replace(b, public_key="age1c")], "age1e")
    assert sealed_for([a], "age1e") != sealed_for([a], "age1f")


def test_split_is_even_and_keeps_order() -> None:
    items = [Recipient(f"@{i}:s", "k") for i in range(10)]
    groups = split(items, 3)
    assert [len(g) for g in groups] == [4, 3, 3]
    assert [r for g in groups for r in g] == items
    assert split([], 1) == [[]]


def test_an_empty_fleet_is_one_shard_for_the_escrow(operator_key: OperatorKey) -> None:
    escrow = age_keys.generate()[1]
    (only,) = _sealer(operator_key, escrow, SMALL, "n").plan([])
    assert only["encrypted_for"] == [ESCROW_RECIPIENT]
    assert "shard" not in only
    assert only[SEALED_FOR_FIELD] == sealed_for([], escrow)


def test_the_launcher_opens_each_shard_the_planner_writes(
    fleet: tuple[list[Recipient], dict[str, Secret]], operator_key: OperatorKey
) -> None:
    """What the machine side (launcher/fleet_bundles.py) reads is what this side writes:
    each shard, relayed as the daemon relays it, checked for its machine and opened
    against its binding with the services it carries."""
    recipients, identities = fleet
    escrow = age_keys.generate()[1]
    shards = _sealer(operator_key, escrow, SMALL, "nix-cache").plan(recipients[:130])
    assert len(shards) == 3
    for index, content in enumerate(shards):
        relayed = FleetCredentials.from_json(
            {"state_key": shard_key("nix-cache", index), "content": content}
        )
        user = relayed.event.encrypted_for[0]
        launcher_side.check("@agent:s", relayed, [user])
        plaintext = age_keys.decrypt(relayed.event.ciphertext, identities[user])
        opened = launcher_side.opened("@agent:s", relayed, plaintext, unbound_allowed=False)
        assert opened.bound
        assert opened.credentials["NIX_CACHE_TOKEN"].reveal() == "c" * 40
        assert relayed.event.services == SERVICES
