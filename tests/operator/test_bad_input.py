"""Bad input at every door, each refused with one clear line (or a logged refusal) while the
last good state stays: names, credentials events (and age's malformed-file classes as far
as our wrapper sees them), services files, and who may publish credentials at all."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, fresh, one_line_error
from launcher_proc import UNSIGNED, launcher, proxies_under
from machine_helpers import (
    credentials_event,
    credentials_listed,
    enroll,
    provision_credentials,
    served_token,
    services_file,
)
from processes import echo_upstream, launcher_ensure

from bureau.errors import MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.launcher_protocol import MAX_MESSAGE

DAMAGED = "not encrypted to this machine's key, or damaged"


def _split_age(data: bytes) -> tuple[bytes, bytes, bytes]:
    """An age file as (header lines up to the MAC line, the MAC line, the payload)."""
    mac_at = data.index(b"\n--- ") + 1
    end = data.index(b"\n", mac_at) + 1
    return data[:mac_at], data[mac_at:end], data[end:]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _age_classes(good: bytes, other_recipient: str) -> dict[str, bytes]:
    """age's public malformed-file classes (the C2SP testkit's header, stanza, MAC and
    payload failures), made from a good file by hand."""
    header, mac, payload = _split_age(good)
    stanza_body = header.index(b"\n", header.index(b"-> X25519")) + 1
    wrong = subprocess.run(
        ["age", "-r", other_recipient], input=b"{}", capture_output=True, check=True
    ).stdout
    return {
        "not an age file": b"hello, world\n",
        "unknown version line": header.replace(b"age-encryption.org/v1", b"age-encryption.org/v2")
        + mac
        + payload,
        "unknown recipient type": header.replace(b"-> X25519", b"-> X99999") + mac + payload,
        "stanza body bit-flipped": _flip(header, stanza_body + 3) + mac + payload,
        "header MAC bit-flipped": header + _flip(mac, 6) + payload,
        "header MAC missing": header + payload,
        "wrong recipient": wrong,
        "payload nonce truncated": header + mac + payload[:8],
        "payload tag bit-flipped": header + mac + _flip(payload, len(payload) - 1),
        "payload truncated": header + mac + payload[:-1],
        "payload with trailing data": header + mac + payload + b"\0",
        "payload empty": header + mac,
    }


def test_malformed_credentials_are_refused_and_the_proxy_runs_on(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    other = enroll(fleet, tmp_path / "other")
    principal = f"@{fleet.name}/agent/alpha:{fleet.hub.server_name}"
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        provisioned = provision_credentials(
            fleet, machine, "agent/alpha", services, "TOKEN=kept-canary\n"
        )
        assert provisioned.returncode == 0, provisioned.stderr
        good = credentials_event(fleet, machine)
        ciphertext = base64.b64decode(good["ciphertext"])
        route = good["services"]["api"]
        event_cases: dict[str, tuple[dict[str, Any], str]] = {
            "unknown version": ({**good, "version": 2}, "version: expected 1"),
            "non-string recipients": (
                {**good, "encrypted_for": [1]},
                "encrypted_for: expected a non-empty list of strings",
            ),
            "non-string header map value": (
                {**good, "services": {"api": {**route, "inject_headers": {"Authorization": 5}}}},
                "inject_headers.Authorization: expected a credential name",
            ),
            "ciphertext not base64": ({**good, "ciphertext": "%%%"}, "not standard padded base64"),
            "principal with NUL": ({**good, "principal": principal[:-1] + "\0"}, "principal"),
            "expired": ({**good, "expires_at": "2020-01-01T00:00:00Z"}, "expired at"),
        }
        for field in ("principal", "encrypted_for", "keys", "ciphertext", "services", "signature"):
            missing = {k: v for k, v in good.items() if k != field}
            event_cases[f"missing {field}"] = (missing, field)
        for name, data in _age_classes(ciphertext, other.public_key).items():
            damaged = {**good, "ciphertext": base64.b64encode(data).decode()}
            event_cases[f"age: {name}"] = (damaged, DAMAGED)
        # Changed, the operator's signature no longer matches: each goes unsigned, as
        # upstream writes them (the launcher runs with --allow-unsigned), to reach the
        # check it is about. Forged signatures: tests/system/test_operator_signatures.py.
        event_cases = {
            case: ({k: v for k, v in content.items() if k != "signatures"}, message)
            for case, (content, message) in event_cases.items()
        }

        with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running:
            socket = Path(launcher_ensure(running.socket, principal, good)["socket"])
            (pid,) = proxies_under(run_dir)
            for case, (content, message) in event_cases.items():
                reply = launcher_ensure(running.socket, principal, content)
                assert reply["ok"] is False, case
                assert message in reply["error"], (case, reply)
                assert "\n" not in reply["error"]
            oversized = {**good, "padding": "x" * MAX_MESSAGE}
            reply = launcher_ensure(running.socket, principal, oversized)
            assert reply == {"ok": False, "error": f"request larger than {MAX_MESSAGE} bytes"}
            # The running proxy saw none of it.
            assert proxies_under(run_dir) == [pid]
            assert served_token(socket) == "Bearer kept-canary"
            log = running.log()
    assert "kept-canary" not in log
    assert "Traceback" not in log


def test_only_those_with_power_may_publish_credentials(fleet: Fleet, tmp_path: Path) -> None:
    """A member of a machine's config room below the credentials event's power level
    cannot publish one: the homeserver refuses it, so no daemon ever sees it."""
    machine = enroll(fleet, tmp_path)
    hub = fleet.hub
    localpart = fresh("member")
    anonymous = MatrixHTTP(hub.url)
    anonymous.register_with_token(localpart, Secret("member-password-1"), hub.token)
    login = anonymous.login_password(localpart, Secret("member-password-1"))
    member = anonymous.with_token(login.access_token)
    admin = credentials.admin_client(fleet.creds)
    room = admin.resolve_alias(names.room_alias(machine.machine.localpart, hub.server_name))
    assert room is not None
    admin.invite(room, login.user_id)
    member.join(room)
    state_key = f"{fleet.name}/agent/alpha:{hub.server_name}"
    with pytest.raises(MatrixError) as refused:
        member.put_state(room, rooms.CREDENTIALS, state_key, {"version": 1})
    assert refused.value.status == 403
    assert admin.get_state(room, rooms.CREDENTIALS, state_key) is None


@pytest.mark.parametrize(
    "name",
    [
        "agent/..",
        "/agent/x",
        "agent//b",
        "Agent/x",
        "agent/" + "x" * 80,
        "agent%2Fx",
        "agent/%2e%2e",
    ],
)
@pytest.mark.slow
def test_bad_principal_names_are_refused(fleet: Fleet, tmp_path: Path, name: str) -> None:
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        result = provision_credentials(
            fleet, machine, name, services_file(tmp_path, upstream), "TOKEN=never\n"
        )
    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith("bureau: --principal: ")
    assert "never" not in result.stderr


@pytest.mark.parametrize(
    ("route", "secrets", "message"),
    [
        ({"upstream_url": "ftp://files.example"}, "TOKEN=x\n", "is not an http(s) URL"),
        ({"inject_headers": {"X-Bad:Header": "TOKEN"}}, "TOKEN=x\n", "not an injectable header"),
        ({"inject_headers": {"X Bad": "TOKEN"}}, "TOKEN=x\n", "not an injectable header"),
        ({"inject_headers": {"Host": "TOKEN"}}, "TOKEN=x\n", "not an injectable header"),
        ({}, "TOKEN=line\rsplit-canary\n", "value contains a control character"),
        ({}, "OTHER=x\n", "TOKEN"),
    ],
)
@pytest.mark.slow
def test_bad_services_files_publish_nothing(
    fleet: Fleet, tmp_path: Path, route: dict[str, Any], secrets: str, message: str
) -> None:
    machine = enroll(fleet, tmp_path)
    services = tmp_path / "services.json"
    services.write_text(
        json.dumps(
            {
                "api": {
                    "upstream_url": "http://127.0.0.1:9",
                    "auth_scheme": "Bearer",
                    "inject_headers": {"Authorization": "TOKEN"},
                    **route,
                }
            }
        )
    )
    result = provision_credentials(fleet, machine, "agent/alpha", services, secrets)
    assert result.returncode != 0
    line = one_line_error(result)
    assert message in line
    assert "split-canary" not in result.stderr
    assert credentials_listed(fleet, machine) == []
