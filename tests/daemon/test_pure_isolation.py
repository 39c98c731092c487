"""Pure parts of partial-failure isolation: the reconcile plan puts revocation first, each
principal's retries are its own, every malformed credentials event is one InputError
(never another exception), the launcher's request parser bounds nesting before parsing,
and secrets lines are reported by number, never by content."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bureau.cli.credential_commands import parse_secrets
from bureau.daemon.heartbeat import CpuSampler, status_content
from bureau.daemon.reconcile import (
    MAX_REASON,
    REFUSED_CAP_SECONDS,
    UNANSWERED_CAP_SECONDS,
    Ensure,
    Stop,
    failed,
    is_due,
    plan,
)
from bureau.errors import InputError
from bureau.wire import names
from bureau.wire.credentials import CredentialsEvent, content_digest
from bureau.wire.launcher_protocol import (
    MAX_DEPTH,
    PrincipalState,
    ProtocolError,
    nesting_depth,
    parse_request,
)
from bureau.wire.machine_config import Assignment, MachineConfig
from bureau.wire.names import PrincipalRef

P = "@bureau/fleet/prod/agent/{}:bureau.local"
GOOD: dict[str, Any] = {
    "version": 1,
    "principal": P.format("alpha"),
    "encrypted_for": ["@bureau/fleet/prod/machine/w:bureau.local"],
    "keys": ["TOKEN"],
    "ciphertext": "YWdl",
    "provisioned_by": "@bureau-admin:bureau.local",
    "provisioned_at": "2026-11-28T00:00:00Z",
    "signature": "sha256:00",
    "services": {
        "api": {
            "upstream_url": "http://127.0.0.1:8080",
            "inject_headers": {"Authorization": "TOKEN"},
        }
    },
}


def test_stops_come_before_every_start() -> None:
    config = MachineConfig((Assignment(P.format("a"), True), Assignment(P.format("z"), True)))
    credentials = {P.format("a"): {"v": 1}, P.format("z"): {"v": 2}}
    running = {P.format("m"): "sha256:x", P.format("z"): content_digest({"v": 1})}
    actions = plan(config, credentials, running)
    assert actions == [
        Stop(P.format("m")),
        Ensure(P.format("a"), {"v": 1}),
        Ensure(P.format("z"), {"v": 2}),
    ]


def test_each_principal_backs_off_on_its_own() -> None:
    ensure = Ensure(P.format("a"), {"v": 1})
    first = failed(None, ensure, "bad", refused=True, now=100.0, rng=lambda: 1.0)
    assert (first.attempts, first.retry_at) == (1, 101.0)
    assert not is_due(first, ensure, 100.5)
    assert is_due(first, ensure, 101.0)
    # New content for the same principal is tried at once, whatever the backoff.
    assert is_due(first, Ensure(P.format("a"), {"v": 2}), 100.5)
    # So is revoking it.
    assert is_due(first, Stop(P.format("a")), 100.5)
    later = first
    for _ in range(20):
        later = failed(later, ensure, "bad", refused=True, now=0.0, rng=lambda: 1.0)
    assert later.attempts == 21
    assert later.retry_at == REFUSED_CAP_SECONDS
    unanswered = failed(later, ensure, "gone", refused=False, now=0.0, rng=lambda: 0.0)
    assert unanswered.retry_at == UNANSWERED_CAP_SECONDS / 2
    # A failure of something else starts counting again.
    stop = failed(later, Stop(P.format("a")), "gone", refused=False, now=0.0, rng=lambda: 1.0)
    assert stop.attempts == 1


def test_failure_reasons_are_short_enough_for_a_heartbeat() -> None:
    huge = "http://[::1" + "x" * 60_000
    with pytest.raises(InputError) as refused:
        CredentialsEvent.from_json(
            {**GOOD, "services": {"api": {**GOOD["services"]["api"], "upstream_url": huge}}}
        )
    assert len(str(refused.value)) < 300
    failure = failed(None, Stop(P.format("a")), "x" * 60_000, refused=True, now=0, rng=lambda: 0)
    assert len(failure.reason) == MAX_REASON


def test_machine_status_shows_failed_principals(tmp_path: Any) -> None:
    proc = tmp_path
    (proc / "stat").write_text("cpu 1 0 1 10 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 2048 kB\nMemAvailable: 1024 kB\n")
    (proc / "uptime").write_text("12.5 1.0\n")
    old = PrincipalRef.from_user_id(P.format("old"))
    listed = [PrincipalState(old, 999999, "/s", "sha256:0", (), (), "", 0, "running")]
    failures = {P.format("bad"): "services: api: upstream_url: bad", P.format("old"): "expired"}
    content = status_content("@m:x", listed, CpuSampler(proc), 1.0, failures)
    assert content["principals"][P.format("bad")] == {
        "cpu_percent": 0,
        "memory_mb": 0,
        "status": "failed",
        "error": "services: api: upstream_url: bad",
    }
    assert content["principals"][P.format("old")]["status"] == "running"
    assert content["principals"][P.format("old")]["error"] == "expired"
    assert content["sandboxes"]["running"] == 1


def _mutations() -> list[tuple[str, dict[str, Any]]]:
    """Every field replaced by values of every JSON shape, plus the classes the adversarial
    pass found: a broken IPv6 literal, ports out of range, non-ASCII base64."""
    shapes: list[Any] = [None, 0, -1, 1.5, True, "", "é", "\0", [], [1], {}, {"a": 1}, "x" * 300]
    cases = []
    for field in GOOD:
        for value in shapes:
            cases.append((f"{field}={value!r:.20}", {**GOOD, field: value}))
    route = GOOD["services"]["api"]
    for url in (
        "http://[::1",
        "http://[::1]x",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:",
        "http://h:0x10",
        "http://h:-1",
        "http://h é/",
        "http://h/\r\n",
    ):
        services = {"api": {**route, "upstream_url": url}}
        cases.append((f"upstream_url={url!r}", {**GOOD, "services": services}))
    for field in route:
        for value in shapes:
            services = {"api": {**route, field: value}}
            cases.append((f"services.api.{field}={value!r:.20}", {**GOOD, "services": services}))
    cases.append(("ciphertext non-ASCII", {**GOOD, "ciphertext": "YWdlé=="}))
    cases.append(("expires_at impossible", {**GOOD, "expires_at": "2026-13-45T99:99:99Z"}))
    return cases


@pytest.mark.parametrize(("case", "content"), _mutations(), ids=[c for c, _ in _mutations()])
def test_every_malformed_event_is_one_input_error(case: str, content: dict[str, Any]) -> None:
    """Read or refused in one located line, never another exception: some mutations are
    upstream's own shapes, which are read."""
    try:
        CredentialsEvent.from_json(copy.deepcopy(content), "credentials")
    except InputError as exc:
        assert "\n" not in str(exc)  # noqa: PT017 - a refusal is one of two outcomes
        assert str(exc).startswith("credentials")  # noqa: PT017


