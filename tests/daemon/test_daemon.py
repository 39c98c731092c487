"""bureau-daemon with bureau-launcher, proxies, an upstream and the real Synapse: the
credential path end to end, as operators and principals see it."""

from __future__ import annotations

import itertools
import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, run
from fault_front import FaultFront
from launcher_proc import daemon, launcher, proxies_under
from machine_helpers import (
    Enrolled,
    assign,
    enroll,
    eventually,
    provision_credentials,
    proxy_socket,
    served_token,
    services_file,
)
from processes import echo_upstream

from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.secret import Secret
from bureau.wire import names, rooms

SYNC = "/_matrix/client/v3/sync"
PRINCIPAL = "agent/alpha"


def _status(fleet: Fleet, machine: Enrolled) -> dict[str, Any] | None:
    admin = credentials.admin_client(fleet.creds)
    room = admin.resolve_alias(names.room_alias(f"{fleet.name}/machine", fleet.hub.server_name))
    assert room is not None
    return admin.get_state(room, rooms.MACHINE_STATUS, machine.machine.user_id[1:])


@pytest.mark.slow
def test_provision_assign_serve_rotate_unassign(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    with echo_upstream() as upstream, launcher(name, state, run_dir) as the_launcher:
        services = services_file(tmp_path, upstream)
        with daemon(name, state, run_dir) as the_daemon:
            socket = proxy_socket(run_dir)
            # Provisioned but not assigned: not started. The assignment is published after
            # both bundles, in the same room, whose whole state the daemon reads: once it
            # acts on the assignment it has had agent/unassigned's bundle too.
            assert (
                provision_credentials(
                    fleet, machine, PRINCIPAL, services, "TOKEN=alpha-canary-1\n"
                ).returncode
                == 0
            )
            assert (
                provision_credentials(
                    fleet, machine, "agent/unassigned", services, "TOKEN=unassigned-canary\n"
                ).returncode
                == 0
            )
            assign(fleet, machine)
            assert eventually(lambda: served_token(socket)) == "Bearer alpha-canary-1"

            principal_id = f"@{fleet.name}/{PRINCIPAL}:{fleet.hub.server_name}"
            status = eventually(
                lambda: (
                    principal_id in (_status(fleet, machine) or {}).get("principals", {})
                    and _status(fleet, machine)
                )
            )
            assert status["principal"] == machine.machine.user_id
            assert status["principals"][principal_id]["status"] == "running"
            assert list(status["principals"]) == [principal_id]
            assert status["sandboxes"]["running"] == 1
            assert not proxy_socket(run_dir, "agent/unassigned").exists()
            assert len(proxies_under(run_dir)) == 1
            for key in ("cpu_percent", "memory_used_mb", "uptime_seconds"):
                assert isinstance(status[key], int)
            listed = run(
                "bureau", "machine", "list", "--credential-file", fleet.credential_file, "--json"
            )
            record = next(
                r for r in json.loads(listed.stdout) if r["user_id"] == machine.machine.user_id
            )
            assert record["last_heartbeat"] is not None

            assert (
                provision_credentials(
                    fleet, machine, PRINCIPAL, services, "TOKEN=alpha-canary-2\n"
                ).returncode
                == 0
            )
            assert eventually(lambda: served_token(socket) == "Bearer alpha-canary-2")

            unassigned = run(
                "bureau",
                "machine",
                "unassign",
                name,
                "--principal",
                PRINCIPAL,
                "--credential-file",
                fleet.credential_file,
            )
            assert unassigned.returncode == 0
            eventually(lambda: not socket.exists() and proxies_under(run_dir) == [])
            assert the_daemon.stop() == 0
            daemon_log = the_daemon.log()
        launcher_log = the_launcher.log()
    for canary in ("alpha-canary-1", "alpha-canary-2", "unassigned-canary"):
        assert canary not in daemon_log
        assert canary not in launcher_log


@pytest.mark.slow
def test_daemon_never_holds_plaintext(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    """strace records every byte the daemon reads and writes, on the launcher socket and
    everywhere else; the canary is in none of them."""
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    trace = tmp_path / "daemon.trace"
    strace = [
        "strace",
        "-f",
        "-qq",
        "-s",
        "10000000",
        "-o",
        str(trace),
        "-e",
        "trace=read,write,readv,writev,sendto,recvfrom,sendmsg,recvmsg",
    ]
    with echo_upstream() as upstream, launcher(name, state, run_dir):
        services = services_file(tmp_path, upstream)
        assign(fleet, machine)
        with daemon(name, state, run_dir, prefix=strace) as the_daemon:
            assert (
                provision_credentials(
                    fleet, machine, PRINCIPAL, services, "TOKEN=plaintext-canary-9\n"
                ).returncode
                == 0
            )
            assert (
                eventually(lambda: served_token(proxy_socket(run_dir)))
                == "Bearer plaintext-canary-9"
            )
            the_daemon.stop()
            log = the_daemon.log()
    traced = trace.read_text(errors="replace")
    # The ensure request itself was captured (strace escapes its quotes).
    assert '\\"action\\":\\"ensure\\"' in traced
    assert "plaintext-canary-9" not in traced
    assert "plaintext-canary-9" not in log


def test_principals_outlive_the_daemon_and_the_next_one_adopts(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    with echo_upstream() as upstream, launcher(name, state, run_dir):
        services = services_file(tmp_path, upstream)
        assign(fleet, machine)
        assert (
            provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=survivor-1\n"
            ).returncode
            == 0
        )
        socket = proxy_socket(run_dir)
        with daemon(name, state, run_dir) as first:
            assert eventually(lambda: served_token(socket)) == "Bearer survivor-1"
            (pid,) = proxies_under(run_dir)
            first.stop(signal.SIGKILL)
        assert served_token(socket) == "Bearer survivor-1"
        with daemon(name, state, run_dir) as second:
            assert proxies_under(run_dir) == [pid]  # adopted, not restarted
            assert (
                provision_credentials(
                    fleet, machine, PRINCIPAL, services, "TOKEN=survivor-2\n"
                ).returncode
                == 0
            )
            assert eventually(lambda: served_token(socket) == "Bearer survivor-2")
            # SIGTERM: a clean stop that leaves principals serving.
            assert second.stop() == 0
        assert served_token(socket) == "Bearer survivor-2"


@pytest.mark.slow
def test_homeserver_outage(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    """The homeserver goes away (connections refused, open ones cut) and comes back: the
    proxy serves the last good credentials throughout, the daemon backs off instead of
    storming, never logs in again, and resumes syncing where it stopped."""
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    with (
        FaultFront(fleet.hub.url) as front,
        echo_upstream() as upstream,
        launcher(name, state, run_dir),
    ):
        services = services_file(tmp_path, upstream)
        assign(fleet, machine)
        assert (
            provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=before-outage\n"
            ).returncode
            == 0
        )
        socket = proxy_socket(run_dir)
        with daemon(name, state, run_dir, "--homeserver", front.url) as the_daemon:
            assert eventually(lambda: served_token(socket)) == "Bearer before-outage"
            front.fault("refuse")
            failures = [the_daemon.wait_for("sync failed; retrying", timeout=60)]
            # The proxy serves through the outage: checked after each of four failed syncs.
            while len(failures) < 4:
                assert served_token(socket) == "Bearer before-outage"
                failures.append(
                    the_daemon.wait_for("sync failed; retrying", timeout=60, start=failures[-1] + 1)
                )
            assert served_token(socket) == "Bearer before-outage"
            front.fault("pass")
            the_daemon.wait_for("sync resumed", timeout=60, start=failures[-1])
            # Backoff, not a storm: 1 s doubling, jittered between half and all of it, and
            # each attempt made only once the wait before it was over.
            logged = [json.loads(the_daemon.lines[i]) for i in failures]
            delays = [float(entry["retry_in"]) for entry in logged]
            for attempt, delay in enumerate(delays):
                assert 2**attempt / 2 <= delay <= 2**attempt, delays
            at = [datetime.fromisoformat(entry["timestamp"]).timestamp() for entry in logged]
            for (before, after), delay in zip(itertools.pairwise(at), delays, strict=False):
                assert after - before >= delay, (at, delays)
            assert front.requests_to("/_matrix/client/v3/login") == []
            assert (
                provision_credentials(
                    fleet, machine, PRINCIPAL, services, "TOKEN=after-outage\n"
                ).returncode
                == 0
            )
            assert eventually(lambda: served_token(socket) == "Bearer after-outage", 60)


def _sync_retries(service: Any, start: int) -> list[float]:
    """The retry_in of each "sync failed; retrying" the daemon logged from line start."""
    delays = []
    for line in service.lines[start:]:
        if "sync failed; retrying" in line:
            delays.append(float(json.loads(line)["retry_in"]))
    return delays


def _answered_gaps(front: FaultFront, since: float) -> list[float]:
    """Seconds between consecutive /sync requests the front answered with a status."""
    times = [s.at for s in front.requests_to(SYNC, since) if s.outcome == "status"]
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.slow
def test_rate_limits_are_honoured_and_capped(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    """429 from the homeserver: no /sync before the server's hint (Retry-After, else
    retry_after_ms), and a hint of an hour is capped at the backoff ceiling of 30 s."""
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    limited = {"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests"}
    with (
        FaultFront(fleet.hub.url) as front,
        launcher(name, state, run_dir),
        daemon(name, state, run_dir, "--homeserver", front.url) as the_daemon,
    ):
        for headers, body, hint in (
            ({"Retry-After": "2"}, limited, 2.0),
            ({}, {**limited, "retry_after_ms": 2500}, 2.5),
        ):
            since = time.monotonic()
            mark = len(the_daemon.lines)
            front.fault("status", 429, body, headers, paths=(SYNC,), cut_open=True)
            deadline = time.monotonic() + 30
            while len(_answered_gaps(front, since)) < 2:
                assert time.monotonic() < deadline, front.seen[-5:]
                time.sleep(0.1)
            assert all(gap >= hint for gap in _answered_gaps(front, since))
            assert hint in _sync_retries(the_daemon, mark)
        mark = len(the_daemon.lines)
        front.fault("status", 429, limited, {"Retry-After": "3600"}, paths=(SYNC,))
        deadline = time.monotonic() + 30
        while 30.0 not in _sync_retries(the_daemon, mark):
            assert time.monotonic() < deadline, _sync_retries(the_daemon, mark)
            time.sleep(0.1)
        assert max(_sync_retries(the_daemon, mark)) == 30.0
        assert the_daemon.stop() == 0  # SIGTERM ends the wait at once


def test_removed_from_config_room_stops_everything(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    with echo_upstream() as upstream, launcher(name, state, run_dir):
        services = services_file(tmp_path, upstream)
        assign(fleet, machine)
        assert (
            provision_credentials(fleet, machine, PRINCIPAL, services, "TOKEN=kicked\n").returncode
            == 0
        )
        with daemon(name, state, run_dir) as the_daemon:
            assert eventually(lambda: served_token(proxy_socket(run_dir))) == "Bearer kicked"
            admin = credentials.admin_client(fleet.creds)
            room = admin.resolve_alias(
                names.room_alias(machine.machine.localpart, fleet.hub.server_name)
            )
            assert room is not None
            admin.call(
                "POST",
                f"/_matrix/client/v3/rooms/{room}/kick",
                {"user_id": machine.machine.user_id, "reason": "test"},
                what="kick",
            )
            assert the_daemon.proc.wait(timeout=60) == 77
            eventually(lambda: proxies_under(run_dir) == [])
            assert "removed from its config room; every principal was stopped" in the_daemon.log()


def test_revoked_token_stops_everything(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    with echo_upstream() as upstream, launcher(name, state, run_dir):
        services = services_file(tmp_path, upstream)
        assign(fleet, machine)
        assert (
            provision_credentials(fleet, machine, PRINCIPAL, services, "TOKEN=revoked\n").returncode
            == 0
        )
        with daemon(name, state, run_dir) as the_daemon:
            assert eventually(lambda: served_token(proxy_socket(run_dir))) == "Bearer revoked"
            session = json.loads((state / "session.json").read_text())
            MatrixHTTP(fleet.hub.url, Secret(session["access_token"])).logout()
            assert the_daemon.proc.wait(timeout=90) == 77
            eventually(lambda: proxies_under(run_dir) == [])
            assert "access token was revoked" in the_daemon.log()


WHOAMI = "/_matrix/client/v3/account/whoami"
SOFT_LOGOUT = {"errcode": "M_UNKNOWN_TOKEN", "error": "Token expired", "soft_logout": True}


@pytest.mark.slow
def test_soft_logout_logs_in_again_with_the_same_device(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """The homeserver soft-logs the machine out (its /sync, then the launcher's own check,
    answer 401 soft_logout): the launcher logs in again keeping the device, the daemon
    resumes its sync with the new token, and principals run on throughout."""
    with FaultFront(fleet.hub.url) as front:
        machine = enroll(fleet, tmp_path, homeserver_url=front.url)
        name, state = machine.machine.short_name, machine.state_dir
        with (
            echo_upstream() as upstream,
            launcher(name, state, run_dir) as the_launcher,
            daemon(name, state, run_dir) as the_daemon,
        ):
            services = services_file(tmp_path, upstream)
            assign(fleet, machine)
            provisioned = provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=soft-1\n"
            )
            assert provisioned.returncode == 0
            assert eventually(lambda: served_token(proxy_socket(run_dir))) == "Bearer soft-1"
            (proxy_pid,) = proxies_under(run_dir)
            before = json.loads((state / "session.json").read_text())
            mark, since = len(the_daemon.lines), time.monotonic()
            front.fault(
                "status",
                401,
                SOFT_LOGOUT,
                paths=(SYNC, WHOAMI),
                until="/_matrix/client/v3/login",
                cut_open=True,
            )
            the_daemon.wait_for("logged in again; resuming", start=mark)
            after = json.loads((state / "session.json").read_text())
            assert after["device_id"] == before["device_id"]
            assert after["access_token"] != before["access_token"]
            client = MatrixHTTP(fleet.hub.url, Secret(after["access_token"]))
            assert client.whoami() == (machine.machine.user_id, before["device_id"])
            assert len(front.requests_to("/_matrix/client/v3/login", since)) == 1
            # The sync goes on: a new value still arrives, served by a new proxy; the
            # old one ran on until then.
            assert proxies_under(run_dir) == [proxy_pid]
            rotated = provision_credentials(fleet, machine, PRINCIPAL, services, "TOKEN=soft-2\n")
            assert rotated.returncode == 0
            assert eventually(lambda: served_token(proxy_socket(run_dir)) == "Bearer soft-2")
            assert "logged in again after a soft logout" in the_launcher.log()
        for log in (the_launcher.log(), the_daemon.log()):
            assert after["access_token"] not in log
            assert before["access_token"] not in log


@pytest.mark.slow
def test_a_revoked_session_is_not_revived_on_the_daemons_word(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """The daemon is told soft_logout, but the launcher's own check finds the session
    ended for good: no new login, principals stopped, exit 77."""
    with FaultFront(fleet.hub.url) as front:
        machine = enroll(fleet, tmp_path, homeserver_url=front.url)
        name, state = machine.machine.short_name, machine.state_dir
        with (
            echo_upstream() as upstream,
            launcher(name, state, run_dir),
            daemon(name, state, run_dir) as the_daemon,
        ):
            services = services_file(tmp_path, upstream)
            assign(fleet, machine)
            provisioned = provision_credentials(fleet, machine, PRINCIPAL, services, "TOKEN=hard\n")
            assert provisioned.returncode == 0
            assert eventually(lambda: served_token(proxy_socket(run_dir))) == "Bearer hard"
            since = time.monotonic()
            # The daemon's syncs are held unanswered first (the one in flight cut), so that
            # none is answered between the logout and the fault that claims it was soft.
            front.fault("hang", paths=(SYNC,), cut_open=True)
            eventually(lambda: [s for s in front.requests_to(SYNC, since) if s.outcome == "hang"])
            session = json.loads((state / "session.json").read_text())
            MatrixHTTP(fleet.hub.url, Secret(session["access_token"])).logout()
            # Only now, with the session over, is the daemon told it was soft-logged-out.
            front.fault("status", 401, SOFT_LOGOUT, paths=(SYNC,), count=1)
            assert the_daemon.proc.wait(timeout=90) == 77
            assert [s.outcome for s in front.requests_to(SYNC, since)].count("status") == 1
            eventually(lambda: proxies_under(run_dir) == [])
            assert front.requests_to("/_matrix/client/v3/login", since) == []
            assert "ended this machine's session for good" in the_daemon.log()
            assert json.loads((state / "session.json").read_text()) == session
