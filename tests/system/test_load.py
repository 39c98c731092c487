"""Load: 50 principals on one worker with requests flowing through every proxy, then 200
credential updates in 10 s, with duplicates and publishers racing each other and clocks
running backwards. Every principal ends on the value the homeserver holds last, no request
ever sees a half-rotated bundle, none fails, and the machine's processes, descriptors and
memory (launcher, proxy template, daemon) come back to where they were.

The operator side publishes through tests/publisher.py (bureau.operator directly)
so that 250 publications cost milliseconds each, not a CLI start."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet
from launcher_proc import daemon, launcher, proxies_under, template_of
from machine_helpers import enroll, eventually, masked, proxy_socket, served_headers
from processes import echo_received, echo_upstream, unix_request
from publisher import Publisher

PRINCIPALS = [f"agent/p{i:02d}" for i in range(50)]
UPDATES = 200
SECONDS = 10.0


class Clients:
    """Threads sending requests round the 50 proxies as fast as they answer, checking each
    answer is whole: the token and the generation come from the same bundle, and from
    this principal's."""

    def __init__(self, run_dir: Path, threads: int = 4) -> None:
        self._run_dir = run_dir
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(threads)]
        self.answered = 0
        self.failures: list[str] = []
        self.torn: list[str] = []

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _loop(self, offset: int) -> None:
        for principal in itertools.islice(itertools.cycle(PRINCIPALS), offset * 13, None):
            if self._stop.is_set():
                return
            try:
                request_id = uuid.uuid4().hex
                reply = unix_request(
                    proxy_socket(self._run_dir, principal),
                    "GET",
                    "/http/api/x",
                    headers={"X-Request-Id": request_id},
                    timeout=10,
                )
            except OSError as exc:
                self.failures.append(f"{principal}: {exc}")
                continue
            if reply.status != 200:
                self.failures.append(f"{principal}: {reply.status}")
                continue
            # What the upstream received (its record); the workload saw it as `*`s.
            received = echo_received(request_id)
            if received is None or reply.json()["headers"] != masked(received["headers"]):
                self.failures.append(f"{principal}: not recorded, or the workload saw it")
                continue
            headers = received["headers"]
            generation = headers.get("x-generation", "")
            whole = headers.get("authorization") == f"Bearer {generation}-tok"
            if not (whole and generation.startswith(principal.replace("/", "-") + "-")):
                self.torn.append(f"{principal}: {headers.get('authorization')} / {generation}")
            self.answered += 1


def _generation(principal: str, n: int, suffix: str = "") -> str:
    return f"{principal.replace('/', '-')}-g{n}{suffix}"


def _served(run_dir: Path, principal: str) -> str | None:
    headers = served_headers(proxy_socket(run_dir, principal))
    return None if headers is None else headers.get("x-generation")


def _mismatched(run_dir: Path, wanted: dict[str, str]) -> dict[str, tuple[str | None, str]]:
    served = {p: _served(run_dir, p) for p in wanted}
    return {p: (served[p], wanted[p]) for p in wanted if served[p] != wanted[p]}


def _footprint(pid: int) -> tuple[int, int]:
    """(open descriptors, resident KiB) of one process."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return fds, rss


def _storm(publisher: Publisher) -> None:
    """200 publications, one every 50 ms, from 8 threads, so that some for the same
    principal are in flight at once and land in whichever order the homeserver takes them.
    Every fifth is the same content again; every seventh is provisioned with a clock an hour
    behind the one before it."""
    plan: list[tuple[str, dict[str, Any]]] = []
    latest: dict[str, dict[str, Any]] = {}
    for k in range(UPDATES):
        principal = PRINCIPALS[(k * 7) % len(PRINCIPALS)]
        if k % 5 == 4 and principal in latest:
            content = latest[principal]  # a duplicate, byte for byte
        else:
            skewed = datetime.now(UTC) - timedelta(hours=1) if k % 7 == 6 else None
            content = publisher.build(principal, _generation(principal, k + 1), skewed)
        latest[principal] = content
        plan.append((principal, content))
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = []
        for k, (principal, content) in enumerate(plan):
            delay = started + k * SECONDS / UPDATES - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(publisher.put, principal, content))
        for future in futures:
            future.result()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fifty_principals_and_two_hundred_updates(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    with (
        echo_upstream() as upstream,
        launcher(name, state, run_dir) as the_launcher,
    ):
        publisher = Publisher(fleet, machine, upstream)
        for principal in PRINCIPALS:
            publisher.put(principal, publisher.build(principal, _generation(principal, 0)))
        publisher.assign(PRINCIPALS)
        with daemon(name, state, run_dir) as the_daemon:
            for principal in PRINCIPALS:
                expected = _generation(principal, 0)
                eventually(lambda p=principal, e=expected: _served(run_dir, p) == e, 120)
            assert len(proxies_under(run_dir)) == len(PRINCIPALS)
            pids = (the_launcher.proc.pid, template_of(the_launcher.proc.pid), the_daemon.proc.pid)

            with Clients(run_dir) as clients:
                time.sleep(1)  # every descriptor a client load needs is open
                before = {pid: _footprint(pid) for pid in pids}
                answered_before = clients.answered
                _storm(publisher)
                wanted = {p: publisher.current(p) for p in PRINCIPALS}
                deadline = time.monotonic() + 60
                while (wrong := _mismatched(run_dir, wanted)) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert wrong == {}, "(served, last published)"
                # Retired proxies finish their requests and go: one proxy per principal.
                eventually(lambda: len(proxies_under(run_dir)) == len(PRINCIPALS), 30)
                time.sleep(1)
                after = {pid: _footprint(pid) for pid in pids}
            during = clients.answered - answered_before

        assert clients.torn == []
        assert clients.failures == []
        assert during > UPDATES, f"only {during} requests went through during the updates"
        # Nothing accumulates per update: the same descriptors (a few for requests in
        # flight) and the same memory give or take allocator noise.
        for pid in pids:
            (fds_before, rss_before), (fds_after, rss_after) = before[pid], after[pid]
            assert fds_after <= fds_before + 4, (pid, fds_before, fds_after)
            assert rss_after <= rss_before + 16 * 1024, (pid, rss_before, rss_after)
        temporaries = [p for p in run_dir.rglob(".*") if ".proxy.sock." in p.name]
        assert temporaries == []
        replaced = the_launcher.log().count("proxy replaced (credentials changed)")
        distinct = len(publisher.generation_of) - len(PRINCIPALS)
        # Each distinct new bundle replaces a proxy at most once; duplicates replace none.
        assert 0 < replaced <= distinct
        assert "Traceback" not in the_launcher.log()
        assert "Traceback" not in the_daemon.log()
    summary = {
        "requests during updates": during,
        "proxies replaced": replaced,
        "fds and RSS KiB before/after": {pid: (before[pid], after[pid]) for pid in pids},
    }
    print(json.dumps(summary))
