"""The launcher socket's answers, typed on both sides: each round-trips through its JSON,
and a field of the wrong shape is refused by name (the daemon then treats the answer as
no answer and asks again)."""

from __future__ import annotations

from typing import Any

import pytest

from bureau.wire.launcher_protocol import (
    EnsureResult,
    LauncherStatus,
    PrincipalState,
    ProtocolError,
    StopResult,
    listed,
)

STATE = PrincipalState(
    principal="@bureau/fleet/prod/agent/a:bureau.local",
    pid=4242,
    socket="/run/bureau/fleet/prod/agent/a.proxy.sock",
    digest="sha256:00",
    keys=("TOKEN",),
    services=("api",),
    started_at="2026-11-28T00:00:00Z",
    restarts=2,
    status="running",
)


def test_answers_round_trip() -> None:
    assert listed({"principals": [STATE.to_json()]}) == [STATE]
    assert LauncherStatus("@m:x", 3, 2).to_json() == {
        "machine": "@m:x",
        "principals": 3,
        "running": 2,
    }
    assert EnsureResult.from_json(EnsureResult(True, "/s").to_json()) == EnsureResult(True, "/s")
    assert StopResult.from_json(StopResult(False).to_json()) == StopResult(False)
    assert STATE.running
    assert not PrincipalState.from_json({**STATE.to_json(), "status": "restarting"}).running
    # A status a newer launcher adds reads as not running; the answer is still read.
    assert not PrincipalState.from_json({**STATE.to_json(), "status": "sandboxing"}).running


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"pid": "4242"}, "list: principals[0]: pid: expected int"),
        ({"pid": True}, "list: principals[0]: pid: expected int"),
        ({"keys": "TOKEN"}, "list: principals[0]: keys: expected a list of strings"),
        ({"status": 7}, "list: principals[0]: status: expected str"),
        ({"principal": None}, "list: principals[0]: principal: expected str"),
    ],
)
def test_a_field_of_the_wrong_shape_is_named(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        listed({"principals": [{**STATE.to_json(), **change}]})
    assert str(refused.value).startswith(problem)


def test_answers_that_are_not_answers() -> None:
    with pytest.raises(ProtocolError, match="principals: expected a list"):
        listed({"principals": {}})
    with pytest.raises(ProtocolError, match="ensure: changed: expected bool"):
        EnsureResult.from_json({"changed": 1, "socket": "/s"})
    with pytest.raises(ProtocolError, match="stop: stopped: expected bool"):
        StopResult.from_json({})
