"""Benchmarks that need a fleet: the embedded hub (a real Synapse), a worker enrolled with
the real CLI, its launcher and daemon, a principal's proxy in front of an echo upstream.

- first boot, bootstrap.json to session.json (median of several machines), and the share
  of it spent waiting on Synapse (the launcher's own per-request timings);
- launcher start and daemon start to READY=1, read from a real NOTIFY_SOCKET;
- rotation latency: from `bureau credentials provision` returning to the first proxied
  request that carries the new value, beside the floor measured the same way in the same
  run (a state event PUT by one client arriving in another client's /sync), with a client
  sending requests continuously through every rotation and counting failures.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import memory
from servers import free_port

from bureau.hub import Hub
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.operator.setup import setup
from bureau.secret import Secret

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
FLEET = "bench/fleet/prod"


def cli(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / str(args[0])), *map(str, args[1:])],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} {args[1]} failed: {result.stderr.strip()}")
    return result


@dataclass
class Fleet:
    hub: Hub
    url: str
    server: str
    creds_file: Path
    work: Path


@contextlib.contextmanager
def fleet(work: Path) -> Iterator[Fleet]:
    hub = Hub(work / "hub")
    status, _ = hub.up(port=free_port())
    try:
        creds_file = work / "bureau-creds"
        setup(
            homeserver=status.url,
            server_name=status.server_name,
            registration_token=Secret(hub.token_file.read_text().strip()),
            credential_file=creds_file,
            fleet=FLEET,
            report=lambda _line: None,
        )
        yield Fleet(hub, status.url, status.server_name, creds_file, work)
    finally:
        hub.down()


def first_boot(f: Fleet, name: str) -> tuple[float, float, Path]:
    """Seconds from start to exit of a first boot, seconds of it in Matrix requests, and
    the machine's state directory."""
    bootstrap = f.work / f"{name}.bootstrap.json"
    cli("bureau", "machine", "provision", f"machine/{name}", "--credential-file", f.creds_file,
        "--output", bootstrap)  # fmt: skip
    state = f.work / name
    started = time.monotonic()
    result = subprocess.run(
        [
            str(BIN / "bureau-launcher"),
            "--bootstrap-file",
            str(bootstrap),
            "--machine-name",
            f"machine/{name}",
            "--state-dir",
            str(state),
            "--key-storage",
            "plain",
            "--first-boot-only",
            "--log-level",
            "debug",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    matrix_ms = 0.0
    for line in result.stderr.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "matrix request":
                matrix_ms += float(entry.get("ms", 0))
    return elapsed, matrix_ms / 1000, state


class NotifyListener:
    """A NOTIFY_SOCKET that, like systemd, reads every message: a service whose receiver's
    queue (net.unix.max_dgram_qlen, 10 by default) is full waits up to 2 s to send its next
    STATUS= (bureau/notify.py), which would be timed as the service being slow."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read_on, daemon=True)

    def wait_ready(self, timeout: float = 120) -> float:
        self.sock.settimeout(timeout)
        while True:
            message = self.sock.recv(65536).decode()
            if message.startswith("READY=1"):
                ready = time.monotonic()
                self._reader.start()
                return ready

    def _read_on(self) -> None:
        self.sock.settimeout(0.1)
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                self.sock.recv(65536)

    def close(self) -> None:
        self._closing.set()
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        self.sock.close()


@contextlib.contextmanager
def service(
    argv: list[str], notify: Path, log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A launcher or daemon as systemd runs it; yields it and its seconds to READY."""
    listener = NotifyListener(notify)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
    with log.open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stderr=err, stdout=subprocess.DEVNULL)
        try:
            yield proc, listener.wait_ready() - started
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            listener.close()


class Client(threading.Thread):
    """Sends requests through a proxy socket back to back; records what it saw."""

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
                conn = _UnixConnection(self.sock)
                conn.request("GET", "/http/api/rotate")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                if response.status != 200:
                    raise ValueError(f"status {response.status}: {body[:200]!r}")
                value = json.loads(body)["headers"].get("authorization", "")
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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("bench", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(self._path))


def sync_floor(f: Fleet, state: Path, rounds: int) -> list[float]:
    """Seconds from one client's state PUT returning to another client's /sync returning
    with it: what any Matrix-driven rotation must wait at least."""
    creds = credentials.load(f.creds_file)
    admin = credentials.admin_client(creds)
    session = json.loads((state / "session.json").read_text())
    machine = MatrixHTTP(f.url, Secret(session["access_token"]), timeout=60)
    alias = f"#{FLEET}/machine/{state.name}:{f.server}"
    room = admin.resolve_alias(alias)
    assert room is not None
    sync_filter = json.dumps({"room": {"timeline": {"types": ["m.bureau.bench"]}}})
    base = f"/_matrix/client/v3/sync?filter={quote(sync_filter)}"
    since = machine.call("GET", base + "&timeout=0", what="sync")["next_batch"]
    floors = []
    for index in range(rounds):
        arrived: dict[str, Any] = {}

        def wait(since: str = since, arrived: dict[str, Any] = arrived) -> None:
            path = f"{base}&timeout=30000&since={since}"
            data = machine.call("GET", path, what="sync")
            arrived["at"] = time.monotonic()
            arrived["since"] = data["next_batch"]

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)  # parked in its long poll
        admin.put_state(room, "m.bureau.bench", "", {"round": index})
        put_returned = time.monotonic()
        waiter.join(timeout=60)
        floors.append(arrived["at"] - put_returned)
        since = arrived["since"]
    return floors


