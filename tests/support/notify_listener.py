"""A NOTIFY_SOCKET as systemd holds it, for the tests of sd_notify and the bench's time to
READY=1."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path


class Listener:
    """Reads the notify socket as systemd does, promptly, on a thread of its own: a service
    whose receiver's queue (net.unix.max_dgram_qlen, 10 by default) is full waits up to 2 s
    to send its next message (bureau/notify.py), which a test would see as a hang and the
    bench would time as the service being slow."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []
        self.arrived: list[float] = []  # time.monotonic() of each message in seen
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
                self.arrived.append(time.monotonic())
                self._changed.notify_all()

    def next(self, timeout: float = 30) -> str:
        with self._changed:
            if not self._changed.wait_for(lambda: self._read < len(self.seen), timeout):
                raise TimeoutError("no notification")
            self._read += 1
            return self.seen[self._read - 1]

    def until(self, prefix: str, timeout: float = 30) -> str:
        """The next message that starts with ``prefix``; each wait for one is ``timeout``."""
        while not (message := self.next(timeout)).startswith(prefix):
            pass
        return message

    def last_arrived(self) -> float:
        """When the message ``next`` returned last arrived (time.monotonic())."""
        with self._changed:
            return self.arrived[self._read - 1]

    def barrier(self, timeout: float = 30) -> list[str]:
        """Every message sent to the socket before this call, not yet read: a marker of the
        test's own queues up behind them, and they are read once it is."""
        marker = f"TEST-BARRIER {secrets.token_hex(8)}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(marker.encode(), str(self.path))
        with self._changed:
            if not self._changed.wait_for(lambda: marker in self.seen[self._read :], timeout):
                raise TimeoutError("the barrier never arrived")
            end = self.seen.index(marker, self._read)
            before, self._read = self.seen[self._read : end], end + 1
            return before

    def close(self) -> None:
        """Stop reading (the pump ends) and close the socket."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
