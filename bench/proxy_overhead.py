"""Proxy overhead: requests/s, p50/p99 latency and the proxy's CPU time per request (and
per MiB of response) for every proxy leg, measured side by side with one load generator:
direct to the upstream, through bureau-proxy, and through nginx and HAProxy configured as
the equivalent header-injecting reverse proxy, at concurrency 1, 16 and 64 and a 64 KiB
body at 16; then bureau's other credential kinds and response cleaning (kind_legs.py).
Medians of several rounds, the legs of each case interleaved within each round (their
order rotating from round to round) so that drift hits all of them alike."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import kind_legs
from servers import Case, bureau_proxy, haproxy_proxy, nginx_proxy, upstream

CONCURRENCY = (1, 16, 64)
BIG_CONCURRENCY = 16
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HEADER_LEGS = ("direct", "bureau-proxy", "nginx-proxy", "haproxy")


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
    cpu_us_per_mib: float | None = None  # per MiB of response body received
    mib_per_s: float = 0.0  # response body received
    system_us_per_request: float | None = None  # the kernel's part of cpu_us_per_request


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user and system) of these processes, all their threads."""
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes, all their threads."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def drive(loadgen: Path, case: Case, seconds: float) -> dict[str, float]:
    options = ["-m", case.method]
    if case.request_bytes is not None:
        options += ["-b", str(case.request_bytes)]
    where = [str(case.server.socket), case.path, str(case.concurrency), str(seconds)]
    result = subprocess.run(
        [str(loadgen), *options, *where, *case.headers],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    measured: dict[str, float] = json.loads(result.stdout)
    return measured


def measure(loadgen: Path, case: Case, seconds: float) -> Sample:
    drive(loadgen, case, 0.3)  # warm up: connections, caches, a token to mint
    pids = case.server.pids()
    user, system = cpu_split(pids)
    result = drive(loadgen, case, seconds)
    user_after, system_after = cpu_split(pids)
    spent = user_after - user + system_after - system
    requests = result["requests"]
    mib = result["bytes"] / (1 << 20)
    charged = case.charge_cpu and requests
    return Sample(
        case.leg,
        case.body,
        case.concurrency,
        result["rps"],
        int(result["p50_us"]),
        int(result["p99_us"]),
        spent / requests * 1e6 if charged else None,
        int(result["errors"]),
        spent / mib * 1e6 if charged and mib else None,
        mib / result["seconds"],
        (system_after - system) / requests * 1e6 if charged else None,
    )


@contextlib.contextmanager
def header_legs(work: Path) -> Iterator[tuple[list[list[Case]], int]]:
    """The header-injecting legs, one list per case, and the upstream's port."""
    with (
        upstream(work / "upstream") as (origin, port),
        bureau_proxy(work / "bureau", port) as ours,
        nginx_proxy(work / "nginx-proxy", port) as nginx,
        haproxy_proxy(work / "haproxy", port) as haproxy,
    ):
        running = {
            "direct": (origin, ""),
            "bureau-proxy": (ours, "/http/api"),
            "nginx-proxy": (nginx, "/http/api"),
            "haproxy": (haproxy, "/http/api"),
        }
        shapes = [("small", "/small", c) for c in CONCURRENCY]
        shapes.append(("64KiB", "/big", BIG_CONCURRENCY))
        groups = [
            [
                Case(leg, server, prefix + path, body, c, leg != "direct")
                for leg, (server, prefix) in running.items()
            ]
            for body, path, c in shapes
        ]
        yield groups, port


@dataclass
class Run:
    samples: list[Sample]
    unavailable: dict[str, str]  # leg -> why it was not measured
    notes: dict[str, Any]  # what the kind legs observed (token fetches, ...)


def run(loadgen: Path, work: Path, rounds: int, seconds: float) -> Run:
    """Every sample of every round; ``summarize`` takes the medians."""
    samples = []
    with header_legs(work) as (groups, port), kind_legs.legs(work, port) as kinds:
        small16 = next(g for g in groups if (g[0].body, g[0].concurrency) == ("small", 16))
        small16.extend(kinds.alongside_small)
        groups.extend(kinds.groups)
        unavailable = {}
        for group in groups:
            for case in list(group):
                reason = kinds.unavailable(case)
                if reason:
                    unavailable[case.leg] = reason
                    group.remove(case)
        for round_index in range(rounds):
            for group in groups:
                turn = round_index % len(group) if group else 0
                for case in group[turn:] + group[:turn]:
                    samples.append(measure(loadgen, case, seconds))
        notes = kinds.notes()
    return Run(samples, unavailable, notes)


def summarize(samples: list[Sample]) -> list[dict[str, object]]:
    groups: dict[tuple[str, str, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.leg, sample.body, sample.concurrency), []).append(sample)
    rows = []
    for (leg, body, connections), group in groups.items():
        cpu = [s.cpu_us_per_request for s in group if s.cpu_us_per_request is not None]
        per_mib = [s.cpu_us_per_mib for s in group if s.cpu_us_per_mib is not None]
        system = [s.system_us_per_request for s in group if s.system_us_per_request is not None]
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
                "cpu_us_per_mib": statistics.median(per_mib) if per_mib else None,
                "system_us_per_request": statistics.median(system) if system else None,
                "mib_per_s": statistics.median(s.mib_per_s for s in group),
                "errors": sum(s.errors for s in group),
            }
        )
    return rows


def as_json(samples: list[Sample]) -> list[dict[str, object]]:
    return [asdict(s) for s in samples]