def run(
    work: Path, boots: int, rotations: int, workers: int, idle_seconds: float, starts: int
) -> dict[str, Any]:
    import sandboxes  # noqa: PLC0415 -- they build on this module
    import simulated_fleet  # noqa: PLC0415

    results: dict[str, Any] = {}
    with fleet(work) as f:
        timings = [first_boot(f, f"boot{i}") for i in range(boots)]
        results["first_boot_s"] = statistics.median(t for t, _, _ in timings)
        results["first_boot_matrix_share"] = statistics.median(m / t for t, m, _ in timings)
        results["first_boots"] = len(timings)
        _, _, state = first_boot(f, "worker")
        run_dir = Path(f.work / "run")
        common = [
            "--machine-name",
            "machine/worker",
            "--state-dir",
            str(state),
            "--run-dir",
            str(run_dir),
        ]
        upstream = subprocess.Popen(
            [sys.executable, str(REPO / "script/echo-upstream")], stdout=subprocess.PIPE
        )
        try:
            assert upstream.stdout is not None
            port = int(upstream.stdout.readline().split()[1])
            services = f.work / "services.json"
            services.write_text(json.dumps({"api": {
                "upstream_url": f"http://127.0.0.1:{port}", "auth_scheme": "Bearer",
                "inject_headers": {"Authorization": "TOKEN"}}}))  # fmt: skip
            provision: list[str | Path] = [
                "bureau", "credentials", "provision", "--credential-file", f.creds_file,
                "--machine", "machine/worker", "--principal", "agent/bench",
                "--services", services]  # fmt: skip
            cli(*provision, stdin="TOKEN=rotation-0\n")
            cli("bureau", "machine", "assign", "machine/worker", "--principal", "agent/bench",
                "--credential-file", f.creds_file)  # fmt: skip
            with (
                service([str(BIN / "bureau-launcher"), *common], f.work / "l.notify",
                        f.work / "launcher.log") as (_, launcher_ready),
                service([str(BIN / "bureau-daemon"), *common], f.work / "d.notify",
                        f.work / "daemon.log") as (_, daemon_ready),
            ):  # fmt: skip
                results["launcher_ready_s"] = launcher_ready
                results["daemon_ready_s"] = daemon_ready
                client = Client(run_dir / "fleet/prod/agent/bench.proxy.sock")
                client.start()
                client.first_seen("Bearer rotation-0", 0)
                latencies = []
                for index in range(1, rotations + 1):
                    cli(*provision, stdin=f"TOKEN=rotation-{index}\n")
                    returned = time.monotonic()
                    # Each value is new, so its first sighting is the swap; it can come
                    # before the CLI has exited, which counts as no wait at all.
                    seen = client.first_seen(f"Bearer rotation-{index}", 0)
                    latencies.append(max(0.0, seen - returned))
                client.stop.set()
                client.join(timeout=30)
                results["rotation_s"] = statistics.median(latencies)
                results["rotations"] = len(latencies)
                results["rotation_requests"] = client.requests
                results["rotation_failures"] = client.failures
                results["rotation_errors"] = client.errors[:5]
                results["sync_floor_s"] = statistics.median(sync_floor(f, state, rotations))
            _, _, mem_state = first_boot(f, "mem")
            results["memory"] = memory.run(f.creds_file, FLEET, "machine/mem", mem_state, f.work)
            results["sandboxes"] = {
                "start": sandboxes.run_start(f, starts),
                "memory": sandboxes.run_memory(f),
            }
            results["simulated_fleet"] = simulated_fleet.run(f, workers, idle_seconds)
        finally:
            upstream.terminate()
            upstream.wait(timeout=30)
            with contextlib.suppress(OSError):
                subprocess.run(["pkill", "-f", "--", f"--socket {run_dir}/"], check=False)
    return results
