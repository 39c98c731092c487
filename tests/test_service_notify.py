"""The launcher and the daemon speak sd_notify to a real NOTIFY_SOCKET listener: READY only
when really ready, STATUS kept current, WATCHDOG pings, EXTEND_TIMEOUT during first boot,
STOPPING first on SIGTERM; and no child inherits the socket."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Fleet
from launcher_proc import daemon, launcher, proxies_under
from machine_helpers import boot, enroll, provision, provision_credentials, services_file
from processes import echo_upstream, launcher_call, unix_request


class Listener:
    """Reads the notify socket as systemd does, promptly, on a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []
        self._read = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                message = self.sock.recv(65536).decode()
            except OSError:
                return
            with self._changed:
                self.seen.append(message)
                self._changed.notify_all()

    def next(self, timeout: float = 30) -> str:
        with self._changed:
            if not self._changed.wait_for(lambda: self._read < len(self.seen), timeout):
                raise TimeoutError("no notification")
            self._read += 1
            return self.seen[self._read - 1]

    def until(self, prefix: str) -> str:
        while not (message := self.next()).startswith(prefix):
            pass
        return message


@pytest.fixture
def listener(run_dir: Path) -> Iterator[Listener]:
    # Short path: sun_path holds 107 bytes.
    the_listener = Listener(run_dir / "notify.sock")
    os.environ["NOTIFY_SOCKET"] = str(run_dir / "notify.sock")
    try:
        yield the_listener
    finally:
        the_listener.sock.shutdown(socket.SHUT_RDWR)
        the_listener.sock.close()


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


def test_first_boot_extends_its_start_timeout(
    fleet: Fleet, tmp_path: Path, listener: Listener
) -> None:
    machine = provision(fleet, tmp_path)
    assert boot(machine).returncode == 0
    messages = []
    try:
        while True:
            messages.append(listener.next(timeout=1))
    except TimeoutError:
        pass
    assert "EXTEND_TIMEOUT_USEC=60000000\nSTATUS=first boot: key-ready" in messages
    assert messages[-1] == "EXTEND_TIMEOUT_USEC=60000000\nSTATUS=first boot: bootstrap-deleted"


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

            from test_daemon import _assign  # noqa: PLC0415 -- shared arrangement

            _assign(fleet, machine)
            with daemon(name, state, run_dir) as the_daemon:
                # READY from the daemon only once the principal is reconciled: by then its
                # proxy serves.
                while True:
                    message = listener.until("READY=1")
                    if "synced" in message:
                        break
                assert message == "READY=1\nSTATUS=synced; 1 principals running"
                socket_path = run_dir / "fleet" / "prod" / "agent" / "alpha.proxy.sock"
                reply = unix_request(socket_path, "GET", "/http/api/x")
                assert reply.json()["headers"]["authorization"] == "Bearer notify-canary"
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
