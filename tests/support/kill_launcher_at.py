"""Run bureau-launcher as usual, but SIGKILL it while it delivers the Nth payload to a
proxy: before any byte, after half of it, after all of it (its end of the pipe still
open, READY not yet read), or once the proxy has said READY (its socket not yet moved
into place).

    python kill_launcher_at.py {before,half,all,ready} N [bureau-launcher arguments...]
"""

from __future__ import annotations

import itertools
import os
import signal
import sys

from bureau.launcher import main, processes, proxy_kind

POINT, KILL_AT = sys.argv[1], int(sys.argv[2])
_deliver = processes.deliver
_ready_line = processes.ready_line
_deliveries = itertools.count(1)


def _deliver_and_die(fd: int, payload: bytes) -> None:
    if next(_deliveries) < KILL_AT or POINT == "ready":
        _deliver(fd, payload)
        return
    if POINT == "half":
        os.write(fd, payload[: len(payload) // 2])
    elif POINT == "all":
        os.write(fd, payload)
    os.kill(os.getpid(), signal.SIGKILL)


_readies = itertools.count(1)


def _ready_and_die(fd: int) -> bytes:
    line = _ready_line(fd)
    if next(_readies) >= KILL_AT and POINT == "ready":
        os.kill(os.getpid(), signal.SIGKILL)
    return line


# proxy_kind looks the two up in its own namespace at each call.
setattr(proxy_kind, "deliver", _deliver_and_die)  # noqa: B010
setattr(proxy_kind, "ready_line", _ready_and_die)  # noqa: B010
main.main(sys.argv[3:])
