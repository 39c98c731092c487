"""Proxy overhead: requests/s, p50/p99 latency and the proxy's CPU time per request at
concurrency 1, 16 and 64 (and a 64 KiB body at 16), for three legs measured side by side
with one load generator: direct to the upstream, through bureau-proxy, and through nginx
configured as the equivalent header-injecting reverse proxy. Medians of several rounds,
the legs interleaved within each round so that drift hits all of them alike."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from servers import Server, bureau_proxy, nginx_proxy, upstream

CONCURRENCY = (1, 16, 64)
BIG_CONCURRENCY = 16
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    leg: str
    body: str
    concurrency: int
    rps: float
    p50_us: int
    p99_us: int
    cpu_us_per_request: float | None
    errors: int


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def drive(
    loadgen: Path, sock: Path, path: str, connections: int, seconds: float
) -> dict[str, float]:
    result = subprocess.run(
        [str(loadgen), str(sock), path, str(connections), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    measured: dict[str, float] = json.loads(result.stdout)
    return measured


def measure(
    loadgen: Path,
    leg: str,
    server: Server,
    path: str,
    body: str,
    connections: int,
    seconds: float,
    charge_cpu: bool,
) -> Sample:
    drive(loadgen, server.socket, path, connections, 0.3)  # warm up: connections, caches
    pids = server.pids()
    before = cpu_seconds(pids)
    result = drive(loadgen, server.socket, path, connections, seconds)
    spent = cpu_seconds(pids) - before
    requests = result["requests"]
    cpu = spent / requests * 1e6 if charge_cpu and requests else None
    return Sample(
        leg,
        body,
        connections,
        result["rps"],
        int(result["p50_us"]),
        int(result["p99_us"]),
        cpu,
        int(result["errors"]),
    )


@contextlib.contextmanager
def legs(work: Path) -> Iterator[dict[str, tuple[Server, str, bool]]]:
    """leg -> (server, path prefix, whether its CPU is the proxy's)."""
    with (
        upstream(work / "upstream") as (origin, port),
        bureau_proxy(work / "bureau", port) as ours,
        nginx_proxy(work / "nginx-proxy", port) as theirs,
    ):
        yield {
            "direct": (origin, "", False),
            "bureau-proxy": (ours, "/http/api", True),
            "nginx-proxy": (theirs, "/http/api", True),
        }


def run(loadgen: Path, work: Path, rounds: int, seconds: float) -> list[Sample]:
    """Every sample of every round; ``summarize`` takes the medians."""
    samples = []
    cases = [("small", "/small", c) for c in CONCURRENCY] + [("64KiB", "/big", BIG_CONCURRENCY)]
    with legs(work) as running:
        names = list(running)
        for round_index in range(rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for body, path, connections in cases:
                for leg in order:
                    server, prefix, charge = running[leg]
                    samples.append(
                        measure(
                            loadgen, leg, server, prefix + path, body, connections, seconds, charge
                        )
                    )
    return samples


def summarize(samples: list[Sample]) -> list[dict[str, object]]:
    groups: dict[tuple[str, str, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.leg, sample.body, sample.concurrency), []).append(sample)
    rows = []
    for (leg, body, connections), group in groups.items():
        cpu = [s.cpu_us_per_request for s in group if s.cpu_us_per_request is not None]
        rows.append(
            {
                "leg": leg,
                "body": body,
                "concurrency": connections,
                "rounds": len(group),
                "rps": statistics.median(s.rps for s in group),
                "p50_us": statistics.median(s.p50_us for s in group),
                "p99_us": statistics.median(s.p99_us for s in group),
                "cpu_us_per_request": statistics.median(cpu) if cpu else None,
                "errors": sum(s.errors for s in group),
            }
        )
    return rows


def as_json(samples: list[Sample]) -> list[dict[str, object]]:
    return [asdict(s) for s in samples]
