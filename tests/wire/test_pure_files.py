"""bureau.wire.files: bootstrap.json, session.json, the operator credential file,
m.bureau.machine_key."""

from __future__ import annotations

from typing import Any

import pytest

from bureau.errors import InputError
from bureau.secret import Secret
from bureau.wire.files import (
    BootstrapConfig,
    FleetCache,
    MachineConf,
    MachineKey,
    OperatorCredentials,
    Session,
    is_age_public_key,
    validate_homeserver_url,
    validate_nix_public_key,
)

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


# -- every type: a full example round trips both ways; each bad field is named ---------

MISSING = object()  # in a change: take the field out


def _changed(base: dict[str, Any], field: str, value: object) -> dict[str, Any]:
    data = {k: v for k, v in base.items() if k != field}
    if value is not MISSING:
        data[field] = value
    return data


def _named(refused: pytest.ExceptionInfo[InputError], where: str, field: str) -> None:
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{where}: {field}: ")
    assert "\n" not in str(refused.value)


def test_bootstrap_round_trips_both_ways_and_a_later_field_is_read_past() -> None:
    config = BootstrapConfig.from_json(_bootstrap())
    assert BootstrapConfig.from_json(config.to_json()) == config
    # Upstream's reader ignores a field it does not know (plain json.Unmarshal): so do we.
    assert BootstrapConfig.from_json({**_bootstrap(), "added_later": {"x": 1}}) == config


@pytest.mark.parametrize("field", list(_bootstrap()))
@pytest.mark.parametrize("value", [MISSING, 7, "", None, ["x"]], ids=repr)
def test_bootstrap_each_field_missing_or_of_the_wrong_type_is_named(
    field: str, value: object
) -> None:
    with pytest.raises(InputError) as refused:
        BootstrapConfig.from_json(_changed(_bootstrap(), field, value), "boot.json")
    _named(refused, "boot.json", field)


SESSION = {
    "homeserver_url": "https://hs.example",
    "user_id": f"@{WORKER}:bureau.local",
    "access_token": "syt_canary",
    "device_id": "D",
}


def test_session_round_trips_both_ways_as_upstream_writes_it_too() -> None:
    session = Session.from_json(SESSION)
    assert Session.from_json(session.to_json()) == session
    # Upstream's (lib/service/session.go) has no device_id; a later field is read past.
    upstream = {k: v for k, v in SESSION.items() if k != "device_id"}
    assert Session.from_json(upstream).to_json() == upstream
    assert Session.from_json({**SESSION, "added_later": 1}) == session


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("homeserver_url", MISSING),
        ("homeserver_url", 5),
        ("homeserver_url", "hs.example"),
        ("user_id", MISSING),
        ("user_id", ["@a:b"]),
        ("user_id", "a:b"),
        ("access_token", MISSING),
        ("access_token", ""),
        ("access_token", 5),
        ("device_id", 5),
    ],
)
def test_session_bad_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(InputError) as refused:
        Session.from_json(_changed(SESSION, field, value), "session.json")
    _named(refused, "session.json", field)
    assert "syt_canary" not in str(refused.value)


# Upstream's keys in upstream's order (setup.go writeCredentials), ours, then one kept.
CREDS = {
    "MATRIX_HOMESERVER_URL": "http://127.0.0.1:8008",
    "MATRIX_ADMIN_USER": "@bureau-admin:bureau.local",
    "MATRIX_ADMIN_TOKEN": "syt_admin",
    "MATRIX_REGISTRATION_TOKEN": "reg",
    "MATRIX_SPACE_ROOM": "!space:bureau.local",
    "MATRIX_SYSTEM_ROOM": "!system:bureau.local",
    "MATRIX_TEMPLATE_ROOM": "!template:bureau.local",
    "MATRIX_PIPELINE_ROOM": "!pipeline:bureau.local",
    "MATRIX_ARTIFACT_ROOM": "!artifact",  # room version 12: no server part
    "MATRIX_DEV_TEAM_ROOM": "!dev:bureau.local",
    "BUREAU_SERVER_NAME": "bureau.local",
    "BUREAU_FLEET": FLEET,
    "SOMEONE_ELSES_KEY": "kept",
}


