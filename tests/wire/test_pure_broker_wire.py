"""What the launcher and bureau-sandboxd say to each other: each message round-trips, and
a malformed one is refused with the field it got wrong."""

from __future__ import annotations

import json
import os
import socket

import pytest

from bureau.wire.sandbox_broker import Reply, Request, WireError, receive, send
from bureau.wire.sandbox_spec import SandboxSpec

SPEC = {"template": "t/template:x", "command": ["x"], "environment": {"A": "1"}}


def test_a_request_and_a_reply_round_trip() -> None:
    spec = SandboxSpec.from_json(SPEC)
    request = Request("start", "@a/fleet/b/agent/c:s", keeper=7, spec=spec, names=("TOKEN",))
    assert Request.from_json(request.to_json()) == request
    # The spec travels as its JSON: the bytes a SandboxSpec's to_json gives.
    assert json.loads(request.to_json())["spec"] == spec.to_json()
    assert Request.from_json(Request("sweep", adopted=(1, 2)).to_json()).spec is None
    reply = Reply(pid=3, how="status 0", memory=10, cpu=1.5, mode="v2", killed=("@p:s",))
    assert Reply.from_json(reply.to_json()) == reply


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"op": "format-disk"}, "'op': unknown operation"),
        ({"op": "kill", "keeper": "1"}, "'keeper': expected int"),
        ({"op": "kill", "keeper": True}, "'keeper': expected int"),
        ({"op": "start", "spec": []}, "'spec': expected an object"),
        ({"op": "start", "spec": {**SPEC, "command": []}}, "'spec': sandbox: command: no"),
        ({"op": "check", "spec": {**SPEC, "privileged": 1}}, "'spec': sandbox: privileged"),
        ({"op": "sweep", "adopted": [1, "2"]}, "'adopted': expected a list of integers"),
        ({"op": "check", "names": [1]}, "'names': expected a list of strings"),
        ({"op": "finish", "reaped": 1}, "'reaped': expected bool"),
    ],
)
def test_a_bad_request_names_its_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(WireError, match=field):
        Request.from_json(json.dumps(raw).encode())


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "not a JSON message"),
        (b'{"how": 1}', "'how': expected a string or null"),
        (b'{"cpu": "1"}', "'cpu': expected a number"),
        (b'{"error": null}', "'error': expected str"),
    ],
)
def test_a_bad_reply_names_its_field(raw: bytes, field: str) -> None:
    with pytest.raises(WireError, match=field):
        Reply.from_json(raw)


def test_descriptors_travel_and_too_many_are_refused() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        reader, writer = os.pipe()
        send(left, b"{}", [reader, writer])
        with pytest.raises(WireError, match="descriptors it should not carry"):
            receive(right, max_fds=1)
        send(left, b"{}", [reader])
        message, fds = receive(right, max_fds=1)
        assert message == b"{}"
        assert len(fds) == 1
        for fd in (*fds, reader, writer):
            os.close(fd)
