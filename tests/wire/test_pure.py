"""Plain unit tests of the pure modules: names, passwords, secrets, wire content, room
power levels, machine classification and the retry schedules."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
import structlog

from bureau import passwords
from bureau.errors import BureauError, InputError, MatrixError, MatrixUnreachable
from bureau.launcher import first_boot
from bureau.matrix.client import retry_delay
from bureau.operator.machines import DECOMMISSIONED, ENROLLED, PROVISIONED, machine_records
from bureau.proxy.http_rules import split_target
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import has_control_character
from bureau.wire.files import BootstrapConfig, MachineKey, OperatorCredentials, Session

FLEET = "bureau/fleet/prod"
WORKER = "bureau/fleet/prod/machine/worker-01"
PUBLIC = "age1p5ev9qk5ajx2vnqcpd4kcn90m78tqqqttpenrpl3msxnqdyqcp2qgmj057"


# -- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "bureau/fleet/prod", "x.y_z=w-1/2", "a" * 84],
)
def test_valid_localparts(name: str) -> None:
    assert names.validate_localpart(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("a" * 85, "at most 84"),
        ("Upper", "may contain only"),
        ("sp ace", "may contain only"),
        ("/lead", "start or end"),
        ("trail/", "start or end"),
        ("a//b", "empty segment"),
        ("a/./b", "starting with '.'"),
        ("a/../b", "starting with '.'"),
        ("a/.hidden", "starting with '.'"),
        ("a\0b", "may contain only"),
        ("agent%2Fx", "may contain only"),
        ("agent/%2e%2e", "may contain only"),
    ],
)
def test_invalid_localparts(name: str, problem: str) -> None:
    with pytest.raises(names.InvalidName, match=problem):
        names.validate_localpart(name)


def test_control_characters_in_credential_values() -> None:
    assert not has_control_character("Bearer abc\tdef ~")
    for bad in ("a\rb", "a\nb", "a\0b", "a\x0bb", "a\x1fb", "a\x7fb"):
        assert has_control_character(bad), bad


def test_server_names() -> None:
    assert names.validate_server_name("bureau.local:8448") == "bureau.local:8448"
    assert names.validate_server_name("[::1]:8448") == "[::1]:8448"
    for bad in ("", "a b", "x@y", "#x", "host:0", "host:70000", ":80", "ho\0st", "h/st"):
        with pytest.raises(names.InvalidName):
            names.validate_server_name(bad)


def test_fleet_shape() -> None:
    assert names.validate_fleet(FLEET) == FLEET
    for bad in ("bureau", "bureau/prod", "bureau/fleet/prod/x", "bureau/fleets/prod"):
        with pytest.raises(names.InvalidName, match="not a fleet"):
            names.validate_fleet(bad)


def test_expand_short_and_full() -> None:
    assert names.expand_entity("machine/worker-01", FLEET, "machine") == WORKER
    assert names.expand_entity(WORKER, FLEET, "machine") == WORKER
    assert names.expand_entity("agent/a/b", FLEET) == f"{FLEET}/agent/a/b"
    with pytest.raises(names.InvalidName, match="belongs to fleet 'other/fleet/x'"):
        names.expand_entity("other/fleet/x/machine/w", FLEET, "machine")
    with pytest.raises(names.InvalidName, match="not a machine"):
        names.expand_entity("agent/alpha", FLEET, "machine")
    with pytest.raises(names.InvalidName, match="not <type>/<name>"):
        names.expand_entity("worker-01", FLEET, "machine")


def test_ids_and_aliases() -> None:
    assert names.user_id(WORKER, "s") == f"@{WORKER}:s"
    assert names.state_key(WORKER, "s") == f"{WORKER}:s"
    assert names.room_alias(names.machine_room_localpart(FLEET), "s") == f"#{FLEET}/machine:s"
    assert names.space_alias_localpart(FLEET) == "bureau"
    assert names.parse_user_id("@a/b:srv:8448") == ("a/b", "srv:8448")
    with pytest.raises(names.InvalidName):
        names.parse_user_id("a:b")


# -- passwords (vectors computed independently with coreutils `printf %s ... | sha256sum`) --


def test_password_derivations_match_vectors() -> None:
    token = Secret("tok-123")
    assert passwords.admin_password(token).reveal() == (
        "8eba6698a23d8394f4eee6c3833844b06afbd640ee3b1a02d15d7486cc379c2e"
    )
    assert (
        passwords.machine_permanent_password(WORKER, Secret("AGE-SECRET-KEY-1EXAMPLE")).reveal()
        == "ddf273e846cdf514e72ae75c0c8ea44057789ba6d3ed4aeb1a00870ff6c319e4"
    )
    assert passwords.machine_legacy_password(WORKER, token).reveal() == (
        "d2bae26037b49fe86f3de6130f174470f95a02c85e8d7ddd95120e5889d8d1ae"
    )


def test_one_time_password_shape() -> None:
    a, b = passwords.one_time_password().reveal(), passwords.one_time_password().reveal()
    assert a != b
    assert len(a) == 64
    assert set(a) <= set("0123456789abcdef")


# -- secrets --------------------------------------------------------------------------


def test_secret_never_renders() -> None:
    s = Secret("canary-value-xyz")
    percent = "%s" % s  # noqa: UP031 -- %-formatting is one more way to render it
    rendered = [repr(s), str(s), f"{s}", f"{s!r}", percent, repr([s]), repr({"k": s})]
    assert all("canary-value-xyz" not in r for r in rendered)
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger().warning("event", token=s)
    rendered_log = structlog.processors.JSONRenderer()(None, "info", dict(logs[0]))
    assert "canary-value-xyz" not in str(rendered_log)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        hash(s)
    assert s == Secret("canary-value-xyz")
    assert s != Secret("other")
    assert s.reveal() == "canary-value-xyz"


# -- wire content ---------------------------------------------------------------------


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


# -- power levels ---------------------------------------------------------------------


def test_config_room_levels_follow_wire() -> None:
    levels = rooms.config_room_power_levels("@admin:s", "@m:s")
    assert levels["users"] == {"@admin:s": 100, "@m:s": 50}
    assert levels["events_default"] == 100
    assert levels["state_default"] == 0
    assert levels["events"][rooms.MACHINE_CONFIG] == 50
    assert levels["events"][rooms.CREDENTIALS] == 100
    # The machine (50) cannot rewrite who may do what.
    assert levels["events"]["m.room.power_levels"] == 100


def test_fleet_and_machine_room_levels() -> None:
    assert rooms.fleet_power_levels("@a:s")["state_default"] == 100
    machine_room = rooms.machine_room_power_levels("@a:s")
    for kind in (rooms.MACHINE_KEY, rooms.MACHINE_STATUS, rooms.MACHINE_INFO):
        assert machine_room["events"][kind] == 0
    assert machine_room["state_default"] == 100


# -- machine classification -----------------------------------------------------------


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


# -- retry schedule -------------------------------------------------------------------


def test_retry_delay_prefers_server_hints() -> None:
    def rng() -> float:
        return 1.0

    assert retry_delay(0, {"retry-after": "7"}, {"retry_after_ms": 100}, rng) == 7
    assert retry_delay(0, {}, {"retry_after_ms": 1500}, rng) == 1.5
    assert retry_delay(0, {"retry-after": "900"}, {}, rng) == 30
    # Backoff: 1 s doubling, capped at 30 s, jittered between half and all of it.
    assert [retry_delay(n, {}, {}, rng) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(3, {}, {}, lambda: 0.0) == 4


class _Clock:
    """Time that passes only when slept through."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _failing(errors: list[MatrixError]) -> Callable[[], Session]:
    def boot() -> Session:
        if errors:
            raise errors.pop(0)
        return Session("https://hub.example", "@m:example", Secret("t"), "D")

    return boot


