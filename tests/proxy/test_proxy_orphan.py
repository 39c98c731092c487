"""A proxy nobody can reach nor stop stops itself (#19; bureau/proxy/orphan.py): a real
launcher starts a principal's proxy from a bundle on a real Synapse, then is SIGKILLed,
and the proxy's socket path is removed or taken. Either half alone leaves it serving: a
launcher restart keeps its proxies, and a rotation puts a new proxy on the path while the
live launcher stops the old one itself.

The proxies log at debug here (BUREAU_LOG_LEVEL, which the launcher hands them): the
watch says "orphan check" at the 1st, 2nd, 4th... check in a row with one half holding,
which is the evidence that it ran and let the proxy be."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet
from launcher_proc import UNSIGNED, RunningLauncher, launcher, proxies_under
from machine_helpers import (
    credentials_event,
    enroll,
    provision_credentials,
    served_token,
    services_file,
)
from processes import echo_upstream, launcher_ensure

PRINCIPAL = "agent/alpha"
TOKEN = "orphan-canary-7d1"
STOPPING = "stopping: nobody can reach this proxy"
EXIT_WITHIN = 5.0  # a check a second, then the drain of a proxy nobody is connected to


@contextmanager
def _serving(
    fleet: Fleet, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningLauncher, Path, int]]:
    """A launcher and the proxy it started for PRINCIPAL: the launcher, the proxy's socket
    and its pid."""
    monkeypatch.setenv("BUREAU_LOG_LEVEL", "debug")
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        provisioned = provision_credentials(fleet, machine, PRINCIPAL, services, f"TOKEN={TOKEN}\n")
        assert provisioned.returncode == 0, provisioned.stderr
        content = credentials_event(fleet, machine)
        principal = f"@{fleet.name}/{PRINCIPAL}:{fleet.hub.server_name}"
        with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running:
            reply = launcher_ensure(running.socket, principal, content)
            assert reply["ok"], (reply, running.log())
            socket_path = Path(reply["socket"])
            assert served_token(socket_path) == f"Bearer {TOKEN}"
            (pid,) = proxies_under(run_dir)
            yield running, socket_path, pid
            assert TOKEN not in running.log()


def _kill(running: RunningLauncher) -> None:
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(timeout=10)


def _entries(running: RunningLauncher) -> list[dict[str, Any]]:
    """The JSON lines the launcher and its proxies wrote (they share its stderr)."""
    found = []
    for line in list(running.lines):
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def _wait_entry(
    running: RunningLauncher, wanted: Callable[[dict[str, Any]], bool], seconds: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        for entry in _entries(running):
            if wanted(entry):
                return entry
        assert time.monotonic() < deadline, f"no such line within {seconds} s:\n{running.log()}"
        time.sleep(0.05)


def _checked(socket_state: str, launcher_state: str, at_least: int) -> Callable[[Any], bool]:
    """An "orphan check" line: ``at_least`` checks in a row found this state."""
    return lambda e: (
        e.get("event") == "orphan check"
        and e.get("socket") == socket_state
        and e.get("launcher") == launcher_state
        and e.get("checks", 0) >= at_least
    )


def _wait_exit(pid: int, seconds: float) -> float:
    """Seconds until ``pid`` (not our child: a pidfd) exited; fails after ``seconds``."""
    fd = os.pidfd_open(pid)
    try:
        start = time.monotonic()
        ready, _, _ = select.select([fd], [], [], seconds)
        assert ready, f"proxy {pid} still running after {seconds} s"
        return time.monotonic() - start
    finally:
        os.close(fd)


def _take(path: Path) -> socket.socket:
    """Another socket renamed over ``path``, as the launcher installs a new proxy's."""
    other = socket.socket(socket.AF_UNIX)
    temp = path.with_name(f".{path.name}.other")
    other.bind(str(temp))
    temp.rename(path)
    return other


@pytest.mark.slow
def test_launcher_gone_socket_intact_serves_then_run_dir_deleted_exits(
    fleet: Fleet, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _serving(fleet, tmp_path, run_dir, monkeypatch) as (running, socket_path, pid):
        _kill(running)
        # Its launcher gone, its socket in place (a launcher restart): it serves on,
        # after the check found just that twice.
        _wait_entry(running, _checked("ours", "gone", 2))
        assert served_token(socket_path) == f"Bearer {TOKEN}"
        assert proxies_under(run_dir) == [pid]
        assert not any(e.get("event") == STOPPING for e in _entries(running))
        # Then its run dir is deleted: nobody can reach it, nobody would stop it.
        shutil.rmtree(run_dir)
        took = _wait_exit(pid, EXIT_WITHIN)
        stopping = _wait_entry(running, lambda e: e.get("event") == STOPPING)
        assert stopping["level"] == "warning"
        assert stopping["reason"] == (
            f"its socket path {socket_path} was removed and the launcher that started it "
            f"(pid {running.proc.pid}) is gone"
        )
        print(f"exited {took:.2f} s after its run dir was deleted")
        # A clean stop, as SIGTERM's: the drain, and no line saying it failed.
        _wait_entry(running, lambda e: e.get("event") == "draining")
        assert not any(e.get("event") == "proxy exiting" for e in _entries(running))


@pytest.mark.slow
def test_socket_taken_launcher_alive_serves_then_launcher_gone_exits(
    fleet: Fleet, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _serving(fleet, tmp_path, run_dir, monkeypatch) as (running, socket_path, pid):
        # Reachable still through a second name, to show it serves.
        kept = socket_path.with_name("kept.sock")
        os.link(socket_path, kept)
        # Its path taken while its launcher lives (a rotation's drain): the launcher
        # stops it when it means to; this watch does not.
        with _take(socket_path):
            _wait_entry(running, _checked("replaced", "alive", 2))
            assert served_token(kept) == f"Bearer {TOKEN}"
            assert proxies_under(run_dir) == [pid]
            assert not any(e.get("event") == STOPPING for e in _entries(running))
            # Then its launcher is gone too: it stops.
            _kill(running)
            took = _wait_exit(pid, EXIT_WITHIN)
        stopping = _wait_entry(running, lambda e: e.get("event") == STOPPING)
        assert stopping["reason"] == (
            f"its socket path {socket_path} was replaced and the launcher that started it "
            f"(pid {running.proc.pid}) is gone"
        )
        print(f"exited {took:.2f} s after its launcher was killed")
        assert not any(e.get("event") == "proxy exiting" for e in _entries(running))