def test_operator_credentials_round_trip_both_ways_in_upstreams_order() -> None:
    creds = OperatorCredentials.from_env(CREDS, "creds")
    assert list(creds.to_env().items()) == list(CREDS.items())
    assert OperatorCredentials.from_env(creds.to_env(), "creds") == creds
    assert creds.namespace_rooms["artifact"] == "!artifact"
    assert creds.extra == {"SOMEONE_ELSES_KEY": "kept"}
    assert OperatorCredentials.from_env(CREDS, "creds", "x/fleet/y").fleet == "x/fleet/y"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *[
            (key, MISSING)
            for key in (
                "MATRIX_HOMESERVER_URL",
                "MATRIX_ADMIN_USER",
                "MATRIX_ADMIN_TOKEN",
                "MATRIX_REGISTRATION_TOKEN",
                "MATRIX_SPACE_ROOM",
            )
        ],
        ("MATRIX_ADMIN_TOKEN", ""),
        ("MATRIX_HOMESERVER_URL", "ftp://hub"),
        ("MATRIX_ADMIN_USER", "bureau-admin"),
        ("MATRIX_SPACE_ROOM", "#space:bureau.local"),
        ("MATRIX_SYSTEM_ROOM", "system"),
        ("MATRIX_DEV_TEAM_ROOM", "!dev room"),
        ("MATRIX_ARTIFACT_ROOM", "!"),
        ("BUREAU_SERVER_NAME", "a b"),
        ("BUREAU_FLEET", "bureau/prod"),
    ],
)
def test_operator_credentials_bad_keys_are_named(field: str, value: object) -> None:
    with pytest.raises(InputError) as refused:
        OperatorCredentials.from_env(_changed(CREDS, field, value), "creds")
    _named(refused, "creds", field)
    assert "syt_admin" not in str(refused.value)


KEY = {"algorithm": "age-x25519", "public_key": PUBLIC}


def test_machine_key_round_trips_both_ways() -> None:
    key = MachineKey.from_json(KEY)
    assert key.to_json() == KEY
    assert MachineKey.from_json(key.to_json()) == key
    assert MachineKey.from_json({**KEY, "added_later": 1}) == key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("algorithm", MISSING),
        ("algorithm", 1),
        ("algorithm", "age-x448"),
        ("public_key", MISSING),
        ("public_key", None),
        ("public_key", PUBLIC.upper()),
        ("public_key", PUBLIC + "q"),
    ],
)
def test_machine_key_bad_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(InputError) as refused:
        MachineKey.from_json(_changed(KEY, field, value), "key")
    _named(refused, "key", field)


CONF = {
    "BUREAU_HOMESERVER_URL": "https://hub.example:8448",
    "BUREAU_MACHINE_NAME": WORKER,
    "BUREAU_SERVER_NAME": "bureau.local",
    "BUREAU_FLEET": FLEET,
}


def test_machine_conf_round_trips_both_ways_and_ignores_other_keys() -> None:
    conf = MachineConf.from_env(CONF, "machine.conf")
    assert conf.to_env() == CONF
    assert MachineConf.from_env(conf.to_env(), "machine.conf") == conf
    assert MachineConf.from_env({**CONF, "BUREAU_LOG_LEVEL": "debug"}, "machine.conf") == conf
    session = Session("https://hub.example:8448", f"@{WORKER}:bureau.local", Secret("t"))
    assert MachineConf.from_session(session) == conf


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *[(key, MISSING) for key in CONF],
        *[(key, "") for key in CONF],
        ("BUREAU_HOMESERVER_URL", "hub.example"),
        ("BUREAU_SERVER_NAME", "hub example"),
        ("BUREAU_FLEET", "bureau"),
        ("BUREAU_MACHINE_NAME", "machine/worker-01"),  # the full name, as upstream's
        ("BUREAU_MACHINE_NAME", "other/fleet/x/machine/w"),
        ("BUREAU_MACHINE_NAME", f"{FLEET}/agent/a"),
    ],
)
def test_machine_conf_bad_keys_are_named(field: str, value: object) -> None:
    with pytest.raises(InputError) as refused:
        MachineConf.from_env(_changed(CONF, field, value), "machine.conf")
    _named(refused, "machine.conf", field)


