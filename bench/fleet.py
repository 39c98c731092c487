"""Benchmarks that need a fleet: the embedded hub (a real Synapse), a worker enrolled with
the real CLI, its launcher and daemon, a principal's proxy in front of an echo upstream.

- first boot, bootstrap.json to session.json (median of several machines), and the share
  of it spent waiting on Synapse (the launcher's own per-request timings);
- launcher start and daemon start to READY=1, read from a real NOTIFY_SOCKET;
- rotation latency: from `bureau credentials provision` returning to the first proxied
  request that carries the new value, beside the floor measured the same way in the same
  run (a state event PUT by one client arriving in another client's /sync), with a client
  sending requests continuously through every rotation and counting failures.

``run`` runs these, then memory.py's, sandboxes.py's and simulated_fleet.py's benchmarks on
the same hub; what they share is harness.py's.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import memory
import sandboxes
import simulated_fleet
from harness import Client, bench_fleet, checked, first_boot, machine_args, service
from hub_fleet import Fleet
from launcher_proc import kill_proxies_under
from machine_helpers import (
    Enrolled,
    assign,
    provision_credentials,
    proxy_socket,
    services_file,
)
from processes import BIN, echo_upstream

from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.secret import Secret
from bureau.wire import names


def sync_floor(fleet: Fleet, enrolled: Enrolled, rounds: int) -> list[float]:
    """Seconds from one client's state PUT returning to another client's /sync returning
    with it: what any Matrix-driven rotation must wait at least."""
    admin = credentials.admin_client(fleet.creds)
    session = json.loads((enrolled.state_dir / "session.json").read_text())
    machine = MatrixHTTP(fleet.hub.url, Secret(session["access_token"]), timeout=60)
    alias = names.room_alias(enrolled.machine.localpart, fleet.hub.server_name)
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
    results: dict[str, Any] = {}
    with bench_fleet(work) as fleet:
        timings = [first_boot(fleet, work, f"boot{i}") for i in range(boots)]
        results["first_boot_s"] = statistics.median(t for t, _, _ in timings)
        results["first_boot_matrix_share"] = statistics.median(m / t for t, m, _ in timings)
        results["first_boots"] = len(timings)
        _, _, worker = first_boot(fleet, work, "worker")
        run_dir = work / "run"
        try:
            with echo_upstream() as upstream:
                services = services_file(work, upstream)
                results.update(rotation(fleet, worker, services, run_dir, work, rotations))
        finally:
            kill_proxies_under(run_dir)  # they outlive the launcher, by design
        _, _, mem = first_boot(fleet, work, "mem")
        results["memory"] = memory.run(fleet, mem, work)
        results["sandboxes"] = {
            "start": sandboxes.run_start(fleet, work, starts),
            "memory": sandboxes.run_memory(fleet, work),
        }
        results["simulated_fleet"] = simulated_fleet.run(fleet, work, workers, idle_seconds)
    return results


def rotation(
    fleet: Fleet, worker: Enrolled, services: Path, run_dir: Path, work: Path, rotations: int
) -> dict[str, Any]:
    """The worker's launcher and daemon started and timed to READY, then ``rotations``
    new values of agent/bench's credential, each timed to the proxy serving it, beside
    the floor."""
    results: dict[str, Any] = {}

    def provision(index: int) -> None:
        secrets = f"TOKEN=rotation-{index}\n"
        checked(provision_credentials(fleet, worker, "agent/bench", services, secrets))

    provision(0)
    assign(fleet, worker, "agent/bench")
    common = machine_args(worker, run_dir)
    with (
        service([str(BIN / "bureau-launcher"), *common], work / "l.notify",
                work / "launcher.log") as (_, launcher_ready),
        service([str(BIN / "bureau-daemon"), *common], work / "d.notify",
                work / "daemon.log") as (_, daemon_ready),
    ):  # fmt: skip
        results["launcher_ready_s"] = launcher_ready
        results["daemon_ready_s"] = daemon_ready
        client = Client(proxy_socket(run_dir, "agent/bench"))
        client.start()
        client.first_seen("Bearer rotation-0", 0)
        latencies = []
        for index in range(1, rotations + 1):
            provision(index)
            returned = time.monotonic()
            # Each value is new, so its first sighting is the swap; it can come before the
            # CLI has exited, which counts as no wait at all.
            seen = client.first_seen(f"Bearer rotation-{index}", 0)
            latencies.append(max(0.0, seen - returned))
        client.stop.set()
        client.join(timeout=30)
        results["rotation_s"] = statistics.median(latencies)
        results["rotations"] = len(latencies)
        results["rotation_requests"] = client.requests
        results["rotation_failures"] = client.failures
        results["rotation_errors"] = client.errors[:5]
        results["sync_floor_s"] = statistics.median(sync_floor(fleet, worker, rotations))
    return results