def test_first_boot_retries_only_what_waiting_can_mend() -> None:
    assert first_boot.transient(MatrixUnreachable("log in"))
    assert first_boot.transient(MatrixError("log in", 503))
    assert first_boot.transient(MatrixError("log in", 429, "M_LIMIT_EXCEEDED"))
    assert not first_boot.transient(MatrixError("log in", 403, "M_FORBIDDEN"))

    clock = _Clock()
    errors = [
        MatrixUnreachable("log in"),
        MatrixError("log in", 502),
        MatrixError("log in", 429, retry_after=900),
        MatrixUnreachable("log in"),
    ]
    waits: list[str] = []
    session = first_boot.until_done(
        _failing(errors),
        wait_seconds=600,
        log=structlog.get_logger(),
        waiting=lambda seconds, why: waits.append(why),
        sleep=clock.sleep,
        clock=lambda: clock.now,
        rng=lambda: 1.0,
    )
    assert session.user_id == "@m:example"
    # Doubling from 1 s; the server's 900 s hint is honoured but capped at 30 s.
    assert clock.slept == [1, 2, 30, 8]
    assert waits[2] == "homeserver unavailable (log in); retrying in 30 s"

    with pytest.raises(MatrixError, match="M_FORBIDDEN"):
        first_boot.until_done(
            _failing([MatrixError("log in", 403, "M_FORBIDDEN")]),
            wait_seconds=600,
            log=structlog.get_logger(),
            waiting=lambda seconds, why: None,
            sleep=clock.sleep,
        )


def test_first_boot_gives_up_after_the_wait() -> None:
    clock = _Clock()
    with pytest.raises(BureauError, match=r"after 10 s of retries; --homeserver-wait") as given_up:
        first_boot.until_done(
            _failing([MatrixUnreachable("log in")] * 20),
            wait_seconds=10,
            log=structlog.get_logger(),
            waiting=lambda seconds, why: None,
            sleep=clock.sleep,
            clock=lambda: clock.now,
            rng=lambda: 1.0,
        )
    assert not isinstance(given_up.value, MatrixError)  # not transient to an outer loop
    assert clock.slept == [1, 2, 4]
    with pytest.raises(MatrixUnreachable):
        first_boot.until_done(
            _failing([MatrixUnreachable("log in")]),
            wait_seconds=0,
            log=structlog.get_logger(),
            waiting=lambda seconds, why: None,
            sleep=clock.sleep,
        )


def test_proxy_target_keeps_bytes() -> None:
    assert split_target(b"/http/api/v1/a%2Fb?x=%2F&y") == (b"api", b"/v1/a%2Fb?x=%2F&y")
    assert split_target(b"/http/api") == (b"api", b"/")
    assert split_target(b"/http/api?q=1") == (b"api", b"/?q=1")
    assert split_target(b"/http/api/") == (b"api", b"/")
    for elsewhere in (b"http://evil.example/http/api/x", b"/http//x", b"/health", b"*"):
        assert split_target(elsewhere) is None
