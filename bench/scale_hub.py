"""The hub's cost during the scale run, from /proc: CPU seconds of Synapse and of
PostgreSQL (the postmaster, its live backends, and the backends that exited, which the
kernel adds to their parent's cutime/cstime), and their resident memory sampled while a
rotation runs. Also the CPU of any other processes by pid (the simulators)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                pending += kids
    return found


def cpu_seconds(pids: list[int], *, reaped: bool = False) -> float:
    """User and system CPU of ``pids``; with ``reaped``, also what their exited and waited
    for children used (cutime, cstime)."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])
        if reaped:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[21]) * PAGE_KIB
    return total / 1024


class HubCost:
    """``synapse``: Synapse's pid; ``postgres``: the postmaster's, None on SQLite."""

    def __init__(self, synapse: int, postgres: int | None) -> None:
        self.synapse = synapse
        self.postgres = postgres

    def cpu(self) -> dict[str, float]:
        out = {"synapse": cpu_seconds([self.synapse])}
        if self.postgres is not None:
            # Backends that exited were reaped by the postmaster: its cutime holds them.
            out["postgres"] = cpu_seconds([self.postgres], reaped=True) + cpu_seconds(
                children(self.postgres)
            )
        return out

    def rss(self) -> dict[str, float]:
        out = {"synapse": rss_mib([self.synapse])}
        if self.postgres is not None:
            # Each backend's RSS counts the shared buffers it touched: an upper bound.
            out["postgres"] = rss_mib([self.postgres, *children(self.postgres)])
        return out


class PeakRss(threading.Thread):
    """Samples the hub's RSS every ``every`` seconds until stopped; keeps the peaks."""

    def __init__(self, hub: HubCost, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.hub = hub
        self.every = every
        self.stop = threading.Event()
        self.peak: dict[str, float] = {}

    def run(self) -> None:
        while True:
            for part, mib in self.hub.rss().items():
                self.peak[part] = max(self.peak.get(part, 0.0), mib)
            if self.stop.wait(self.every):
                return

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=5)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def now() -> float:
    return time.monotonic()
