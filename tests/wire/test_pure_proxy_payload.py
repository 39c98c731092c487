"""The proxy's stdin payload (bureau/wire/proxy_payload.py): it round-trips, and each bad
field is refused in one line naming it, never quoting a credential value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bureau.errors import InputError
from bureau.secret import Secret
from bureau.wire.proxy_payload import ProxyPayload
from bureau.wire.service_route import ServiceRoute

USER = "@bureau/fleet/prod/agent/alpha:bureau.local"
ROUTE = {"upstream_url": "http://127.0.0.1:9", "inject_headers": {"Authorization": "TOKEN"}}
BODY: dict[str, Any] = {
    "principal": USER,
    "services": {"api": ROUTE},
    "credentials": {"TOKEN": "payload-canary"},
    "expires_at": None,
}


def test_the_payload_round_trips() -> None:
    payload = ProxyPayload(
        USER,
        {"api": ServiceRoute("http://127.0.0.1:9", {"Authorization": "TOKEN"}, "Bearer")},
        {"TOKEN": Secret("payload-canary")},
        "2030-01-01T00:00:00Z",
    )
    assert ProxyPayload.from_bytes(payload.to_bytes()) == payload
    assert payload.expires_epoch == 1893456000.0
    read = ProxyPayload.from_bytes(json.dumps(BODY).encode())
    assert json.loads(read.to_bytes()) == BODY
    assert read.expires_epoch is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"principal": None}, "principal: expected a user ID"),
        ({"principal": "bureau/fleet/prod/agent/alpha"}, "principal: 'bureau/fleet/prod/agent"),
        ({"principal": "@Alpha:bureau.local"}, "principal: localpart: 'Alpha'"),
        ({"principal": "@bureau/fleet/prod/machine/m:x"}, "principal: @bureau/fleet/prod/mach"),
        ({"credentials": []}, "credentials: expected an object"),
        ({"credentials": {"bad name": "payload-canary"}}, "credentials.bad name: expected name"),
        ({"credentials": {"TOKEN": 1}}, "credentials.TOKEN: expected name -> string"),
        ({"credentials": {"TOKEN": "payload-canary\r\n"}}, "credentials.TOKEN: contains a"),
        ({"expires_at": "tomorrow"}, "expires_at: expected an RFC 3339 time"),
        ({"expires_at": 1}, "expires_at: expected an RFC 3339 time"),
        ({"services": {}}, "services: expected an object of service name -> route"),
        ({"services": {"api": {**ROUTE, "upstream_url": "ftp://x"}}}, "services: api"),
    ],
)
def test_each_bad_field_is_refused_by_name(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(InputError) as refused:
        ProxyPayload.from_bytes(json.dumps({**BODY, **change}).encode())
    assert str(refused.value).startswith(f"proxy payload (stdin): {problem}"), str(refused.value)
    assert "canary" not in str(refused.value)


@pytest.mark.parametrize(("raw", "problem"), [(b"{", "not JSON"), (b"[]", "expected an object")])
def test_what_is_no_payload_is_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(InputError, match=f"^proxy payload \\(stdin\\): {problem}$"):
        ProxyPayload.from_bytes(raw)
