"""Which of a fleet room's changed state events the daemon reads back. Pure.

A sync batch only says which state changed: the daemon reads the state back as the
homeserver resolved it (service.py says why). For the config room that is its whole
state, which is small. The fleet room holds every machine's membership and every shard of
every fleet bundle, and one rotation of a bundle for 200 machines had each of them read
all of it at once (measured in bench/scale.py). So for a change in the fleet room, once
the daemon has read it whole, it reads back only the events it uses: each changed
operator key statement and fleet profile, shard 0 of each changed bundle (its ``shard``
count) and the shards whose batch content names this machine. A changed shard that names
another machine is applied as the batch carried it: it is never relayed (a shard is
relayed only when it names the machine) and holding it keeps a shard this machine has
left from being taken for its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bureau.wire import rooms
from bureau.wire.fleet_bundle import bundle_of


def names_machine(content: object, machine_user: str) -> bool:
    recipients = content.get("encrypted_for") if isinstance(content, dict) else None
    return isinstance(recipients, list) and machine_user in recipients


def split(
    events: Iterable[dict[str, Any]], machine_user: str
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(the (type, state key) to read back, the events to apply as sent), for the fleet
    room's state events in one batch (the last of each (type, state key) counts)."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        kind, key = event.get("type"), event.get("state_key")
        if isinstance(kind, str) and isinstance(key, str):
            last[(kind, key)] = event
    read, as_sent = [], []
    for (kind, key), event in last.items():
        shard = bundle_of(key) if kind == rooms.CREDENTIALS else None
        if (
            shard is not None
            and shard[1] != 0
            and not names_machine(event.get("content"), machine_user)
        ):
            as_sent.append(event)
        else:
            read.append((kind, key))
    return sorted(read), as_sent