def test_the_valid_event_parses_and_ports_are_kept() -> None:
    event = CredentialsEvent.from_json(GOOD)
    assert event.services["api"].upstream_url == "http://127.0.0.1:8080"
    for url in ("http://[::1]:65535", "https://h:1/base"):
        services = {"api": {**GOOD["services"]["api"], "upstream_url": url}}
        assert CredentialsEvent.from_json({**GOOD, "services": services}).services


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1", "is not a valid URL"),
        ("http://127.0.0.1:99999", "is not a valid URL"),
        ("http://127.0.0.1:0", "the port must be 1-65535"),
        ("http://127.0.0.1:", "the port must be 1-65535"),
    ],
)
def test_upstream_url_problems_name_the_field(url: str, problem: str) -> None:
    services = {"api": {**GOOD["services"]["api"], "upstream_url": url}}
    with pytest.raises(InputError) as refused:
        CredentialsEvent.from_json({**GOOD, "services": services}, "credentials")
    assert refused.value.field == "upstream_url"
    assert problem in str(refused.value)


def test_nesting_is_bounded_before_parsing() -> None:
    assert nesting_depth(b'{"a":"[[[[\\"[[","b":[1,{"c":[]}]}') == 4
    assert nesting_depth(b'["\\\\",[[]]]') == 3
    for hostile in (b"[" * 100_000, b'{"a":' * 50_000):
        with pytest.raises(ProtocolError, match=f"deeper than {MAX_DEPTH}"):
            parse_request(hostile + b"\n")
    deep_but_fine = json.dumps({"action": "status", "x": [[[[1]]]]}).encode()
    assert parse_request(deep_but_fine).action == "status"


def test_socket_names_cannot_collide() -> None:
    with pytest.raises(names.InvalidName, match="collides"):
        names.proxy_socket_relpath("bureau/fleet/prod/agent/alpha.proxy.sock/x")
    with pytest.raises(names.InvalidName, match="collides"):
        names.check_socket_name("bureau/fleet/prod/agent/x.proxy.sock")
    assert names.proxy_socket_relpath("bureau/fleet/prod/agent/alpha.proxy") == (
        "fleet/prod/agent/alpha.proxy.proxy.sock"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("sk-live-canary-token==\n", "line 1: has no value"),
        ("sk live canary token=x\n", "line 1: expected NAME=VALUE"),
        ("bureau.binding=sk-live-canary\n", "line 1: expected NAME=VALUE"),
        ("# comment\nsk-live-canary-token\n", "line 2: expected NAME=VALUE"),
        ("A=1\nA=sk-live-canary-token\n", "line 2: sets the name line 1 set"),
        ("c2tsaXZlY2FuYXJ5=\n", "line 1: has no value"),
        ("c2tsaXZlY2FuYXJ5==\n", "line 1: has no value"),
        ("c2tsaXZlY2FuYXJ5\nA=1\nc2tsaXZlY2FuYXJ5\n", "line 1: expected NAME=VALUE"),
        ("A=sk-live-canary\x00token\n", "line 1: the value contains a control character"),
        ("\n# nothing\n", "holds no NAME=VALUE lines"),
    ],
)
def test_secrets_lines_are_named_by_number_never_content(text: str, problem: str) -> None:
    with pytest.raises(InputError) as refused:
        parse_secrets(text, "--secrets-file (stdin)")
    assert problem in str(refused.value)
    assert "canary" not in str(refused.value)
    assert "sk-" not in str(refused.value)
    assert "c2tsaXZlY2FuYXJ5" not in str(refused.value)


def test_secrets_take_upstreams_credential_names() -> None:
    parsed = parse_secrets("github-token=t1\nMATRIX_TOKEN=t2\napi.key=t3\n", "f")
    assert {name: secret.reveal() for name, secret in parsed.items()} == {
        "github-token": "t1",
        "MATRIX_TOKEN": "t2",
        "api.key": "t3",
    }
