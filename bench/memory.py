"""Memory per principal: PSS and RSS of a real launcher and everything it runs (the proxy
template and one proxy per principal) with 1, 10 and 50 principals, the cost of each
additional principal, and an idle nginx (master and worker) for scale. PSS splits shared
pages among the processes sharing them, so it is what N principals really cost together.

The launcher is enrolled against the fleet benchmark's hub; principals are started the way
the daemon starts them, with an "ensure" request carrying a credentials event encrypted
for the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from harness import machine_args, route, service
from hub_fleet import Fleet
from launcher_proc import UNSIGNED, kill_proxies_under
from machine_helpers import Enrolled
from processes import BIN
from servers import upstream

from bureau.daemon.launcher_client import LauncherClient
from bureau.operator import credentials
from bureau.operator.principal_credentials import (
    CredentialRequest,
    build_event,
    machine_public_key,
)
from bureau.secret import Secret
from bureau.wire import names
from bureau.wire.launcher_protocol import RelayedCredentials

COUNTS = (1, 10, 50)


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB from /proc/<pid>/smaps_rollup."""
    pss = rss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
    return pss, rss


def tree(root: int) -> list[int]:
    """root and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def total_mib(pids: list[int]) -> tuple[float, float]:
    pss = rss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            p, r = memory_kib(pid)
            pss, rss = pss + p, rss + r
    return pss / 1024, rss / 1024


def run(fleet: Fleet, enrolled: Enrolled, work: Path) -> dict[str, Any]:
    """``enrolled``: a machine past its first boot, for the launcher to run as."""
    with upstream(work / "upstream") as (origin, port):
        nginx_pss, nginx_rss = total_mib(origin.pids())
        result = _measure(fleet, enrolled, work, port)
    return {**result, "nginx_pss_mib": nginx_pss, "nginx_rss_mib": nginx_rss}


def _measure(fleet: Fleet, enrolled: Enrolled, work: Path, port: int) -> dict[str, Any]:
    creds = fleet.creds
    machine = enrolled.machine.localpart
    key = machine_public_key(credentials.admin_client(creds), creds, machine)
    service_route = route(f"http://127.0.0.1:{port}")
    events = []
    for index in range(max(COUNTS)):
        principal = f"{fleet.name}/agent/mem{index}"
        request = CredentialRequest(
            machine=machine,
            principal=principal,
            services={"api": service_route},
            secrets={"TOKEN": Secret(f"memory-bench-{index}")},
            services_where="bench",
        )
        event = build_event(request, creds, key, None)
        events.append((names.user_id(principal, creds.server_name), event.to_json()))
    rows = []
    for count in COUNTS:
        run_dir = work / f"run{count}"
        # The bench hands the launcher its own requests (no signed assignment), as tests do.
        argv = [str(BIN / "bureau-launcher"), *machine_args(enrolled, run_dir), *UNSIGNED]
        notify, log = work / f"launcher{count}.notify", work / f"launcher{count}.log"
        try:
            with service(argv, notify, log) as (launcher, _):
                client = LauncherClient(run_dir / "launcher.sock")
                for principal, content in events[:count]:
                    relayed = RelayedCredentials.from_json(content)
                    asyncio.run(client.ensure(names.PrincipalRef.from_user_id(principal), relayed))
                time.sleep(1.0)  # let start-up garbage settle
                pids = tree(launcher.pid)
                pss, rss = total_mib(pids)
                rows.append({"principals": count, "pss_mib": pss, "rss_mib": rss,
                             "processes": len(pids)})  # fmt: skip
        finally:
            # Proxies outlive a launcher on purpose; the benchmark is done with them.
            kill_proxies_under(run_dir)
    first, last = rows[0], rows[-1]
    per_principal = (float(last["pss_mib"]) - float(first["pss_mib"])) / (
        int(last["principals"]) - int(first["principals"])
    )
    return {"rows": rows, "pss_per_additional_principal_mib": per_principal}
