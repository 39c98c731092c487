"""Sandboxed principals (bubblewrap, started as the principal's own uid by
bureau-sandboxd at the launcher's request, as the units run them), against the fleet
benchmark's hub:

- start: from an assignment published (``assignments.assign`` returned, so the PUT of the
  machine's config was answered) to the principal running, on one worker with a real
  launcher and daemon. Two legs, interleaved, each start undone (unassigned, gone from the
  launcher's list, and QUIET seconds for the daemon's heartbeat) before the next:
  - proxy only (an assignment without a template, as before sandboxes): running is its
    proxy serving, i.e. its socket is in place and a request through it is answered by
    the upstream;
  - sandboxed (template ``bench-marker``: agent-base running
    ``/bin/sh -c ': > /workspace/running; exec /bin/sleep infinity'``): running is that
    marker in its workspace, written by the workload itself inside the sandbox. Its proxy
    serving is recorded too, by the same check as the proxy-only leg.
  Both are seen by the same loop, which stats the socket and the marker every millisecond;
  the launcher's log ("proxy started", "sandbox started") splits each start into its steps.
- memory: N sandboxed principals (1 and 10) running ``/bin/sleep infinity``, started on a
  launcher of their own (hosting them itself, so that they are in its process tree)
  through its socket as the daemon does (no daemon), and the PSS of
  each process a sandbox adds beyond its workload: its keeper (``setsid --fork --wait``,
  bwrap's parent, where the launcher has one), bwrap's outer process, bwrap's inner one
  (pid 1 of the sandbox), the log relay and the principal's proxy. The same launcher times
  its own answers: a proxy alone, then the sandbox added beside that running proxy; and
  bubblewrap alone, with a running sandbox's own arguments and the marker command, is
  timed for the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import FLEET, first_boot, machine_args, route, service
from hub_fleet import Fleet
from launcher_proc import UNSIGNED, kill_proxies_under
from machine_helpers import served_headers
from memory import memory_kib, tree
from processes import BIN, echo_upstream
from sandbox_helpers import kill_sandboxes_under, workspace_of

from bureau.daemon.launcher_client import LauncherClient
from bureau.launcher import seccomp
from bureau.operator import assignments, credentials, templates
from bureau.operator.principal_credentials import (
    CredentialRequest,
    build_event,
    machine_public_key,
    provision,
)
from bureau.secret import Secret
from bureau.template_resolve import resolve
from bureau.wire import names
from bureau.wire.files import OperatorCredentials
from bureau.wire.launcher_protocol import RelayedCredentials
from bureau.wire.sandbox_spec import SandboxSpec
from bureau.wire.service_route import ServiceRoute
from bureau.wire.template import Template

MARKER = "running"
MARKER_COMMAND = ["/bin/sh", "-c", f": > /workspace/{MARKER}; exec /bin/sleep infinity"]
SLEEP_COMMAND = ["/bin/sleep", "infinity"]
MEMORY_COUNTS = (1, 10)
KINDS = ("keeper", "bwrap outer", "bwrap inner", "log relay", "proxy")
POLL = 0.001
BARE_RUNS = 10
QUIET = 0.5
SETTLE = 1.0  # seconds for start-up garbage to settle before memory is read
# Sandbox uids of the bench's own (--sandbox-uids), apart from the default range that any
# other launcher on this host uses (a worker, tests, the demo): one uid is one principal's,
# and a launcher that shares its uids with another may end or count the other's processes.
START_UIDS = "2100000000-2100000999"
MEMORY_UIDS = "2100001000-2100001999"
# The descriptor bare bwrap reads the sandbox's seccomp filter from (a pipe of its own).
SECCOMP_FD = "90"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _stats_ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(values) * 1000,
        "p90_ms": _quantile(values, 0.9) * 1000,
    }


def _push_template(creds: OperatorCredentials, name: str, command: list[str]) -> str:
    admin = credentials.admin_client(creds)
    base = str(templates.namespace_ref(creds, "agent-base"))
    template = Template.from_json({"inherits": [base], "command": command}, name)
    templates.push(admin, creds, name, template)
    return str(templates.namespace_ref(creds, name))


def _request(machine: str, principal: str, service_route: ServiceRoute) -> CredentialRequest:
    return CredentialRequest(
        machine=machine,
        principal=principal,
        services={"api": service_route},
        secrets={"TOKEN": Secret(f"sandbox-bench-{principal.rsplit('/', 1)[1]}")},
        services_where="bench",
    )


def _serves(sock: Path) -> bool:
    """Whether a request through the proxy on ``sock`` is answered by the upstream."""
    return served_headers(sock) is not None


def _log_times(log: Path) -> dict[tuple[str, str], float]:
    """(event, principal) -> when it was first logged (epoch seconds), from JSON lines."""
    found: dict[tuple[str, str], float] = {}
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            key = (str(entry["event"]), str(entry["principal"]))
            when = datetime.fromisoformat(entry["timestamp"]).timestamp()
            found.setdefault(key, when)
    return found


def _listed(client: LauncherClient) -> set[str]:
    return {p.principal.user_id for p in asyncio.run(client.list())}


def _one_start(
    creds: OperatorCredentials,
    machine: str,
    run_dir: Path,
    sandbox_dir: Path,
    client: LauncherClient,
    principal: str,
    template: str | None,
) -> dict[str, Any]:
    """Assign, wait until running, unassign, wait until gone. Times from the assignment
    published: proxy serving and (with a template) the workload's marker; wall clock of
    the same moment, for the logs."""
    user = names.user_id(principal, creds.server_name)
    sock = run_dir / names.proxy_socket_relpath(principal)
    marker = workspace_of(sandbox_dir, user) / MARKER
    overrides = {"template": template} if template else {}
    assignments.assign(creds, machine, principal, auto_start=True, **overrides)
    published, published_wall = time.monotonic(), time.time()
    serving = running = None
    deadline = published + 60
    while running is None:
        seen = time.monotonic()
        if serving is None and sock.exists() and _serves(sock):
            serving = seen
            if template is None:
                running = seen
        if template is not None and running is None and marker.exists():
            running = seen
        if seen > deadline:
            raise RuntimeError(f"{principal} not running 60 s after its assignment")
        time.sleep(POLL)
    if serving is None:  # the marker came first: the proxy must serve by now
        if not _serves(sock):
            raise RuntimeError(f"{principal}'s workload runs but its proxy does not serve")
        serving = running
    assignments.unassign(creds, machine, principal)
    while user in _listed(client):
        if time.monotonic() > deadline + 60:
            raise RuntimeError(f"{principal} still listed 60 s after its unassignment")
        time.sleep(0.05)
    time.sleep(QUIET)  # the daemon's heartbeat for the stop goes out before the next start
    return {
        "user": user,
        "published_wall": published_wall,
        "serving_s": serving - published,
        "running_s": running - published,
    }


def _passable(work: Path) -> None:
    """bwrap sets a sandbox up as the sandbox's uid, which must pass through (o+x) to the
    workspaces and the run dir, as under /var/lib and /run."""
    work.chmod(work.stat().st_mode | 0o111)


def _log_tails(*logs: Path) -> str:
    return "\n".join(
        f"{log.name}: {line}"
        for log in logs
        if log.exists()
        for line in log.read_text().splitlines()[-5:]
    )


def run_start(fleet: Fleet, work: Path, starts: int) -> dict[str, Any]:
    creds = fleet.creds
    _, _, enrolled = first_boot(fleet, work, "sbx")
    machine, state = enrolled.machine.localpart, enrolled.state_dir
    _passable(work)
    run_dir = work / "sbx-run"
    run_dir.mkdir(mode=0o751)
    run_dir.chmod(0o751)  # the sandbox's uid passes through to its socket link
    sandbox_dir = work / "sbx-sandbox"
    ref = _push_template(creds, "bench-marker", MARKER_COMMAND)
    legs = {"proxy": None, "sandbox": ref}
    principals = {leg: [f"{FLEET}/agent/{leg}{i}" for i in range(starts)] for leg in legs}
    samples: dict[str, list[dict[str, Any]]] = {leg: [] for leg in legs}
    logs = work / "sbx-logs"
    logs.mkdir()
    common = machine_args(enrolled, run_dir)
    # As the units run them: bureau-sandboxd starts the sandboxes, the launcher asks it.
    sandboxd = ["unshare", "--net", str(BIN / "bureau-sandboxd"), "--fleet", FLEET,
                "--server-name", creds.server_name, "--state-dir", str(state),
                "--run-dir", str(run_dir), "--sandbox-dir", str(sandbox_dir),
                "--sandbox-uids", START_UIDS]  # fmt: skip
    launcher = [str(BIN / "bureau-launcher"), *common,
                "--sandbox-broker", str(run_dir / "sandboxd" / "sandboxd.sock")]  # fmt: skip
    try:
        with echo_upstream() as upstream:
            service_route = route(upstream)
            everyone = [p for leg in legs for p in principals[leg]]
            with ThreadPoolExecutor(4) as pool:
                requests = [_request(machine, p, service_route) for p in everyone]
                list(pool.map(lambda request: provision(creds, request), requests))
            with (
                service(sandboxd, logs / "s.notify", logs / "sandboxd.log"),
                service(launcher, logs / "l.notify", logs / "launcher.log"),
                service([str(BIN / "bureau-daemon"), *common], logs / "d.notify",
                        logs / "daemon.log"),
            ):  # fmt: skip
                client = LauncherClient(run_dir / "launcher.sock")
                for index in range(starts):
                    order = list(legs) if index % 2 == 0 else list(reversed(legs))
                    for leg in order:
                        try:
                            sample = _one_start(creds, machine, run_dir, sandbox_dir, client,
                                                principals[leg][index], legs[leg])  # fmt: skip
                        except RuntimeError as exc:
                            tails = _log_tails(logs / "daemon.log", logs / "launcher.log")
                            raise RuntimeError(f"{exc}; the logs end:\n{tails}") from None
                        samples[leg].append(sample)
    finally:
        _kill_sandboxes(run_dir)
    return _summarize_starts(samples, _log_times(logs / "launcher.log"))


def _summarize_starts(
    samples: dict[str, list[dict[str, Any]]], logged: dict[tuple[str, str], float]
) -> dict[str, Any]:
    def since_published(event: str, leg: str) -> list[float]:
        return [logged[(event, s["user"])] - s["published_wall"] for s in samples[leg]]

    proxy, sandbox = samples["proxy"], samples["sandbox"]
    proxy_running = [s["running_s"] for s in proxy]
    sandbox_running = [s["running_s"] for s in sandbox]
    proxy_logged = since_published("proxy started", "sandbox")
    sandbox_logged = since_published("sandbox started", "sandbox")
    return {
        "starts": len(proxy),
        "proxy_only": {
            "running": _stats_ms(proxy_running),
            "proxy_started_logged": _stats_ms(since_published("proxy started", "proxy")),
        },
        "sandboxed": {
            "running": _stats_ms(sandbox_running),
            "proxy_serving": _stats_ms([s["serving_s"] for s in sandbox]),
            "proxy_started_logged": _stats_ms(proxy_logged),
            "sandbox_started_logged": _stats_ms(sandbox_logged),
            # Medians of each start's own steps. The marker can come before the launcher
            # logs "sandbox started" (logged once bwrap is unblocked and recorded).
            "steps_ms": {
                "published to proxy started (logged)": statistics.median(proxy_logged) * 1000,
                "proxy started to workload's marker": statistics.median(
                    r - p for r, p in zip(sandbox_running, proxy_logged, strict=True)
                )
                * 1000,
            },
        },
        "ratio_median": statistics.median(sandbox_running) / statistics.median(proxy_running),
        "ratio_p90": _quantile(sandbox_running, 0.9) / _quantile(proxy_running, 0.9),
        "samples_ms": {
            leg: [round(s["running_s"] * 1000, 1) for s in samples[leg]] for leg in samples
        },
    }


# -- memory ------------------------------------------------------------------------------


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def _kinds(client: LauncherClient, launcher_pid: int) -> dict[str, dict[str, int]]:
    """principal -> process kind -> pid, for every sandboxed principal the launcher lists.
    A launcher that starts bwrap under a keeper (``setsid --fork --wait``) adds that one."""
    relays = {}
    for pid in tree(launcher_pid):
        with contextlib.suppress(OSError):
            argv = _argv(pid)
            if argv[0] == b"bureau-sandbox-log":
                relays[argv[1].decode()] = pid
    found = {}
    for listed in asyncio.run(client.list()):
        if listed.sandbox is None or not listed.sandbox.pid:
            raise RuntimeError(f"{listed.principal}: no workload running")
        workload = listed.sandbox.pid
        inner = _parent(workload)
        outer = _parent(inner)
        if (_comm(workload), _comm(inner), _comm(outer)) != ("sleep", "bwrap", "bwrap"):
            raise RuntimeError(f"{listed.principal}: not sleep under two bwraps")
        pids = {
            "bwrap outer": outer,
            "bwrap inner": inner,
            "log relay": relays[listed.principal.user_id],
            "proxy": listed.pid,
            "workload": workload,
        }
        if _comm(_parent(outer)) == "setsid":
            pids["keeper"] = _parent(outer)
        found[listed.principal.user_id] = pids
    return found


def _sum_kib(pids: list[int]) -> tuple[int, int]:
    pss = rss = 0
    for pid in pids:
        p, r = memory_kib(pid)
        pss, rss = pss + p, rss + r
    return pss, rss


def _measure_memory(
    count: int,
    state: Path,
    work: Path,
    events: list[tuple[str, dict[str, Any]]],
    spec: dict[str, Any],
) -> tuple[dict[str, Any], list[float], list[float], list[str]]:
    run_dir = work / f"sbx-mem-run{count}"
    run_dir.mkdir(mode=0o751)
    run_dir.chmod(0o751)
    # The launcher hosts the sandboxes itself here (no --sandbox-broker), so that every
    # process of theirs is in its tree; each sandbox's processes are the same either way.
    # It is handed its own ensure requests (no signed assignment), as tests do: unsigned.
    argv = [str(BIN / "bureau-launcher"), "--machine-name", "machine/sbxmem", "--state-dir",
            str(state), "--run-dir", str(run_dir), "--sandbox-dir",
            str(work / f"sbx-mem-sandbox{count}"), "--sandbox-uids", MEMORY_UIDS,
            *UNSIGNED]  # fmt: skip
    proxy_s, sandbox_s = [], []
    with service(argv, work / f"sbx-mem{count}.notify", work / f"sbx-mem{count}.log") as (
        launcher,
        _,
    ):
        client = LauncherClient(run_dir / "launcher.sock")
        try:
            sandbox = SandboxSpec.from_json(spec)
            for principal, content in events[:count]:
                ref = names.PrincipalRef.from_user_id(principal)
                relayed = RelayedCredentials.from_json(content)
                started = time.monotonic()
                asyncio.run(client.ensure(ref, relayed))
                proxy_s.append(time.monotonic() - started)
                started = time.monotonic()
                asyncio.run(client.ensure(ref, relayed, sandbox))
                sandbox_s.append(time.monotonic() - started)
            time.sleep(SETTLE)
            kinds = _kinds(client, launcher.pid)
            first = next(iter(kinds.values()))
            # The keeper's command line is the whole command (it forks, never executes).
            started_as = first.get("keeper", first["bwrap outer"])
            bwrap_argv = [a.decode() for a in _argv(started_as)[:-1]]  # it ends with a NUL
            if len(kinds) != count:
                raise RuntimeError(f"{len(kinds)} sandboxes listed, {count} started")
            per_kind = {}
            for kind in (*KINDS, "workload"):
                found = [pids[kind] for pids in kinds.values() if kind in pids]
                pss, rss = _sum_kib(found)
                per_kind[kind] = {"pss_kib": pss, "rss_kib": rss, "processes": len(found)}
            ours = {pid for pids in kinds.values() for kind, pid in pids.items() if kind in KINDS}
            workloads = {pids["workload"] for pids in kinds.values()}
            rest = [p for p in tree(launcher.pid) if p not in ours | workloads]
            launcher_pss, _ = _sum_kib(rest)  # the launcher and the proxy template
        finally:
            for principal, _content in events[:count]:
                with contextlib.suppress(Exception):
                    asyncio.run(client.stop(names.PrincipalRef.from_user_id(principal)))
            _kill_sandboxes(run_dir)
    row = {"principals": count, "kinds": per_kind, "launcher_and_template_pss_kib": launcher_pss}
    return row, proxy_s, sandbox_s, bwrap_argv


def run_memory(fleet: Fleet, work: Path) -> dict[str, Any]:
    creds = fleet.creds
    _, _, enrolled = first_boot(fleet, work, "sbxmem")
    machine, state = enrolled.machine.localpart, enrolled.state_dir
    _passable(work)
    admin = credentials.admin_client(creds)
    ref = _push_template(creds, "bench-sleep", SLEEP_COMMAND)
    resolved = resolve(
        templates.namespace_ref(creds, "bench-sleep"), templates.fetcher(admin, creds)
    )
    # As the daemon sends it.
    spec = SandboxSpec.from_template(ref, resolved.template).to_json()
    key = machine_public_key(admin, creds, machine)
    rows = []
    proxy_s: list[float] = []
    sandbox_s: list[float] = []
    with echo_upstream() as upstream:
        events = []
        for index in range(max(MEMORY_COUNTS)):
            principal = f"{FLEET}/agent/mem{index}"
            request = _request(machine, principal, route(upstream))
            event = build_event(request, creds, key, None)
            events.append((names.user_id(principal, creds.server_name), event.to_json()))
        for count in MEMORY_COUNTS:
            row, proxies, sandboxes, bwrap_argv = _measure_memory(count, state, work, events, spec)
            rows.append(row)
            proxy_s += proxies
            sandbox_s += sandboxes
    first, last = rows[0], rows[-1]
    added = last["principals"] - first["principals"]

    def mib(kib: float) -> float:
        return kib / 1024

    table: dict[str, dict[str, Any]] = {}
    for kind in (*KINDS, "workload"):
        a, b = first["kinds"][kind], last["kinds"][kind]
        table[kind] = {
            "pss_each_mib": {
                str(r["principals"]): mib(r["kinds"][kind]["pss_kib"] / r["principals"])
                for r in rows
            },
            "rss_each_mib": {
                str(r["principals"]): mib(r["kinds"][kind]["rss_kib"] / r["principals"])
                for r in rows
            },
            "pss_per_additional_mib": mib((b["pss_kib"] - a["pss_kib"]) / added),
            "processes_each": b["processes"] / last["principals"],
        }
    total = sum(float(table[kind]["pss_per_additional_mib"]) for kind in KINDS)
    return {
        "rows": rows,
        "kinds": table,
        "pss_per_additional_principal_mib": total,
        "launcher_and_template_pss_mib": {
            str(r["principals"]): mib(r["launcher_and_template_pss_kib"]) for r in rows
        },
        "ensure_proxy": _stats_ms(proxy_s),
        "ensure_sandbox": _stats_ms(sandbox_s),
        "ensures": len(proxy_s),
        "bare_bwrap": _stats_ms(bare_bwrap(work, BARE_RUNS, bwrap_argv)),
        "bare_bwrap_runs": BARE_RUNS,
    }


def _bare_argv(argv: list[str], workspace: Path, sockets: Path) -> list[str]:
    """What the launcher ran for a sandbox (its keeper's or bwrap's /proc cmdline) for
    bwrap alone: the same namespaces, mounts and environment, the workspace and socket
    directory by path instead of by descriptor, no launcher handshake (--block-fd,
    --json-status-fd, --info-fd), the seccomp filter from a pipe, and the marker command.
    Whatever ran bwrap (the keeper, prlimit) stays as it was; without it, prlimit as the
    launcher runs it."""
    at = next(i for i, arg in enumerate(argv) if Path(arg).name == "bwrap")
    before = argv[:at] or ["prlimit", "--nproc=516", "--nofile=4096", "--core=0", "--"]
    out: list[str] = []
    args = iter(argv[at : argv.index("--", at)])
    for arg in args:
        if arg in ("--bind-fd", "--ro-bind-fd"):
            next(args)
            source = workspace if arg == "--bind-fd" else sockets
            out += [arg.removesuffix("-fd"), str(source), next(args)]
        elif arg in ("--block-fd", "--json-status-fd", "--info-fd"):
            next(args)
        elif arg == "--seccomp":  # the same filter, from a pipe of bare_bwrap's
            next(args)
            out += [arg, SECCOMP_FD]
        else:
            out.append(arg)
    return [*before, *out, "--", *MARKER_COMMAND]


def bare_bwrap(work: Path, runs: int, argv: list[str]) -> list[float]:
    """Seconds from starting bubblewrap alone (as the launcher ran it for a sandbox: ``argv``,
    see _bare_argv; as a sandbox uid of the bench's) to the marker written: the floor under
    a sandbox's start."""
    uid = int(MEMORY_UIDS.split("-")[1])  # never a principal's here: they count up from the first
    box, sockets = work / "bare-bwrap", work / "bare-bwrap-sockets"
    for directory in (box, sockets):
        directory.mkdir(mode=0o700)
        os.chown(directory, uid, uid)
    command = _bare_argv(argv, box, sockets)
    marker = box / MARKER
    took = []
    for _ in range(runs):
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        program = seccomp.program()
        read_end, write_end = os.pipe()
        os.write(write_end, program or b"")
        os.close(write_end)
        os.dup2(read_end, int(SECCOMP_FD))
        os.close(read_end)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                command, user=uid, group=uid, extra_groups=[], cwd="/",
                stdin=subprocess.DEVNULL, env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
                pass_fds=(int(SECCOMP_FD),),
            )  # fmt: skip
        finally:
            os.close(int(SECCOMP_FD))
        try:
            while not marker.exists():
                if proc.poll() is not None or time.monotonic() > started + 30:
                    raise RuntimeError(f"bare bwrap wrote no marker (exit {proc.returncode})")
                time.sleep(POLL)
            took.append(time.monotonic() - started)
        finally:
            proc.kill()  # bwrap dies with its parent if --die-with-parent, and else:
            proc.wait(timeout=30)
            _kill_uid(uid)
    return took


def _kill_uid(uid: int) -> None:
    """What a bare bwrap left (without --die-with-parent its inner process outlives it)."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)


def _kill_sandboxes(run_dir: Path) -> None:
    """Whatever is left of a run dir's sandboxes and proxies (bwrap's inner process dies
    with its outer one; the log relay ends when they have)."""
    kill_sandboxes_under(run_dir)
    kill_proxies_under(run_dir)
