"""What the fleet benchmarks share, on top of the tests' harness (tests/support, which
bench/run.py puts on sys.path): the hub and fleet they run against, timed first boots,
services timed to READY=1 on a real NOTIFY_SOCKET, and a client sending requests through
a principal's proxy."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hub_fleet import Fleet, make_fleet, running_hub
from machine_helpers import Enrolled, boot, provision
from notify_listener import Listener
from processes import unix_request

from bureau.wire.service_route import ServiceRoute

FLEET = "bench/fleet/prod"
READY_TIMEOUT = 120


@contextlib.contextmanager
def bench_fleet(work: Path) -> Iterator[Fleet]:
    """A hub of its own at Synapse's default password hashing cost (first boots log in
    and change a password, and are timed), with the fleet FLEET set up on it."""
    with running_hub(work / "hub") as hub:
        yield make_fleet(hub, work, FLEET)


def checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """A console script's run (processes.run), which must have succeeded."""
    if result.returncode != 0:
        what = " ".join([Path(result.args[0]).name, *result.args[1:3]])
        raise RuntimeError(f"{what} failed: {result.stderr.strip()[-2000:]}")
    return result


def first_boot(fleet: Fleet, work: Path, name: str) -> tuple[float, float, Enrolled]:
    """machine/NAME provisioned and first-booted with its files in work/NAME: seconds from
    the boot's start to its exit, seconds of it in Matrix requests (the launcher's own
    per-request timings), and the machine."""
    machine = provision(fleet, work / name, f"machine/{name}")
    started = time.monotonic()
    result = boot(machine, "--key-storage", "plain", "--log-level", "debug")
    elapsed = time.monotonic() - started
    checked(result)
    matrix_ms = 0.0
    for line in result.stderr.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "matrix request":
                matrix_ms += float(entry.get("ms", 0))
    return elapsed, matrix_ms / 1000, Enrolled(machine)


def machine_args(machine: Enrolled, run_dir: Path) -> list[str]:
    """The arguments a launcher and a daemon of ``machine`` share."""
    return ["--machine-name", machine.machine.short_name, "--state-dir",
            str(machine.state_dir), "--run-dir", str(run_dir)]  # fmt: skip


def route(upstream: str) -> ServiceRoute:
    """A service that injects the TOKEN credential as a Bearer token, as
    machine_helpers.services_file writes it for the CLI."""
    return ServiceRoute(upstream, {"Authorization": "TOKEN"}, "Bearer")


@contextlib.contextmanager
def service(
    argv: list[str], notify: Path, log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A launcher or daemon as systemd runs it, its stderr in ``log``; yields it and its
    seconds from start to READY=1."""
    listener = Listener(notify)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
    try:
        with log.open("wb") as err:
            started = time.monotonic()
            proc = subprocess.Popen(argv, env=env, stderr=err, stdout=subprocess.DEVNULL)
            try:
                listener.until("READY=1", timeout=READY_TIMEOUT)
                yield proc, listener.last_arrived() - started
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        listener.close()


class Client(threading.Thread):
    """Sends requests through a proxy socket (to the echo upstream) back to back, or one
    every ``pace`` seconds; records every change of the Authorization the upstream saw."""

    def __init__(self, sock: Path, pace: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.pace = pace  # seconds between requests; 0 sends back to back
        self.stop = threading.Event()
        self.requests = 0
        self.failures = 0
        self.errors: list[str] = []
        self.seen: list[tuple[float, str]] = []  # (monotonic, Authorization) on change
        self._lock = threading.Lock()

    def reset_counts(self) -> None:
        self.requests = self.failures = 0
        self.errors.clear()

    def run(self) -> None:
        last = ""
        while not self.stop.wait(self.pace):
            self.requests += 1
            try:
                reply = unix_request(self.sock, "GET", "/http/api/rotate")
                if reply.status != 200:
                    raise ValueError(f"status {reply.status}: {reply.body[:200]!r}")
                value = reply.json()["headers"].get("authorization", "")
            except Exception as exc:  # a failure to count, whatever it is
                self.failures += 1
                self.errors.append(repr(exc))
                continue
            if value != last:
                with self._lock:
                    self.seen.append((time.monotonic(), value))
                last = value

    def first_seen(self, value: str, after: float, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for when, seen in self.seen:
                    if seen == value and when >= after:
                        return when
            time.sleep(0.001)
        raise RuntimeError(
            f"{value!r} never reached the proxy; client alive: {self.is_alive()}, "
            f"{self.requests} requests, last errors: {self.errors[-3:]}"
        )
