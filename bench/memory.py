"""Memory per principal: PSS and RSS of 1, 10 and 50 bureau-proxy processes (one per
principal, as the launcher runs them), the cost of each additional principal, and an idle
nginx worker for scale. PSS splits shared pages among the processes sharing them, so it is
what N principals really cost together."""

from __future__ import annotations

import contextlib
from pathlib import Path

from servers import Server, bureau_proxy, upstream

COUNTS = (1, 10, 50)
MIB = 1024 * 1024


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB from /proc/<pid>/smaps_rollup."""
    pss = rss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
    return pss, rss


def total_mib(servers: list[Server]) -> tuple[float, float]:
    pss = rss = 0
    for server in servers:
        for pid in server.pids():
            p, r = memory_kib(pid)
            pss, rss = pss + p, rss + r
    return pss / 1024, rss / 1024


def run(work: Path) -> dict[str, object]:
    rows = []
    with upstream(work / "upstream") as (origin, port):
        nginx_pss, nginx_rss = total_mib([origin])
        for count in COUNTS:
            with contextlib.ExitStack() as stack:
                proxies = [
                    stack.enter_context(bureau_proxy(work / f"p{count}-{i}", port))
                    for i in range(count)
                ]
                pss, rss = total_mib(proxies)
                rows.append({"principals": count, "pss_mib": pss, "rss_mib": rss})
    first, last = rows[0], rows[-1]
    per_principal = (float(last["pss_mib"]) - float(first["pss_mib"])) / (
        int(last["principals"]) - int(first["principals"])
    )
    return {
        "rows": rows,
        "pss_per_additional_principal_mib": per_principal,
        "nginx_pss_mib": nginx_pss,
        "nginx_rss_mib": nginx_rss,
    }
