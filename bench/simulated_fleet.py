"""A simulated fleet: N workers on this machine, each a real launcher and daemon with its
own state and run directories, against the fleet benchmark's hub (one Synapse).

- rotation: one new credential value published for every worker's principal (N state
  events, one per machine, as `bureau credentials provision` publishes them), timed from
  the first publish to the last proxy serving the new value;
- requests: each worker's principal sends a request every PACE seconds through its proxy
  for the whole rotation; every one must succeed;
- idle CPU per daemon: CPU time each daemon uses over a quiet minute, as a share of one CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import FLEET, Client, first_boot, machine_args, route, service
from hub_fleet import Fleet
from launcher_proc import kill_proxies_under
from machine_helpers import Enrolled, proxy_socket
from processes import BIN, echo_upstream
from proxy_overhead import cpu_seconds

from bureau.operator import assignments
from bureau.operator.principal_credentials import CredentialRequest, provision
from bureau.secret import Secret

PACE = 0.1


def run(fleet: Fleet, work: Path, workers: int, idle_seconds: float) -> dict[str, Any]:
    names = [f"sim{i}" for i in range(workers)]
    with ThreadPoolExecutor(4) as pool:  # first boots wait on Synapse, not on this CPU
        machines = list(pool.map(lambda n: first_boot(fleet, work, n)[2], names))
    run_dirs = [work / "sim-run" / n for n in names]
    try:
        with echo_upstream() as upstream:
            service_route = route(upstream)

            def publish(index: int, value: str) -> None:
                request = CredentialRequest(
                    machine=machines[index].machine.localpart,
                    principal=f"{FLEET}/agent/{names[index]}",
                    services={"api": service_route},
                    secrets={"TOKEN": Secret(value)},
                    services_where="bench",
                )
                provision(fleet.creds, request)

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda i: publish(i, "fleet-0"), range(workers)))
            for name, machine in zip(names, machines, strict=True):
                assignments.assign(
                    fleet.creds, machine.machine.localpart, f"{FLEET}/agent/{name}",
                    auto_start=True,
                )  # fmt: skip
            with contextlib.ExitStack() as stack:
                daemons = _start_workers(stack, work, machines, run_dirs)
                clients = [
                    Client(proxy_socket(run_dir, f"agent/{name}"), pace=PACE)
                    for name, run_dir in zip(names, run_dirs, strict=True)
                ]
                for client in clients:
                    client.start()
                for client in clients:
                    client.first_seen("Bearer fleet-0", 0, timeout=180)
                for client in clients:
                    client.reset_counts()
                started = time.monotonic()
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(lambda i: publish(i, "fleet-1"), range(workers)))
                published = time.monotonic()
                served = [c.first_seen("Bearer fleet-1", started, timeout=180) for c in clients]
                time.sleep(1.0)  # requests keep flowing after the last swap
                for client in clients:
                    client.stop.set()
                for client in clients:
                    client.join(timeout=30)
                requests = sum(c.requests for c in clients)
                failures = sum(c.failures for c in clients)
                errors = [e for c in clients for e in c.errors][:5]
                idle = _idle_cpu(daemons, idle_seconds)
    finally:
        kill_proxies_under(work / "sim-run")  # they outlive their launchers, by design
    return {
        "workers": workers,
        "pace_s": PACE,
        "publish_s": published - started,
        "all_served_s": max(served) - started,
        "median_served_s": statistics.median(served) - started,
        "requests": requests,
        "failures": failures,
        "errors": errors,
        "idle_seconds": idle_seconds,
        "daemon_idle_cpu_median": statistics.median(idle),
        "daemon_idle_cpu_max": max(idle),
    }


def _start_workers(
    stack: contextlib.ExitStack[Any], work: Path, machines: list[Enrolled], run_dirs: list[Path]
) -> list[subprocess.Popen[bytes]]:
    """A launcher and a daemon per worker, each READY; returns the daemons."""
    logs = work / "sim-logs"
    logs.mkdir(exist_ok=True)
    daemons = []
    for machine, run_dir in zip(machines, run_dirs, strict=True):
        name = machine.machine.short_name.removeprefix("machine/")
        common = machine_args(machine, run_dir)
        launcher = [str(BIN / "bureau-launcher"), *common]
        daemon = [str(BIN / "bureau-daemon"), *common]
        stack.enter_context(service(launcher, logs / f"{name}.l.sock", logs / f"{name}.l"))
        proc, _ = stack.enter_context(service(daemon, logs / f"{name}.d.sock", logs / f"{name}.d"))
        daemons.append(proc)
    return daemons


def _idle_cpu(daemons: list[subprocess.Popen[bytes]], seconds: float) -> list[float]:
    """A quiet spell (no events, no requests): each daemon's CPU as a share of one CPU."""
    time.sleep(2.0)
    before = [cpu_seconds([p.pid]) for p in daemons]
    time.sleep(seconds)
    after = [cpu_seconds([p.pid]) for p in daemons]
    return [(b - a) / seconds for a, b in zip(before, after, strict=True)]
