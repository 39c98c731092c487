"""Processes killed at the worst moments on a running worker: a proxy, and the launcher
while it hands a proxy its credentials. Whatever dies, principals' requests either carry
complete credentials (the old or the new) or fail; nothing reaches an upstream without
them, and the machine converges once the launcher is back."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import BIN, Fleet
from launcher_proc import daemon, launcher, proxies_under
from machine_helpers import (
    assign,
    enroll,
    eventually,
    masked,
    provision_credentials,
    proxy_socket,
    served_token,
    services_file,
)
from processes import (
    SUPPORT,
    echo_received,
    echo_requests,
    echo_upstream,
    launcher_call,
    unix_request,
)

OLD, NEW = "Bearer old-canary-value", "Bearer new-canary-value"


def _authorizations(upstream: str) -> set[str | None]:
    """The Authorization header of every request the echo upstream received."""
    return {r["headers"].get("authorization") for r in echo_requests(upstream)}


@dataclass
class Client:
    """A principal sending requests through its proxy without pause, noting what came
    back: the credential the upstream saw, or the failure."""

    socket: Path
    outcomes: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def run(self) -> None:
        while not self._stop.is_set():
            request_id = uuid.uuid4().hex
            try:
                reply = unix_request(
                    self.socket,
                    "GET",
                    "/http/api/x",
                    headers={"X-Request-Id": request_id},
                    timeout=10,
                )
            except (OSError, http.client.HTTPException) as exc:
                self.outcomes.append(type(exc).__name__)
                continue
            received = echo_received(request_id) if reply.status == 200 else None
            if received is None:
                self.outcomes.append(f"status {reply.status}")
            elif reply.json()["headers"] != masked(received["headers"]):
                self.outcomes.append("the workload saw the credential")
            else:
                # What the upstream received: the echo shows both tokens as the same stars.
                self.outcomes.append(str(received["headers"]["authorization"]))

    @contextlib.contextmanager
    def running(self) -> Iterator[Client]:
        thread = threading.Thread(target=self.run, daemon=True)
        self._threads.append(thread)
        thread.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop sending, and wait for the request in flight: the test's own clean-up
        kills the proxies next, which would cut it short (IncompleteRead) and count as a
        failure that is not the proxy's."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def _only_other_than(pid: int, run_dir: Path) -> list[int] | None:
    pids = proxies_under(run_dir)
    return pids if len(pids) == 1 and pids != [pid] else None


@pytest.mark.slow
def test_killed_proxy_is_restarted_and_fails_closed_meanwhile(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    principal = f"@{fleet.name}/agent/alpha:{fleet.hub.server_name}"
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        provisioned = provision_credentials(
            fleet, machine, "agent/alpha", services, "TOKEN=old-canary-value\n"
        )
        assert provisioned.returncode == 0, provisioned.stderr
        name, state = machine.machine.short_name, machine.state_dir
        with launcher(name, state, run_dir) as the_launcher, daemon(name, state, run_dir):
            assign(fleet, machine)
            socket = proxy_socket(run_dir)
            assert eventually(lambda: served_token(socket)) == OLD
            (first,) = proxies_under(run_dir)
            with Client(socket).running() as client:
                eventually(lambda: len(client.outcomes) > 20)
                os.kill(first, signal.SIGKILL)
                # A proxy that dies young is restarted after a 1 s pause (crash-loop
                # backoff): the window in which its socket has nobody behind it.
                eventually(lambda: proxies_under(run_dir) not in ([], [first]))
                served = len(client.outcomes)
                eventually(lambda: client.outcomes[served:].count(OLD) > 20)
            the_launcher.wait_for("proxy restarted")
            listed = launcher_call(the_launcher.socket, {"action": "list"})["principals"]
            assert [(p["principal"], p["restarts"]) for p in listed] == [(principal, 1)]
        exits = [json.loads(ln) for ln in the_launcher.lines if '"proxy exited' in ln]
        assert [e["exit"] for e in exits] == ["signal SIGKILL"]
    # Every request either carried the credential or was refused before reaching anyone.
    assert _authorizations(upstream) == {OLD}
    failures = {o for o in client.outcomes if o != OLD}
    # Refused while nobody listened; cut when the kill landed mid-request or mid-answer.
    cut = {"ConnectionResetError", "RemoteDisconnected", "IncompleteRead", "BrokenPipeError"}
    assert failures <= {"ConnectionRefusedError", *cut}
    assert "ConnectionRefusedError" in failures  # the window was seen, and it was closed


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before", "half", "all", "ready"])
def test_launcher_killed_while_handing_over_credentials(
    fleet: Fleet, tmp_path: Path, run_dir: Path, point: str
) -> None:
    """SIGKILL the launcher while it writes a rotation's payload to the new proxy: the
    old proxy goes on serving the complete old credentials, the half-started proxy goes
    away by itself, and once systemd has brought the launcher back the daemon asks again
    and the new credentials are served."""
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    runner = [str(BIN / "python"), str(SUPPORT / "kill_launcher_at.py")]
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        old = provision_credentials(
            fleet, machine, "agent/alpha", services, "TOKEN=old-canary-value\n"
        )
        assert old.returncode == 0, old.stderr
        # The first delivery (the old credentials) goes through; the second is cut.
        dying = launcher(name, state, run_dir, program=[*runner, point, "2"])
        with dying as first, daemon(name, state, run_dir) as the_daemon:
            assign(fleet, machine)
            socket = proxy_socket(run_dir)
            assert eventually(lambda: served_token(socket)) == OLD
            (old_pid,) = proxies_under(run_dir)
            with Client(socket).running() as client:
                new = provision_credentials(
                    fleet, machine, "agent/alpha", services, "TOKEN=new-canary-value\n"
                )
                assert new.returncode == 0, new.stderr
                assert first.proc.wait(timeout=60) == -signal.SIGKILL
                # The proxy that was being started never got complete credentials, or
                # never got to report READY: it exits by itself. One that did is stopped
                # by the next launcher: nobody can reach it.
                if point != "ready":
                    eventually(lambda: proxies_under(run_dir) == [old_pid])
                assert served_token(socket) == OLD
                the_daemon.wait_for("launcher unavailable; will retry")
                with launcher(name, state, run_dir) as second:
                    eventually(lambda: served_token(socket) == NEW)
                    # The old proxy drains and exits; the new one is the only one left.
                    (new_pid,) = eventually(lambda: _only_other_than(old_pid, run_dir))
                    listed = launcher_call(second.socket, {"action": "list"})["principals"]
                    assert [p["pid"] for p in listed] == [new_pid]
                    served = len(client.outcomes)
                    eventually(lambda: client.outcomes[served:].count(NEW) > 10)
                    client.stop()
            assert [p.name for p in socket.parent.iterdir()] == [socket.name]
        refusal = {
            "before": "proxy payload",
            "half": "proxy payload",
            "all": "the launcher went away before this proxy was ready",
            "ready": "stopping a proxy that was never installed",
        }[point]
        assert refusal in first.log() + second.log()
        assert "Traceback" not in first.log() + second.log()
    assert _authorizations(upstream) <= {OLD, NEW}
    assert set(client.outcomes) <= {OLD, NEW}, set(client.outcomes) - {OLD, NEW}
    assert client.outcomes[-1] == NEW
