"""A worker that reboots while the hub is down still runs its principals (#19 part 2): a
real hub, launcher, daemon and proxy; the reboot is every process stopped and the run dir
emptied; the outage is a front that refuses every connection to the hub."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet
from fault_front import FaultFront
from launcher_proc import daemon, daemon_argv, kill_proxies_under, launcher, service
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

from bureau.daemon.offline_cache import FILE_NAME
from bureau.operator import credentials
from bureau.wire import names, rooms

OFFLINE_READY = "from the offline cache of"


def _status_room(fleet: Fleet) -> tuple[Any, str]:
    admin = credentials.admin_client(fleet.creds)
    room = admin.resolve_alias(names.room_alias(f"{fleet.name}/machine", fleet.hub.server_name))
    assert room is not None
    return admin, room


def _cached(machine: Enrolled) -> list[str]:
    try:
        data = json.loads((machine.state_dir / FILE_NAME).read_text())
    except FileNotFoundError:
        return []
    return [p["principal"] for p in data["principals"]]


def _reboot(run_dir: Path) -> None:
    """What a reboot leaves: no process, an empty run dir."""
    kill_proxies_under(run_dir)
    shutil.rmtree(run_dir)
    run_dir.mkdir(mode=0o755)


def _served_cached_rebooted(
    fleet: Fleet, machine: Enrolled, run_dir: Path, services: Path, *flags: str
) -> None:
    """alpha provisioned (TOKEN=gen-1) and assigned, served and cached by a launcher and
    daemon that reach the hub; then the machine reboots."""
    name, state = machine.machine.short_name, machine.state_dir
    alpha = names.user_id(f"{fleet.name}/agent/alpha", fleet.hub.server_name)
    done = provision_credentials(fleet, machine, "agent/alpha", services, "TOKEN=gen-1\n", *flags)
    assert done.returncode == 0, done.stderr
    assign(fleet, machine)
    with launcher(name, state, run_dir), daemon(name, state, run_dir):
        eventually(lambda: served_token(proxy_socket(run_dir)) == "Bearer gen-1")
        eventually(lambda: _cached(machine) == [alpha])
    _reboot(run_dir)


@contextlib.contextmanager
def _cut_off(fleet: Fleet, machine: Enrolled, run_dir: Path) -> Iterator[tuple[FaultFront, Any]]:
    """A fresh launcher and daemon with the hub refusing every connection, once the daemon
    says what it started from its cache."""
    name, state = machine.machine.short_name, machine.state_dir
    with FaultFront(fleet.hub.url) as front:
        front.fault("refuse")
        argv = daemon_argv(name, state, run_dir, "--homeserver", front.url)
        with launcher(name, state, run_dir), service(argv, OFFLINE_READY) as the_daemon:
            yield front, the_daemon


@pytest.mark.slow
def test_a_worker_rebooted_during_an_outage_serves_from_its_cache(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    socket = proxy_socket(run_dir)
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        _served_cached_rebooted(fleet, machine, run_dir, services)
        cache = machine.state_dir / FILE_NAME
        assert cache.stat().st_mode & 0o777 == 0o600
        assert "gen-1" not in cache.read_text()  # ciphertext only
        assert served_token(socket) is None

        with _cut_off(fleet, machine, run_dir) as (front, the_daemon):
            eventually(lambda: served_token(socket) == "Bearer gen-1", seconds=10)
            assert "principal running, from the offline cache" in the_daemon.log()

            # The hub comes back with a newer bundle; the daemon's status was cleared
            # meanwhile, so a status that says one principal runs is a new one.
            done = provision_credentials(fleet, machine, "agent/alpha", services, "TOKEN=gen-2\n")
            assert done.returncode == 0, done.stderr
            admin, room = _status_room(fleet)
            admin.put_state(room, rooms.MACHINE_STATUS, machine.machine.user_id[1:], {})
            front.fault("pass")
            eventually(lambda: served_token(socket) == "Bearer gen-2")

            def published() -> bool:
                status = admin.get_state(room, rooms.MACHINE_STATUS, machine.machine.user_id[1:])
                return bool(status) and status["sandboxes"]["running"] == 1

            eventually(published)
        assert "gen-2" not in cache.read_text()
        assert "gen-1" not in the_daemon.log()
        assert "gen-2" not in the_daemon.log()


@pytest.mark.slow
def test_an_expired_bundle_in_the_cache_is_not_started(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        # Expires a few seconds from now: served, cached, then expired by the "reboot".
        soon = datetime.now(UTC) + timedelta(seconds=4)
        expiry = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
        services = services_file(tmp_path, upstream)
        _served_cached_rebooted(fleet, machine, run_dir, services, "--expires-at", expiry)
        eventually(lambda: datetime.now(UTC) > soon.replace(microsecond=0))

        with _cut_off(fleet, machine, run_dir) as (_, the_daemon):
            assert "0 of 1 principals started" in the_daemon.log()
            assert "its credentials expired" in the_daemon.log()
            assert served_token(proxy_socket(run_dir)) is None
