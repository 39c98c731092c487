"""The launcher and the daemon speak sd_notify to a real NOTIFY_SOCKET listener: READY only
when really ready, STATUS kept current, WATCHDOG pings, EXTEND_TIMEOUT during first boot,
STOPPING first on SIGTERM; and no child inherits the socket."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, Fleet
from fault_front import FaultFront
from launcher_proc import daemon, launcher, proxies_under, sandboxd, service
from machine_helpers import (
    assign,
    boot,
    enroll,
    provision,
    provision_credentials,
    served_token,
    services_file,
)
from notify_listener import Listener
from processes import echo_upstream, launcher_call

from bureau.launcher.sandbox_broker import BrokerClient


@pytest.fixture
def listener(run_dir: Path) -> Iterator[Listener]:
    # Short path: sun_path holds 107 bytes.
    the_listener = Listener(run_dir / "notify.sock")
    os.environ["NOTIFY_SOCKET"] = str(run_dir / "notify.sock")
    try:
        yield the_listener
    finally:
        the_listener.close()


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


def test_first_boot_extends_its_start_timeout(
    fleet: Fleet, tmp_path: Path, listener: Listener
) -> None:
    machine = provision(fleet, tmp_path)
    assert boot(machine).returncode == 0
    messages = listener.barrier()  # all it sent: it has exited
    assert "EXTEND_TIMEOUT_USEC=60000000\nSTATUS=first boot: key-ready" in messages
    assert messages[-1] == "EXTEND_TIMEOUT_USEC=60000000\nSTATUS=first boot: bootstrap-deleted"


@pytest.mark.slow
def test_launcher_and_daemon_readiness_watchdog_and_stop(
    fleet: Fleet, tmp_path: Path, run_dir: Path, listener: Listener
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    os.environ["WATCHDOG_USEC"] = "400000"
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        assert (
            provision_credentials(
                fleet, machine, "agent/alpha", services, "TOKEN=notify-canary\n"
            ).returncode
            == 0
        )
        with launcher(name, state, run_dir) as the_launcher:
            ready = listener.until("READY=1")
            assert ready == "READY=1\nSTATUS=serving; 0 of 0 principals running"
            assert the_launcher.socket.exists()
            assert listener.until("WATCHDOG=1") == "WATCHDOG=1"

            assign(fleet, machine)
            with daemon(name, state, run_dir) as the_daemon:
                # READY from the daemon only once the principal is reconciled: by then its
                # proxy serves.
                while True:
                    message = listener.until("READY=1")
                    if "synced" in message:
                        break
                assert message == "READY=1\nSTATUS=synced; 1 principals running"
                socket_path = run_dir / "fleet" / "prod" / "agent" / "alpha.proxy.sock"
                assert served_token(socket_path) == "Bearer notify-canary"
                (proxy_pid,) = proxies_under(run_dir)
                # /proc/<pid>/environ is what a process was started with: the launcher's
                # child must have been started without the notify variables.
                for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                    assert variable not in _environ(proxy_pid)
                assert the_daemon.stop() == 0
                assert listener.until("STOPPING=1") == (
                    "STOPPING=1\nSTATUS=stopping; principals keep running"
                )
            status = launcher_call(the_launcher.socket, {"action": "status"})
            assert status["running"] == 1
            assert the_launcher.stop() == 0
            assert listener.until("STOPPING=1").startswith("STOPPING=1\nSTATUS=stopping")


# The phase, and the log line that says the daemon is in it.
PHASES = {
    "homeserver-down": "token check failed; retrying",
    "first-sync-hangs": "connected",
    "serving": "ready: first sync done",
}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.slow
def test_sigterm_whenever_it_comes_stops_the_daemon_promptly(
    fleet: Fleet, tmp_path: Path, run_dir: Path, listener: Listener, phase: str
) -> None:
    """Whether the daemon is backing off from a homeserver that is down, waiting on a sync
    that never answers, or serving: STOPPING=1 first, exit 0 well within systemd's stop
    timeout, and its state on disk as it was."""
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    with FaultFront(fleet.hub.url) as front, launcher(name, state, run_dir):
        if phase == "homeserver-down":
            front.fault("refuse")
        elif phase == "first-sync-hangs":
            front.fault("hang", paths=("/_matrix/client/v3/sync",))
        argv = [
            str(BIN / "bureau-daemon"),
            "--machine-name",
            name,
            "--state-dir",
            str(state),
            "--run-dir",
            str(run_dir),
            "--homeserver",
            front.url,
        ]
        with service(argv, PHASES[phase]) as the_daemon:
            if phase == "serving":
                # The daemon's READY, sent just after the log line the start waited for (the
                # launcher's came before).
                while "STATUS=synced" not in listener.until("READY=1"):
                    pass
            # What was sent before the signal is read; what comes next is the stop's.
            listener.barrier()
            started = time.monotonic()
            assert the_daemon.stop() == 0, the_daemon.log()
            took = time.monotonic() - started
            after = [m for m in listener.barrier() if m != "WATCHDOG=1"]
            assert after, after
            assert after[0].startswith("STOPPING=1\nSTATUS="), after
    assert took < 5, took  # systemd's TimeoutStopSec is 30
    assert "Traceback" not in the_daemon.log()
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before


def test_sandboxd_readiness_and_a_clean_stop(
    tmp_path: Path, run_dir: Path, listener: Listener
) -> None:
    """bureau-sandboxd says READY once it serves, and SIGTERM then stops it cleanly:
    STOPPING=1 first, exit 0 (its sandboxes keep running)."""
    with sandboxd(
        run_dir,
        tmp_path / "state",
        tmp_path / "sandbox",
        fleet="t/fleet/prod",
        server="bureau.local",
    ) as host:
        ready = listener.until("READY=1")
        assert ready.startswith("READY=1\nSTATUS=serving; cgroups ")
        # An answered request: it is in its serving loop, not still starting.
        cgroups = ready.rsplit(" ", 1)[1]
        assert BrokerClient(run_dir / "sandboxd" / "sandboxd.sock").mode == cgroups
        listener.barrier()
        assert host.stop() == 0, host.log()
        after = [m for m in listener.barrier() if m != "WATCHDOG=1"]
        assert after == ["STOPPING=1\nSTATUS=stopping"], after
    assert "Traceback" not in host.log()
