"""A stand-in for journald, for the tests that log to the journal."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from bureau import journal


class Listener:
    """Stands in for journald: a datagram socket, entries decoded as journald does,
    including entries passed as a memfd."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.entries: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 1 << 20, 1)
            except TimeoutError:
                return self.entries
            if fds:
                # journald maps the memfd from its start, whatever its offset.
                with os.fdopen(fds[0], "rb") as memfd:
                    data = os.pread(memfd.fileno(), os.fstat(memfd.fileno()).st_size, 0)
            self.entries.append(dict(journal.decode(data)))

    def wait_for(self, seconds: float = 60, **fields: str) -> dict[str, str]:
        deadline = time.monotonic() + seconds
        while True:
            for entry in self.drain():
                if all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            assert time.monotonic() < deadline, f"no journal entry with {fields}"
