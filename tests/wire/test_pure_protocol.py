"""The launcher socket, typed on both sides: each request and each answer round-trips
through its JSON line, the bytes are the documented ones, and a field of the wrong shape
is refused by name (the launcher answers with that refusal; the daemon takes an answer it
cannot read for no answer and asks again)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bureau.wire.credentials import content_digest
from bureau.wire.launcher_protocol import (
    EnsureRequest,
    EnsureResult,
    LauncherStatus,
    Listing,
    ListRequest,
    PrincipalState,
    ProtocolError,
    Refusal,
    RelayedCredentials,
    ReloginRequest,
    ReloginResult,
    Request,
    SandboxState,
    StatusRequest,
    StopRequest,
    StopResult,
    encode_answer,
    parse_request,
    read_answer,
)
from bureau.wire.names import PrincipalRef
from bureau.wire.sandbox_spec import SandboxSpec

USER = "@bureau/fleet/prod/agent/a:bureau.local"
PRINCIPAL = PrincipalRef.from_user_id(USER)
# As published, upstream's and later fields included: relayed as it came.
CONTENT: dict[str, Any] = {
    "version": 1,
    "principal": USER,
    "encrypted_for": ["@bureau/fleet/prod/machine/w:bureau.local"],
    "keys": None,
    "ciphertext": "YWdl",
    "provisioned_by": "@bureau-admin:bureau.local",
    "provisioned_at": "2026-11-28T00:00:00Z",
    "signature": "",
    "expires_at": "",
    "later_field": {"kept": ["as", "is"]},
}
SPEC = {"template": "bureau/template:agent-base", "command": ["/bin/sleep", "1"]}
STATE = PrincipalState(
    principal=PRINCIPAL,
    pid=4242,
    socket="/run/bureau/fleet/prod/agent/a.proxy.sock",
    digest="sha256:00",
    keys=("TOKEN",),
    services=("api",),
    started_at="2026-11-28T00:00:00Z",
    restarts=2,
    status="running",
    sandbox=SandboxState("running", 7, "sha256:01", "t/t:s", 0, "", 1.5, 0.25),
)


def _line(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode() + b"\n"


def _ensure(**change: Any) -> bytes:
    body = {"action": "ensure", "principal": USER, "credentials": CONTENT, **change}
    return _line({k: v for k, v in body.items() if v is not ...})


def test_relayed_credentials_keep_the_content_as_published() -> None:
    relayed = RelayedCredentials.from_json(CONTENT)
    assert relayed.to_json() == CONTENT
    assert list(relayed.to_json()) == list(CONTENT)  # in its order
    assert relayed.digest == content_digest(CONTENT)  # what both sides compare
    assert relayed.event.principal == USER
    assert RelayedCredentials.from_json(relayed.to_json()) == relayed


def test_each_request_round_trips_in_its_documented_bytes() -> None:
    credentials = RelayedCredentials.from_json(CONTENT)
    spec = SandboxSpec.from_json(SPEC)
    requests: list[tuple[Request, dict[str, Any]]] = [
        (StatusRequest(), {"action": "status"}),
        (ListRequest(), {"action": "list"}),
        (ReloginRequest(), {"action": "relogin"}),
        (StopRequest(PRINCIPAL), {"action": "stop", "principal": USER}),
        (
            EnsureRequest(PRINCIPAL, credentials),
            {"action": "ensure", "principal": USER, "credentials": CONTENT},
        ),
        (
            EnsureRequest(PRINCIPAL, credentials, spec),
            {
                "action": "ensure",
                "principal": USER,
                "credentials": CONTENT,
                "sandbox": spec.to_json(),
            },
        ),
    ]
    for request, body in requests:
        assert request.to_line() == json.dumps(body, separators=(",", ":")).encode() + b"\n"
        assert parse_request(request.to_line()) == request
    # The spec the daemon sends is the one the launcher reads back: one digest for both.
    assert SandboxSpec.from_json(spec.to_json()).digest == spec.digest


def test_fields_a_request_does_not_use_are_ignored() -> None:
    assert parse_request(_line({"action": "status", "principal": USER, "x": 1})) == (
        StatusRequest()
    )
    line = _line({"action": "stop", "principal": USER, "credentials": CONTENT})
    assert parse_request(line) == StopRequest(PRINCIPAL)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"{", "request is not JSON"),
        (b"[]", "request is not a JSON object"),
        (_line({"action": "explode"}), "action must be one of status, list, ensure, stop"),
        (_line({"action": 1}), "action must be one of"),
        (_line({"action": "stop"}), "principal: expected a principal's user ID"),
        (_line({"action": "stop", "principal": "a:b"}), "principal: 'a:b' is not a Matrix"),
        (_ensure(principal="@Bad:s"), "principal: localpart: 'Bad'"),
        (
            _ensure(principal="@bureau/fleet/prod/machine/w:s"),
            "principal: @bureau/fleet/prod/machine/w:s is a machine",
        ),
        (_ensure(credentials=...), "credentials: expected the m.bureau.credentials content"),
        (_ensure(credentials=[]), "credentials: expected the m.bureau.credentials content"),
        (_ensure(credentials={**CONTENT, "version": 2}), f"credentials for {USER}: version"),
        (_ensure(credentials={**CONTENT, "ciphertext": "é"}), f"credentials for {USER}: cipher"),
        (_ensure(sandbox=[]), f"sandbox for {USER}: sandbox: expected an object"),
        (_ensure(sandbox={**SPEC, "command": []}), f"sandbox for {USER}: sandbox: command"),
        (_ensure(sandbox={**SPEC, "privileged": True}), f"sandbox for {USER}: sandbox: privi"),
        (_line({"action": "list", "sandbox": SPEC}), "sandbox: expected an object, with ensure"),
        (
            _line({"action": "stop", "principal": USER, "sandbox": SPEC}),
            "sandbox: expected an object, with ensure only",
        ),
    ],
)
def test_a_bad_request_is_refused_by_its_field(line: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_request(line)
    assert str(refused.value).startswith(problem), str(refused.value)


def test_each_answer_round_trips() -> None:
    answers: list[tuple[Any, Any]] = [
        (LauncherStatus("@m:x", 3, 2), LauncherStatus.from_json),
        (
            Listing((STATE, PrincipalState(PRINCIPAL, 1, "/s", "d", (), (), "", 0, "x"))),
            Listing.from_json,
        ),
        (EnsureResult(True, "/s"), EnsureResult.from_json),
        (StopResult(False), StopResult.from_json),
        (ReloginResult(True), ReloginResult.from_json),
    ]
    for answer, read in answers:
        line = encode_answer(answer)
        body = {"ok": True, **answer.to_json()}
        assert line == json.dumps(body, separators=(",", ":")).encode() + b"\n"
        assert read_answer(line, read) == answer
    refusal = encode_answer(Refusal("permission denied"))
    assert refusal == b'{"ok":false,"error":"permission denied"}\n'
    assert read_answer(refusal, StopResult.from_json) == Refusal("permission denied")
    assert STATE.running
    assert not PrincipalState.from_json({**STATE.to_json(), "status": "restarting"}).running
    # A status a newer launcher adds reads as not running; the answer is still read.
    assert not PrincipalState.from_json({**STATE.to_json(), "status": "sandboxing"}).running


def _listing(change: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "principals": [{**STATE.to_json(), **change}]}


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (_listing({"pid": "4242"}), "list: principals[0]: pid: expected int"),
        (_listing({"pid": True}), "list: principals[0]: pid: expected int"),
        (_listing({"keys": "TOKEN"}), "list: principals[0]: keys: expected a list of strings"),
        (_listing({"status": 7}), "list: principals[0]: status: expected str"),
        (_listing({"principal": None}), "list: principals[0]: principal: expected str"),
        (_listing({"principal": "@a"}), "list: principals[0]: principal: '@a' is not a"),
        (
            _listing({"sandbox": {**STATE.to_json()["sandbox"], "cpu_seconds": "1"}}),
            "list: principals[0]: sandbox: cpu_seconds: expected a number",
        ),
        ({"ok": True, "principals": {}}, "list: principals: expected a list"),
        ({"principals": []}, "answer: ok: expected bool"),
        ({"ok": 1, "principals": []}, "answer: ok: expected bool"),
        ({"ok": False}, "refusal: error: expected str"),
        ([], "answer: expected an object"),
    ],
)
def test_a_listing_of_the_wrong_shape_is_named(answer: Any, problem: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        read_answer(_line(answer) if isinstance(answer, dict) else b"[]\n", Listing.from_json)
    assert str(refused.value).startswith(problem), str(refused.value)


@pytest.mark.parametrize(
    ("read", "answer", "problem"),
    [
        (EnsureResult.from_json, {"changed": 1, "socket": "/s"}, "ensure: changed: expected bool"),
        (EnsureResult.from_json, {"changed": True}, "ensure: socket: expected str"),
        (StopResult.from_json, {}, "stop: stopped: expected bool"),
        (ReloginResult.from_json, {"renewed": "yes"}, "relogin: renewed: expected bool"),
        (LauncherStatus.from_json, {"machine": "@m:x", "principals": 1}, "status: running"),
        (LauncherStatus.from_json, {"machine": 1, "principals": 1, "running": 0}, "status: mach"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_named(read: Any, answer: Any, problem: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        read_answer(_line({"ok": True, **answer}), read)
    assert str(refused.value).startswith(problem), str(refused.value)
    with pytest.raises(ProtocolError, match="answer is not JSON"):
        read_answer(b"{\n", read)
