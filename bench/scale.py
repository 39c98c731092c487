"""The scale run (#20): simulated machines at several fleet sizes, against a hub on each
database, timing a rotation of one event per machine and of one fleet bundle.

usage: ./script/bench --scale [--sizes 20,50] [--databases sqlite,postgresql]
       (bench/run.py --scale; writes bench/results/scale.{json,md,png})

Per database, one hub (bureau.hub, as `bureau hub up [--database postgresql]`) and one
fleet; per size, machines are enrolled up to that size (bench/scale_enroll.py: real
accounts, keys and first boots), each given a principal with its credentials and an
assignment, and one fleet bundle is published for all of them. Then the simulators
(bench/scale_sim.py: every machine's sync, state reads, plan and decrypt, in a few
processes) start and open what is published, and, with the fleet quiet, the idle cost is
measured; then each rotation is published and timed from the publish's start until the
last machine has opened the new value.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import scale_hub
import scale_newmachine
import scale_profile
import scale_publish
from hub_fleet import make_fleet, running_hub
from scale_enroll import SimMachine, enroll
from scale_procs import Record, Simulators, simulators
from scale_sim import token_digest

from bureau import age_keys

FLEET = "bench/fleet/prod"
DATABASES = ("sqlite", "postgresql")
SIZES = (20, 50, 100, 200)
READY_TIMEOUT = 600.0
SERVE_TIMEOUT = 300.0
SETTLE = 3.0  # seconds of quiet before an idle window or a rotation


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p90": _pct(values, 0.9), "max": max(values)}


def breakdown(records: dict[int, Record], started: float) -> dict[str, Any]:
    """Where each machine's time went, from the publish's start to its value opened:
    its sync returning with the change, reading the rooms' state, deciding, the
    launcher's checks and decrypt (and waiting behind the other machines' in the same
    simulator for each)."""
    rows = list(records.values())
    slowest = max(rows, key=lambda r: r["done"])
    return {
        "sync_arrived_s": _spread([r["sync"] - started for r in rows]),
        "state_read_s": _spread([r["state"] - r["sync"] for r in rows]),
        "plan_s": _spread([r["plan"] - r["state"] for r in rows]),
        "open_s": _spread([r["done"] - r["plan"] for r in rows]),
        "decrypt_s": _spread([r["decrypt_s"] for r in rows]),
        "slowest": {
            "sync_arrived_s": slowest["sync"] - started,
            "state_read_s": slowest["state"] - slowest["sync"],
            "plan_s": slowest["plan"] - slowest["state"],
            "open_s": slowest["done"] - slowest["plan"],
            "decrypt_s": slowest["decrypt_s"],
        },
    }


class Scale:
    """One database's hub and fleet, grown size by size."""

    def __init__(self, database: str, work: Path, processes: int, logs: Path) -> None:
        self.database = database
        self.work = work
        self.processes = processes
        self.logs = logs
        self.machines: list[SimMachine] = []
        self.generation = 0
        self.principal_value = "per-machine-0"
        self.fleet_value = "fleet-0"
        # The operator's escrow identity (reseal --watch reads it) and recipient.
        self.escrow_identity, self.escrow = age_keys.generate()

    @contextlib.contextmanager
    def hub(self) -> Iterator[None]:
        with running_hub(self.work / "hub", database=self.database) as hub:
            self.fleet = make_fleet(hub, self.work, FLEET)
            self.creds = self.fleet.creds
            self.cost = scale_hub.HubCost(hub.status.pid, hub.status.database_pid)
            yield

    def grow(self, size: int) -> dict[str, Any]:
        first = len(self.machines)
        new, seconds = enroll(self.creds, self.work / "machines", first, size - first)
        self.machines += new
        started = time.monotonic()
        scale_publish.set_up_principals(
            self.creds, [m.localpart for m in new], first, self.principal_value
        )
        scale_publish.publish_fleet(self.creds, self.localparts, self.fleet_value, self.escrow)
        return {"enrolled": len(new), "enroll_s": seconds,
                "set_up_s": time.monotonic() - started}  # fmt: skip

    @property
    def localparts(self) -> list[str]:
        return [m.localpart for m in self.machines]

    def spec(self) -> dict[str, Any]:
        return {"server": self.creds.server_name, "fleet": self.creds.fleet,
                "credential_ref": scale_publish.CREDENTIAL_REF,
                # BENCH_SCALE_READ=sync: an experiment, the machines take the changed
                # events from the sync instead of reading the rooms' state back.
                "read": os.environ.get("BENCH_SCALE_READ", "room")}  # fmt: skip

    def idle(self, sims: Simulators, seconds: float) -> dict[str, Any]:
        """CPU per machine per minute while nothing is published."""
        size = len(self.machines)
        time.sleep(SETTLE)
        sim0, hub0 = scale_hub.cpu_seconds(sims.pids), self.cost.cpu()
        time.sleep(seconds)
        sim1, hub1 = scale_hub.cpu_seconds(sims.pids), self.cost.cpu()
        per_minute = 60 / seconds / size
        hub = scale_hub.delta(hub0, hub1)
        return {
            "seconds": seconds,
            "machine_cpu_s_per_min": (sim1 - sim0) * per_minute,
            "hub_cpu_s_per_machine_min": sum(hub.values()) * per_minute,
            "hub_cpu_s": hub,
        }

    def rotate(self, sims: Simulators, kind: str, profile: Path | None = None) -> dict[str, Any]:
        """One rotation: ``kind`` "per_machine" (every principal re-provisioned) or
        "fleet" (one fleet bundle); with ``profile``, Synapse sampled into that file."""
        time.sleep(SETTLE)
        self.generation += 1
        size = len(self.machines)
        sim0, hub0 = scale_hub.cpu_seconds(sims.pids), self.cost.cpu()
        counts0 = sims.counts()
        extra: dict[str, Any] = {}
        sampled = (
            scale_profile.sampling(self.cost.synapse, profile)
            if profile is not None
            else contextlib.nullcontext()
        )
        with scale_hub.PeakRss(self.cost) as peak, sampled:
            started = time.monotonic()
            if kind == "per_machine":
                self.principal_value = value = f"per-machine-{self.generation}"
                publish_s = scale_publish.publish_per_machine(self.creds, self.localparts, value)
            else:
                self.fleet_value = value = f"fleet-{self.generation}"
                publish_s, written, which = scale_publish.publish_fleet(
                    self.creds, self.localparts, value, self.escrow
                )
                extra = {"state_keys": written, "publisher": which}
            records = sims.wait_opened(
                "principal" if kind == "per_machine" else "fleet",
                token_digest(value),
                size,
                SERVE_TIMEOUT,
            )
            ended = time.monotonic()
        sim1, hub1 = scale_hub.cpu_seconds(sims.pids), self.cost.cpu()
        if profile is not None:
            extra["synapse_profile"] = scale_profile.summarize(profile)
        served = [r["done"] - started for r in records.values()]
        hub = scale_hub.delta(hub0, hub1)
        # Reads after a machine served (other shards' writes) count too: the fan-out's.
        time.sleep(SETTLE)
        counts = sims.counts()
        extra["per_machine_counts"] = {
            k: (counts.get(k, 0) - counts0.get(k, 0)) / size for k in counts
        }
        return {
            "kind": kind,
            "machines": size,
            "publish_s": publish_s,
            "all_served_s": max(served),
            "median_served_s": statistics.median(served),
            "wall_s": ended - started,
            "hub_cpu_s": hub,
            "hub_cpu_share": sum(hub.values()) / (ended - started),
            "simulators_cpu_s": sim1 - sim0,
            "hub_peak_rss_mib": peak.peak,
            "where": breakdown(records, started),
            **extra,
        }

    def new_machine(self) -> dict[str, Any]:
        """A machine enrolled while reseal --watch runs, timed to its fleet credential."""
        print(f"  {self.database}: a new machine with reseal --watch", flush=True)
        got = scale_newmachine.run(
            self.creds, self.fleet.credential_file, self.escrow_identity,
            self.work / "new-machine", len(self.machines), self.fleet_value,
        )  # fmt: skip
        print(f"    new machine: {got['seconds']:.2f} s from first boot", flush=True)
        return {"database": self.database, "machines_before": len(self.machines), **got}

    def measure(
        self, size: int, idle_seconds: float, rounds: int, new_machine: bool = False
    ) -> dict[str, Any]:
        grown = self.grow(size)
        print(f"  {self.database} {size} machines: enrolled in {grown['enroll_s']:.0f} s",
              flush=True)  # fmt: skip
        with simulators(self.spec(), self.machines, self.processes, self.logs) as sims:
            started = time.monotonic()
            sims.wait_ready(size, READY_TIMEOUT)
            sims.wait_opened("principal", token_digest(self.principal_value), size, READY_TIMEOUT)
            sims.wait_opened("fleet", token_digest(self.fleet_value), size, READY_TIMEOUT)
            ready_s = time.monotonic() - started
            idle = self.idle(sims, idle_seconds)
            rotations = []
            for _ in range(rounds):
                for kind in ("per_machine", "fleet"):
                    rotations.append(self.rotate(sims, kind))
                    last = rotations[-1]
                    print(f"    {kind}: publish {last['publish_s']:.2f} s, all served "
                          f"{last['all_served_s']:.2f} s", flush=True)  # fmt: skip
            extra: dict[str, Any] = {}
            if new_machine and scale_profile.py_spy() is not None:
                # Extra rotations, not in the table: sampling takes CPU from the hub.
                extra["profiled_rotations"] = [
                    self.rotate(sims, kind, self.work / f"profile-{size}-{kind}.txt")
                    for kind in ("per_machine", "fleet")
                ]
            if new_machine:
                extra["new_machine"] = self.new_machine()
        return {"machines": size, **grown, "simulators_ready_s": ready_s, "idle": idle,
                "rotations": rotations, **extra}  # fmt: skip


def run(
    databases: list[str], sizes: list[int], processes: int, idle_seconds: float, rounds: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bureau-scale-", dir="/tmp"))
    work.chmod(0o755)  # PostgreSQL's server runs as postgres and passes through it
    out: dict[str, Any] = {"processes": processes, "rounds": rounds, "runs": []}
    try:
        for database in databases:
            scale = Scale(database, work / database, processes, work / "logs")
            (work / database).mkdir()
            with scale.hub():
                for size in sizes:
                    # The new machine joins the largest fleet, its simulators running.
                    row = scale.measure(size, idle_seconds, rounds, size == sizes[-1])
                    out["runs"].append({"database": database, **row})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
