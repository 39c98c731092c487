"""Partial-failure isolation: a bad credentials event, published beside healthy principals,
is that principal's failure only. The launcher answers every request (an error naming the
principal and field), the daemon reconciles each principal on its own with stops first,
the bad ones show as failed in machine_status and as invalid in `bureau credentials
list`, and the healthy ones still rotate, stop and start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, one_line_error
from launcher_proc import UNSIGNED, daemon, launcher, proxies_under
from machine_helpers import (
    Enrolled,
    enroll,
    eventually,
    list_credentials,
    provision_credentials,
    proxy_socket,
    served_headers,
    services_file,
)
from processes import echo_upstream, launcher_call, launcher_ensure
from publisher import Publisher

from bureau.operator import credentials
from bureau.wire import names, rooms

ROTATED, REVOKED, STARTED = "agent/rotated", "agent/revoked", "agent/started"


def _status(fleet: Fleet, machine: Enrolled) -> dict[str, Any]:
    admin = credentials.admin_client(fleet.creds)
    room = admin.resolve_alias(names.room_alias(f"{fleet.name}/machine", fleet.hub.server_name))
    assert room is not None
    return admin.get_state(room, rooms.MACHINE_STATUS, machine.machine.user_id[1:]) or {}


def _generation(run_dir: Path, principal: str) -> str | None:
    headers = served_headers(proxy_socket(run_dir, principal))
    return None if headers is None else headers.get("x-generation")


def _bad_events(publisher: Publisher) -> dict[str, tuple[dict[str, Any], str]]:
    """Principal -> (the content published for it, what its failure must name)."""
    good = publisher.build("agent/bad-url", "bad-canary")
    route = good["services"]["api"]

    def with_url(url: str) -> dict[str, Any]:
        return {**good, "services": {"api": {**route, "upstream_url": url}}}

    return {
        "agent/bad-url": (with_url("http://[::1"), "upstream_url"),
        "agent/bad-port": (with_url("http://127.0.0.1:99999"), "upstream_url"),
        "agent/bad-base64": ({**good, "ciphertext": "YWdl\u00e9=="}, "ciphertext"),
        # Properly encrypted and bound: only its name is wrong, its socket's directory
        # would be agent/rotated's socket.
        f"{ROTATED}.proxy.sock/x": (
            publisher.build(f"{ROTATED}.proxy.sock/x", "bad-canary"),
            "collides with another principal's proxy socket",
        ),
    }


@pytest.mark.slow
def test_bad_events_beside_healthy_principals_fail_alone(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    with (
        echo_upstream() as upstream,
        launcher(name, state, run_dir) as the_launcher,
        daemon(name, state, run_dir) as the_daemon,
    ):
        publisher = Publisher(fleet, machine, upstream)
        for principal in (ROTATED, REVOKED):
            publisher.put(principal, publisher.build(principal, "g1"))
        publisher.assign([ROTATED, REVOKED])
        eventually(lambda: _generation(run_dir, ROTATED) == _generation(run_dir, REVOKED) == "g1")

        bad = _bad_events(publisher)
        for principal, (content, _) in bad.items():
            publisher.put(principal, content)
        publisher.assign([ROTATED, REVOKED, *bad])
        # Wait until the daemon has tried the bad ones (before the fix, every pass ended
        # at the first of them, "launcher unavailable", and nothing below happened).
        eventually(lambda: any(m in the_daemon.log() for m in ("/agent/bad-", "unavailable")))

        publisher.put(ROTATED, publisher.build(ROTATED, "g2"))
        publisher.put(STARTED, publisher.build(STARTED, "g1"))
        publisher.assign([ROTATED, STARTED, *bad])
        eventually(lambda: _generation(run_dir, ROTATED) == "g2")
        eventually(lambda: _generation(run_dir, STARTED) == "g1")
        eventually(lambda: not proxy_socket(run_dir, REVOKED).exists())
        eventually(lambda: len(proxies_under(run_dir)) == 2)

        # Each bad principal is failed in the heartbeat, with a reason naming its field.
        def failed() -> dict[str, Any] | None:
            """The first heartbeat that shows the bad ones failed and the healthy ones
            running (an earlier one may predate STARTED's start)."""
            entries = _status(fleet, machine).get("principals", {})
            found = {p: entries.get(publisher.user_id(p), {}).get("status") for p in bad}
            healthy = all(publisher.user_id(p) in entries for p in (ROTATED, STARTED))
            return entries if healthy and set(found.values()) == {"failed"} else None

        entries = eventually(failed)
        for principal, (_, reason) in bad.items():
            assert reason in entries[publisher.user_id(principal)]["error"]
        for principal in (ROTATED, STARTED):
            assert entries[publisher.user_id(principal)]["status"] == "running"
            assert "error" not in entries[publisher.user_id(principal)]
        assert publisher.user_id(REVOKED) not in entries

        # A malformed assignment (STARTED's) beside a revocation (ROTATED's): the
        # revocation applies, STARTED keeps its last good assignment and runs on.
        config = {
            "principals": [
                {"principal": publisher.user_id(STARTED), "auto_start": "yes"},
                *({"principal": publisher.user_id(p), "auto_start": True} for p in bad),
            ]
        }
        publisher.put_config(config)
        eventually(lambda: not proxy_socket(run_dir, ROTATED).exists())
        the_daemon.wait_for("ignoring an invalid assignment")
        assert _generation(run_dir, STARTED) == "g1"

        listed = list_credentials(fleet, machine)
        assert listed.returncode == 0, listed.stderr
        assert "Traceback" not in listed.stderr
        for principal in ("agent/bad-url", "agent/bad-port", "agent/bad-base64"):
            line = next(ln for ln in listed.stdout.splitlines() if f"/{principal}:" in ln)
            assert ": invalid: " in line
        daemon_log = the_daemon.log()
        launcher_log = the_launcher.log()
    assert "launcher unavailable" not in daemon_log
    for log in (daemon_log, launcher_log):
        assert "Traceback" not in log
        assert "bad-canary" not in log  # no credential value


def test_the_launcher_answers_whatever_the_request_does(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """Straight to the launcher socket: each hostile request gets one line back and the
    launcher serves the next."""
    machine = enroll(fleet, tmp_path)
    with (
        echo_upstream() as upstream,
        launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running,
    ):
        publisher = Publisher(fleet, machine, upstream)
        good = publisher.build(ROTATED, "g1")
        reply = launcher_ensure(running.socket, publisher.user_id(ROTATED), good)
        assert reply["ok"], reply
        route = good["services"]["api"]
        collide = publisher.build(f"{ROTATED}.proxy.sock/x", "bad-canary")
        hostile: list[tuple[str, dict[str, Any] | bytes, str]] = [
            (
                "broken IPv6 literal",
                {
                    "action": "ensure",
                    "principal": publisher.user_id(ROTATED),
                    "credentials": {
                        **good,
                        "services": {"api": {**route, "upstream_url": "http://[::1"}},
                    },
                },
                "upstream_url",
            ),
            (
                "socket collision",
                {
                    "action": "ensure",
                    "principal": publisher.user_id(f"{ROTATED}.proxy.sock/x"),
                    "credentials": collide,
                },
                "collides",
            ),
            ("deep nesting", b"[" * 100_000 + b"\n", "nests deeper"),
            ("deep object", b'{"a":' * 40_000 + b"\n", "nests deeper"),
        ]
        for case, request, message in hostile:
            answer = launcher_call(running.socket, request)
            assert answer["ok"] is False, case
            assert message in answer["error"], (case, answer)
        assert launcher_call(running.socket, {"action": "status"})["running"] == 1
        assert _generation(run_dir, ROTATED) == "g1"
        assert "Traceback" not in running.log()


_FLOOD = """
import json, os, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
os.setegid(65534)
os.seteuid(65534)
held = []
for _ in range(count):
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(path)
    held.append(peer)
answers = set()
for peer in held:  # sends nothing, keeps its end open: only the launcher can close it
    data = b""
    while chunk := peer.recv(4096):
        data += chunk
    answers.add(data)
print(json.dumps(sorted(a.decode() for a in answers)))
"""


def test_refused_peers_are_answered_closed_and_logged_sparingly(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running:
        run_dir.chmod(0o755)
        running.socket.chmod(0o666)  # the uid check alone decides, as in the serving test
        fds = Path(f"/proc/{running.main_pid()}/fd")
        before = len(list(fds.iterdir()))
        flood = subprocess.run(
            [sys.executable, "-c", _FLOOD, str(running.socket), "500"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert flood.returncode == 0, flood.stderr
        assert json.loads(flood.stdout) == ['{"ok":false,"error":"permission denied"}\n']
        assert launcher_call(running.socket, {"action": "status"})["ok"] is True
        eventually(lambda: len(list(fds.iterdir())) <= before)
        refusals = [ln for ln in running.log().splitlines() if "refused a connection" in ln]
    assert 1 <= len(refusals) <= 2, refusals


def test_cli_refuses_a_principal_whose_socket_would_collide(fleet: Fleet, tmp_path: Path) -> None:
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        result = provision_credentials(
            fleet,
            machine,
            f"{ROTATED}.proxy.sock/x",
            services_file(tmp_path, upstream),
            "TOKEN=never-canary\n",
        )
    assert result.returncode == 2
    assert "collides with another principal's proxy socket" in one_line_error(result)
    assert "never-canary" not in result.stderr


def test_a_raw_token_on_the_secrets_input_is_never_echoed(fleet: Fleet, tmp_path: Path) -> None:
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        result = provision_credentials(
            fleet, machine, "agent/alpha", services_file(tmp_path, upstream), "sk-live-canary==\n"
        )
    assert result.returncode != 0
    assert "line 1: " in one_line_error(result)  # the line named, never its content
    assert "canary" not in result.stderr


@pytest.mark.slow
def test_a_proxy_killed_by_a_nameless_signal_is_restarted(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """Real-time signals have no name in Python's signal.Signals: describing such an exit
    once raised inside the proxy's watcher and ended the launcher."""
    machine = enroll(fleet, tmp_path)
    with (
        echo_upstream() as upstream,
        launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running,
    ):
        publisher = Publisher(fleet, machine, upstream)
        principal = publisher.user_id(ROTATED)
        assert launcher_ensure(running.socket, principal, publisher.build(ROTATED, "g1"))["ok"]
        (pid,) = proxies_under(run_dir)
        os.kill(pid, signal.SIGRTMIN + 1)
        running.wait_for("proxy restarted")
        assert running.proc.poll() is None
        assert _generation(run_dir, ROTATED) == "g1"
        assert f"signal {int(signal.SIGRTMIN) + 1}" in running.log()


def test_a_record_of_a_name_that_can_no_longer_run_is_dropped(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """An adoption record left by an earlier version for a principal whose name is now
    refused (its socket would collide) is dropped; the launcher starts and serves."""
    machine = enroll(fleet, tmp_path)
    records = run_dir / "launcher" / "proxies"
    records.mkdir(parents=True, mode=0o700)
    with subprocess.Popen(["sleep", "600"]) as sleeper:
        stat = Path(f"/proc/{sleeper.pid}/stat").read_text()
        start_time = int(stat[stat.rindex(")") + 2 :].split()[19])
        record = {
            "principal": f"@{fleet.name}/{ROTATED}.proxy.sock/x:{fleet.hub.server_name}",
            "pid": sleeper.pid,
            "start_time": start_time,
            "digest": "sha256:00",
            "content": {},
            "started_at": 0,
        }
        path = records / "old.json"
        path.write_text(json.dumps(record))
        path.chmod(0o600)
        try:
            with launcher(
                machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED
            ) as running:
                assert launcher_call(running.socket, {"action": "list"})["principals"] == []
                assert "ignoring unusable proxy record" in running.log()
                assert not path.exists()
        finally:
            sleeper.kill()
