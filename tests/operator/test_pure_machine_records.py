"""bureau.operator.machines.machine_records: a machine's state read from the machine room."""

from __future__ import annotations

from bureau.operator.machines import DECOMMISSIONED, ENROLLED, PROVISIONED, machine_records
from bureau.wire import rooms

FLEET = "bureau/fleet/prod"
PUBLIC = "age1p5ev9qk5ajx2vnqcpd4kcn90m78tqqqttpenrpl3msxnqdyqcp2qgmj057"


def _member(user: str, membership: str) -> dict[str, object]:
    return {"type": "m.room.member", "state_key": user, "content": {"membership": membership}}


def _key(user: str, sender: str, content: dict[str, str]) -> dict[str, object]:
    return {"type": rooms.MACHINE_KEY, "state_key": user[1:], "sender": sender, "content": content}


def test_machine_records_classify() -> None:
    s = "bureau.local"
    a, b, c, d, e = (f"@{FLEET}/machine/{n}:{s}" for n in "abcde")
    good = {"algorithm": "age-x25519", "public_key": PUBLIC}
    events = [
        _member("@bureau-admin:bureau.local", "join"),
        _member(f"@other/fleet/x/machine/z:{s}", "invite"),
        _member(a, "invite"),
        _member(b, "join"),
        _key(b, b, good),
        _member(c, "join"),
        _key(c, a, good),  # published by somebody else: not its key
        _member(d, "leave"),
        _member(e, "join"),
        _key(e, "@bureau-admin:bureau.local", {}),  # tombstone
        {"type": rooms.MACHINE_STATUS, "state_key": b[1:], "origin_server_ts": 1_700_000_000_000},
    ]
    records = {r.user_id: r for r in machine_records(events, FLEET, s)}
    assert sorted(records) == [a, b, c, d, e]
    assert records[a].state == PROVISIONED
    assert records[b].state == ENROLLED
    assert records[b].public_key == PUBLIC
    assert records[b].last_heartbeat == "2023-11-14T22:13:20Z"
    assert records[c].state == PROVISIONED
    assert records[c].public_key is None
    assert records[d].state == DECOMMISSIONED
    assert records[e].state == DECOMMISSIONED
