"""sd_notify against a real NOTIFY_SOCKET datagram listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bureau.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield str(path), sock
    finally:
        sock.close()


def _notifier(**variables: str) -> Notifier:
    os.environ.update(variables)  # the autouse fixture restores the environment
    return Notifier()


def test_messages_and_environment(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = _notifier(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid()))
    # Nothing a child could inherit is left behind.
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
    assert notifier.watchdog_seconds == 0.1
    notifier.extend_timeout(30, "first boot: logging in")
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=30000000\nSTATUS=first boot: logging in"
    notifier.ready("serving\n2 principals")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 principals"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    notifier.close()


def test_watchdog_pings_while_the_loop_runs(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = _notifier(NOTIFY_SOCKET=path, WATCHDOG_USEC="100000")

    async def run_for_a_while() -> None:
        task = asyncio.create_task(notifier.watchdog())
        await asyncio.sleep(0.18)
        task.cancel()

    asyncio.run(run_for_a_while())
    notifier.close()
    pings = []
    sock.settimeout(0.2)
    try:
        while True:
            pings.append(sock.recv(4096))
    except TimeoutError:
        pass
    assert pings.count(b"WATCHDOG=1") >= 3


def test_watchdog_for_another_pid_is_ignored(listener: tuple[str, socket.socket]) -> None:
    path, _ = listener
    notifier = _notifier(NOTIFY_SOCKET=path, WATCHDOG_USEC="100000", WATCHDOG_PID="1")
    assert notifier.watchdog_seconds is None
    notifier.close()


def test_abstract_socket(listener: tuple[str, socket.socket]) -> None:
    del listener
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"bureau-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    with sock:
        notifier = _notifier(NOTIFY_SOCKET="@" + name)
        notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()


def test_outside_systemd_everything_is_a_no_op() -> None:
    os.environ.pop("NOTIFY_SOCKET", None)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("nobody listens")
    asyncio.run(notifier.watchdog())  # returns at once


def test_a_blocked_event_loop_stops_the_pings(listener: tuple[str, socket.socket]) -> None:
    """The pings come from the loop itself: while it is blocked none go out, so systemd's
    watchdog fires on a hung daemon."""
    path, sock = listener
    notifier = _notifier(NOTIFY_SOCKET=path, WATCHDOG_USEC="100000")

    async def ping_then_block() -> None:
        task = asyncio.create_task(notifier.watchdog())
        await asyncio.sleep(0.12)
        time.sleep(0.6)  # noqa: ASYNC251 - the loop is stuck: a hung daemon
        await asyncio.sleep(0.12)
        task.cancel()

    asyncio.run(ping_then_block())
    notifier.close()
    pings = 0
    sock.settimeout(0.2)
    try:
        while sock.recv(4096) == b"WATCHDOG=1":
            pings += 1
    except TimeoutError:
        pass
    # Every 0.05 s over the 0.84 s run would be about 17 pings had they come from a
    # thread; from the loop, the 0.6 s block sends none: about 6.
    assert 3 <= pings <= 9


def test_a_receiver_that_stops_reading_never_blocks_a_status(
    listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """STATUS lines are sent without waiting: with a full queue and a send that would
    otherwise wait an hour for each (a socket with a timeout waits for room before it
    sends, MSG_DONTWAIT or not), each returns; the line dropped is sent once there is
    room, and a line already sent is not sent again."""
    monkeypatch.setattr("bureau.notify.SEND_TIMEOUT", 3600.0)
    path, sock = listener
    notifier = _notifier(NOTIFY_SOCKET=path)
    for number in range(1000):  # far past the kernel's queue of datagrams
        notifier.status(f"synced; {number} principals running")
    received = []
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            received.append(sock.recv(4096))
    assert 0 < len(received) < 1000
    notifier.status("synced; 999 principals running")
    sock.settimeout(5)
    assert sock.recv(4096) == b"STATUS=synced; 999 principals running"
    notifier.status("synced; 999 principals running")
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    notifier.close()
