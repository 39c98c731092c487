"""sd_notify for bureau's services (through sdnotify).

The notify socket and watchdog settings are read once and then removed from the
environment, so no child (proxies, systemd-creds) can ever speak for the service.
READY=1 is sent by whoever finished the work readiness means; STATUS= is a one-line
summary; WATCHDOG=1 goes out from the event loop at half of WATCHDOG_USEC, so a blocked
loop stops the pings and systemd restarts the service; STOPPING=1 goes out first on stop.
Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import sdnotify

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
SEND_TIMEOUT = 2.0


class Notifier:
    """Construct once, early: it takes the variables out of ``os.environ``."""

    def __init__(self) -> None:
        environ = os.environ
        # sdnotify reads NOTIFY_SOCKET from os.environ itself, so it goes first.
        self._notifier = sdnotify.SystemdNotifier() if environ.get("NOTIFY_SOCKET") else None
        if self._notifier is not None and self._notifier.socket is not None:
            # A receiver that falls behind (a full datagram queue blocks the sender) may
            # delay a state change by this much, never hang the event loop.
            self._notifier.socket.settimeout(SEND_TIMEOUT)
        self.watchdog_seconds: float | None = None
        self._status = ""
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 2_000_000
        for name in _VARIABLES:
            environ.pop(name, None)

    def close(self) -> None:
        if self._notifier is not None and self._notifier.socket is not None:
            with contextlib.suppress(OSError):
                self._notifier.socket.close()
        self._notifier = None

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def _send(self, *lines: str, wait: bool = True) -> bool:
        """State changes (READY, STOPPING, more start-up time) wait up to SEND_TIMEOUT for
        room in a receiver's queue, on the event loop's own thread; a STATUS alone never
        waits: it is dropped when the queue is full (the next one supersedes it)."""
        sock = self._notifier.socket if self._notifier is not None else None
        if sock is None:
            return False
        data = "\n".join(lines).encode()
        try:
            if wait:
                sock.send(data)
            else:
                # Non-blocking for this one send: a socket with a timeout polls for room
                # before sending, whatever the flags say.
                sock.setblocking(False)
                try:
                    sock.send(data)
                finally:
                    sock.settimeout(SEND_TIMEOUT)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = _one_line(status)
        self._send("READY=1", f"STATUS={self._status}")

    def status(self, status: str) -> None:
        line = _one_line(status)
        # The same line again tells nobody anything; one dropped is sent with the next.
        if line != self._status and self._send(f"STATUS={line}", wait=False):
            self._status = line

    def extend_timeout(self, seconds: float, status: str) -> None:
        """Ask for more start-up time while slow work (first boot) still progresses."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "stopping") -> None:
        self._send("STOPPING=1", f"STATUS={_one_line(status)}")

    async def watchdog(self) -> None:
        """Ping for as long as the event loop runs; returns at once without a watchdog."""
        if self.watchdog_seconds is None or self._notifier is None:
            return
        sock = self._notifier.socket
        while True:
            # A ping that would block is dropped: the next one follows soon.
            with contextlib.suppress(OSError):
                sock.send(b"WATCHDOG=1", socket.MSG_DONTWAIT)
            await asyncio.sleep(self.watchdog_seconds)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