NIX_KEY = "cache.example-1:" + "A" * 43 + "="
CACHE_URL = "https://cache.example/main"
# Upstream's FleetCacheContent (lib/schema/events_fleet.go), every field set.
CACHE: dict[str, Any] = {
    "url": CACHE_URL,
    "name": "main",
    "public_keys": [NIX_KEY, "cache.example-2:" + "b" * 43 + "="],
    "compose_template": "bureau/template:nix-builder",
    "default_system": "x86_64-linux",
}


def test_fleet_cache_round_trips_both_ways_upstreams_fields_kept() -> None:
    cache = FleetCache.from_json(CACHE)
    assert cache.to_json() == CACHE
    assert FleetCache.from_json(cache.to_json()) == cache
    # name is omitempty upstream: a cache without named push.
    unnamed = {"url": CACHE_URL, "public_keys": [NIX_KEY]}
    assert FleetCache.from_json(unnamed).name is None
    assert FleetCache.from_json(unnamed).to_json() == unnamed
    assert FleetCache(CACHE_URL, None, (NIX_KEY,)).to_json() == unnamed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", MISSING),
        ("url", 5),
        ("url", "cache.example"),
        ("url", "https://u:p@cache.example"),
        ("name", 5),
        ("public_keys", MISSING),
        ("public_keys", []),
        ("public_keys", NIX_KEY),
        ("public_keys[1]", [NIX_KEY, 5]),
        ("public_keys[0]", ["cache.example-1:short="]),
        ("public_keys[0]", ["no-name"]),
    ],
)
def test_fleet_cache_bad_fields_are_named(field: str, value: object) -> None:
    key = field.split("[", maxsplit=1)[0]
    with pytest.raises(InputError) as refused:
        FleetCache.from_json(_changed(CACHE, key, value), "cache")
    _named(refused, "cache", field)


@pytest.mark.parametrize(
    ("url", "read"),
    [
        ("http://127.0.0.1:8008", "http://127.0.0.1:8008"),
        ("https://hub.example/", "https://hub.example"),
        ("https://hub.example/matrix/", "https://hub.example/matrix"),
        ("http://[::1]:8448", "http://[::1]:8448"),
    ],
)
def test_homeserver_urls_accepted(url: str, read: str) -> None:
    assert validate_homeserver_url(url) == read


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://hub", "not an http"),
        ("hub.example", "not an http"),
        ("http://", "no host"),
        ("http://u:p@hub", "credentials"),
        ("http://hub/?q=1", "query"),
        ("http://hub/#f", "fragment"),
        ("http://hub:99999", "invalid port"),
        ("http://hub:x", "invalid port"),
    ],
)
def test_homeserver_urls_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        validate_homeserver_url(url)


def test_nix_and_age_public_keys() -> None:
    assert validate_nix_public_key(NIX_KEY) == NIX_KEY
    for bad in ("", NIX_KEY[:-1], NIX_KEY + "A", ":" + "A" * 43 + "=", "a b:" + "A" * 43 + "="):
        with pytest.raises(ValueError, match="not a Nix public key"):
            validate_nix_public_key(bad)
    assert is_age_public_key(PUBLIC)
    assert not is_age_public_key(PUBLIC[:-1])
    assert not is_age_public_key("AGE-SECRET-KEY-1" + PUBLIC[4:])
