"""bureau.wire.files: bootstrap.json, session.json, the operator credential file,
m.bureau.machine_key."""

from __future__ import annotations

import pytest

from bureau.errors import InputError
from bureau.wire.files import BootstrapConfig, MachineKey, OperatorCredentials, Session

FLEET = "bureau/fleet/prod"
WORKER = "bureau/fleet/prod/machine/worker-01"
PUBLIC = "age1p5ev9qk5ajx2vnqcpd4kcn90m78tqqqttpenrpl3msxnqdyqcp2qgmj057"


def _bootstrap() -> dict[str, str]:
    return {
        "homeserver_url": "http://127.0.0.1:8008",
        "server_name": "bureau.local",
        "machine_name": WORKER,
        "password": "ab" * 32,
        "fleet_prefix": FLEET,
    }


def test_bootstrap_round_trip_and_repr() -> None:
    config = BootstrapConfig.from_json(_bootstrap())
    assert config.to_json() == _bootstrap()
    assert "ab" * 32 not in repr(config)


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"homeserver_url": None}, "homeserver_url", "missing"),
        ({"homeserver_url": "ftp://x"}, "homeserver_url", "http"),
        ({"homeserver_url": "http://u:p@h"}, "homeserver_url", "credentials"),
        ({"server_name": "a b"}, "server_name", "may contain only letters"),
        ({"machine_name": "machine/worker-01"}, "machine_name", "not a full machine name"),
        ({"machine_name": "other/fleet/x/machine/w"}, "machine_name", "belongs to fleet"),
        ({"machine_name": f"{FLEET}/agent/a"}, "machine_name", "not a machine"),
        ({"password": "AB" * 32}, "password", "64 lowercase hex"),
        ({"password": "ab"}, "password", "64 lowercase hex"),
        ({"password": 7}, "password", "non-empty string"),
        ({"fleet_prefix": "bureau"}, "fleet_prefix", "not a fleet"),
    ],
)
def test_bootstrap_invalid(change: dict[str, object], field: str, problem: str) -> None:
    data: dict[str, object] = {**_bootstrap(), **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(InputError, match=problem) as info:
        BootstrapConfig.from_json(data, "boot.json")
    assert info.value.field == field
    assert str(info.value).startswith(f"boot.json: {field}: ")
    assert "AB" * 32 not in str(info.value)


def test_bootstrap_not_an_object() -> None:
    with pytest.raises(InputError, match="expected a JSON object"):
        BootstrapConfig.from_json([1], "boot.json")


def test_session_round_trip() -> None:
    data = {
        "homeserver_url": "https://hs.example",
        "user_id": f"@{WORKER}:bureau.local",
        "access_token": "syt_canary",
        "device_id": "D",
    }
    session = Session.from_json(data)
    assert session.to_json() == data
    assert "syt_canary" not in repr(session)
    with pytest.raises(InputError, match="user_id"):
        Session.from_json({**data, "user_id": "nobody"})


def test_operator_credentials_round_trip() -> None:
    env = {
        "MATRIX_HOMESERVER_URL": "http://127.0.0.1:8008",
        "MATRIX_ADMIN_USER": "@bureau-admin:bureau.local",
        "MATRIX_ADMIN_TOKEN": "syt_admin",
        "MATRIX_REGISTRATION_TOKEN": "reg",
        "MATRIX_SPACE_ROOM": "!space:bureau.local",
        "BUREAU_SERVER_NAME": "bureau.local",
        "BUREAU_FLEET": FLEET,
    }
    creds = OperatorCredentials.from_env(env, "creds")
    assert creds.to_env()["BUREAU_FLEET"] == FLEET
    assert OperatorCredentials.from_env(creds.to_env(), "creds") == creds
    # Upstream's file has no BUREAU_FLEET: the fleet is then upstream's default one.
    upstream = {k: v for k, v in env.items() if k != "BUREAU_FLEET"}
    assert OperatorCredentials.from_env(upstream, "creds").fleet == "bureau/fleet/prod"


def test_machine_key_content() -> None:
    assert MachineKey.from_json({"algorithm": "age-x25519", "public_key": PUBLIC}).to_json() == {
        "algorithm": "age-x25519",
        "public_key": PUBLIC,
    }
    with pytest.raises(InputError, match="algorithm"):
        MachineKey.from_json({"algorithm": "rsa", "public_key": PUBLIC})
    with pytest.raises(InputError, match="public_key"):
        MachineKey.from_json({"algorithm": "age-x25519", "public_key": "age1short"})
