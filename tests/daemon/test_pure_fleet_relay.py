"""The daemon's side of fleet bundles (#20), as plain functions: the shard that names this
machine goes with each principal whose template names the bundle; a principal whose bundle
names no shard for it, is not published, or is in another room is not run (and its reason
is logged once, naming principal and bundle, no content); the launcher protocol carries
the shard, refusing a bad field by name; and the running digest the plan compares changes
with the shard, so a rotation re-ensures every principal using it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bureau.daemon.fleet_relay import fleet_relays
from bureau.daemon.reconcile import Ensure, plan, tried
from bureau.wire.credentials import content_digest
from bureau.wire.launcher_protocol import (
    EnsureRequest,
    FleetCredentials,
    ProtocolError,
    RelayedCredentials,
    parse_request,
    running_digest,
)
from bureau.wire.machine_config import MachineConfig
from bureau.wire.names import PrincipalRef

SERVER = "hub.example"
FLEET = "ns/fleet/prod"
MACHINE = f"@{FLEET}/machine/w1:{SERVER}"
OTHER_MACHINE = f"@{FLEET}/machine/w2:{SERVER}"
ALPHA = f"@{FLEET}/agent/alpha:{SERVER}"
BETA = f"@{FLEET}/agent/beta:{SERVER}"
CANARY = "canary-fleet-content-7d1e"  # stands for content: never in a log


def _shard(recipients: list[str], index: int = 0, count: int = 1, tag: str = "") -> dict[str, Any]:
    content: dict[str, Any] = {
        "version": 1,
        "principal": "",
        "encrypted_for": [*recipients, "escrow:operator"],
        "keys": ["FLEET_TOKEN"],
        "ciphertext": "YWdl",
        "provisioned_by": "@admin:hub.example",
        "provisioned_at": "2026-11-28T00:00:00Z",
        "signature": CANARY + tag,
    }
    if count > 1:
        content["shard"] = {"index": index, "count": count}
    return content


def _own(principal: str) -> dict[str, Any]:
    return {**_shard([MACHINE]), "principal": principal, "signature": ""}


def test_the_shard_naming_this_machine_goes_and_the_others_are_held() -> None:
    events = {
        "shared": _shard([OTHER_MACHINE], 0, 2),
        "shared#1": _shard([MACHINE], 1, 2),
        "gone": _shard([OTHER_MACHINE]),
    }
    refs = {
        ALPHA: "${FLEET_ROOM}:shared",
        BETA: "${FLEET_ROOM}:gone",
        "@ns/fleet/prod/agent/c:hub.example": "${FLEET_ROOM}:absent",
        "@ns/fleet/prod/agent/d:hub.example": "ns/fleet/staging:shared",
    }
    with capture_logs() as logs:
        relays, problems = fleet_relays(refs, events, MACHINE, {}, structlog.get_logger())
        again = fleet_relays(refs, events, MACHINE, problems, structlog.get_logger())
    assert relays == {ALPHA: {"state_key": "shared#1", "content": events["shared#1"]}}
    assert again == (relays, problems)
    assert problems == {
        BETA: "fleet bundle gone names no shard for this machine; not served here",
        "@ns/fleet/prod/agent/c:hub.example": "fleet bundle absent is not published in the "
        "fleet room",
        "@ns/fleet/prod/agent/d:hub.example": "template of @ns/fleet/prod/agent/d:hub.example: "
        "credential_ref: names ns/fleet/staging:shared; only the fleet room's bundles "
        "(${FLEET_ROOM}:<name>) are served here",
    }
    assert [(e["principal"], e["bundle"]) for e in logs] == [
        (BETA, "gone"),
        ("@ns/fleet/prod/agent/c:hub.example", "absent"),
        ("@ns/fleet/prod/agent/d:hub.example", "ns/fleet/staging:shared"),
    ]  # once each: the second pass logs nothing
    assert CANARY not in repr(logs)


def test_a_rotated_shard_changes_the_running_digest_and_re_ensures() -> None:
    config = MachineConfig.from_json({"principals": [{"principal": ALPHA, "auto_start": True}]})
    credentials = {ALPHA: _own(ALPHA)}
    first = {"state_key": "shared", "content": _shard([MACHINE], tag="1")}
    rotated = {"state_key": "shared", "content": _shard([MACHINE], tag="2")}
    running = {ALPHA: running_digest(credentials[ALPHA], first)}
    assert plan(config, credentials, running, fleet={ALPHA: first}) == []
    actions = plan(config, credentials, running, fleet={ALPHA: rotated})
    assert actions == [Ensure(ALPHA, credentials[ALPHA], None, config.principals[0].raw or None,
                              {}, rotated)]  # fmt: skip
    # Without a fleet bundle the digest is the content's, as before fleet bundles.
    assert running_digest(credentials[ALPHA], None) == content_digest(credentials[ALPHA])
    assert tried(actions[0]) != tried(Ensure(ALPHA, credentials[ALPHA]))


def test_the_launcher_protocol_carries_the_shard_both_ways() -> None:
    shard = _shard([MACHINE], 1, 2)
    fleet = FleetCredentials.from_json({"state_key": "shared#1", "content": shard})
    request = EnsureRequest(
        PrincipalRef.from_user_id(ALPHA),
        RelayedCredentials.from_json(_own(ALPHA)),
        fleet_credentials=fleet,
    )
    line = request.to_line()
    read = parse_request(line)
    assert isinstance(read, EnsureRequest)
    assert read.fleet_credentials == fleet
    assert read.fleet_credentials.name == "shared"
    assert read.digest == running_digest(_own(ALPHA), {"state_key": "shared#1", "content": shard})


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ("x", 'expected {"state_key", "content"}'),
        ({"state_key": "a#01", "content": {}}, "state_key: expected a fleet bundle's state key"),
        ({"state_key": "a", "content": []}, "content: expected the m.bureau.credentials"),
        ({"state_key": "a", "content": {**_shard([MACHINE]), "principal": ALPHA}},
         'content: principal: expected "" (a fleet bundle)'),
        ({"state_key": "a", "content": {**_shard([MACHINE]), "encrypted_for": []}},
         "content: encrypted_for: expected a non-empty list"),
    ],
)  # fmt: skip
def test_a_bad_shard_is_refused_by_name(fleet: Any, message: str) -> None:
    request = EnsureRequest(
        PrincipalRef.from_user_id(ALPHA), RelayedCredentials.from_json(_own(ALPHA))
    ).to_json()
    line = json.dumps({**request, "fleet_credentials": fleet}).encode()
    with pytest.raises(ProtocolError, match="fleet_credentials for " + ALPHA) as caught:
        parse_request(line)
    assert message in str(caught.value)
