"""The units under a real systemd, where tests/deploy/test_units.py reads them as text: a
throwaway machine booted from this one's /usr (tests/support/nspawn.py says how it differs
from a real host), bureau installed in it by script/bootstrap-machine from wheels of this
working tree, enrolled against the test hub on the host's loopback, then one sandboxed
principal assigned with `bureau agent create`.

What this machine cannot show, and why (it is not asserted here):
- Sandboxes' cgroup limits. The host mounts the cgroup v1 controllers (a hybrid
  hierarchy); nspawn gives the container those hierarchies read-only and a unified one
  with no controller in it, so bureau-sandboxd's delegated cgroup (Delegate=yes, checked
  below: systemd hands it to the bureau user) can take no limit, and it says
  "cgroups none". On a cgroup v2 host the same test runs with limits.
- The loopback of bureau-sandboxd's own network namespace (PrivateNetwork=yes): nspawn
  withholds CAP_NET_ADMIN from a container sharing the host's network, so systemd cannot
  bring it up ("Failed to configure loopback network device, ignoring"). Nothing uses it:
  each sandbox brings up the loopback of a namespace of its own.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nspawn
import pytest
import wheelhouse
from hub_fleet import Fleet, RunningHub, make_fleet
from machine_helpers import provision, services_file
from processes import echo_authorizations, echo_upstream, run, stars
from sandbox_helpers import PROXY_CLIENT, python_template, wait_until, workspace_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SANDBOXD = "bureau-sandboxd.service"
LAUNCHER = "bureau-launcher.service"
DAEMON = "bureau-daemon.service"
UNITS = (SANDBOXD, LAUNCHER, DAEMON)
# Outside the default --sandbox-uids range, which the host's own tests hand out: the host
# sees the container's processes, and a host test ending its sandbox kills by uid.
SANDBOX_UIDS = (2_000_080_000, 2_000_080_999)
CANARY = "units-live-api-canary-31"
# The workload: its API through its proxy, over and over; how it fared in
# /workspace/beat.json, and each change of answer in its log (the journal).
WORKLOAD = (
    PROXY_CLIENT
    + r"""
import secrets
incarnation, answered, failed, last = secrets.token_hex(8), 0, 0, None
while True:
    try:
        status, api = call("GET", "/http/api/x")
        auth = api.get("headers", {}).get("authorization")
    except (OSError, ValueError) as exc:
        status, auth = type(exc).__name__, None
    answered, failed = answered + (status == 200), failed + (status != 200)
    if status != last:
        print(f"workload: the api answered {status}", flush=True)
        last = status
    with open("/workspace/.beat", "w") as f:
        json.dump({"incarnation": incarnation, "answered": answered, "failed": failed,
                   "status": status, "auth": auth}, f)
    os.rename("/workspace/.beat", "/workspace/beat.json")
    time.sleep(0.2)
"""
)


@dataclass(frozen=True)
class Worker:
    box: nspawn.Container
    principal: str  # its user ID
    workspace: str  # in the container

    def beat(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.box.path(f"{self.workspace}/beat.json").read_text()))
        except (OSError, ValueError):
            return None

    def serving(self, since: dict[str, Any] | None = None, seconds: float = 90) -> dict[str, Any]:
        """A beat three answers on from ``since`` (or from now), the last one a 200."""
        since = since or self.beat() or {"incarnation": None, "answered": 0}

        def on() -> dict[str, Any] | None:
            beat = self.beat()
            if beat is None or beat["status"] != 200:
                return None
            same = beat["incarnation"] == since["incarnation"]
            return beat if not same or beat["answered"] >= since["answered"] + 3 else None

        found: dict[str, Any] = wait_until(on, seconds, f"{self.principal} serving")
        return found

    def proxies(self) -> set[str]:
        """The container's bureau-proxy processes (the fork template's name differs)."""
        found = self.box.run("pgrep", "--euid=bureau", "--exact", "bureau-proxy").stdout
        return set(found.split())


def _install(box: nspawn.Container, bootstrap: Path, wheels: wheelhouse.Wheels) -> None:
    inside = box.path("/root/bootstrap.json")
    shutil.copyfile(bootstrap, inside)
    inside.chmod(0o600)
    # No Nix here (tests/deploy/test_scripts.py covers setup-nix); bureau from the wheels.
    env = {**wheels.pip_env(), "BUREAU_SOURCE": str(wheels.bureau)}
    script = REPO / "script" / "bootstrap-machine"
    args = ("--skip-nix", "--no-start", "/root/bootstrap.json")
    installed = box.run(script, *args, env=env, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # This machine's own option, as an operator gives it, before anything starts.
    conf = box.path("/etc/bureau/machine.conf")
    first, last = SANDBOX_UIDS
    conf.write_text(conf.read_text() + f"BUREAU_SANDBOX_OPTIONS=--sandbox-uids {first}-{last}\n")
    # Returns once each unit is active: for Type=notify, once it sent READY=1.
    started = box.run("systemctl", "start", DAEMON, timeout=600)
    units = [f"--unit={unit}" for unit in UNITS]
    journal = box.run("journalctl", "--no-pager", "--lines=60", *units).stdout
    assert started.returncode == 0, started.stderr + journal


def _assign(fleet: Fleet, machine: str, upstream: str, directory: Path) -> None:
    """`bureau agent create` of a principal running WORKLOAD on ``machine``."""
    credential_file = fleet.credential_file
    namespace = fleet.name.split("/")[0]
    template = directory / "worker.json"
    body = python_template(f"{namespace}/template:agent-base", WORKLOAD)
    template.write_text(json.dumps(body | {"required_credentials": ["API_TOKEN"]}))
    pushed = run("bureau", "template", "push", template, "--name", "worker",
                 "--credential-file", credential_file)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    created = run("bureau", "agent", "create", "worker", "--machine", machine,
                  "--name", "agent/worker", "--services", services_file(directory, upstream),
                  "--secrets-file", "-", "--credential-file", credential_file,
                  stdin=f"API_TOKEN={CANARY}\nTOKEN={CANARY}\n")  # fmt: skip
    assert created.returncode == 0, created.stderr


@pytest.fixture(scope="module")
def worker(hub: RunningHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    base = tmp_path_factory.mktemp("units-live")
    fleet = make_fleet(hub, base)
    machine = provision(fleet, base / "machine")
    wheels = wheelhouse.build(base / "wheels")
    with (
        echo_upstream() as upstream,
        nspawn.booted(base / "container", bind_ro=(REPO, *wheels.dirs)) as box,
    ):
        _install(box, machine.bootstrap, wheels)
        _assign(fleet, machine.short_name, upstream, base)
        principal = f"@{fleet.name}/agent/worker:{hub.server_name}"
        workspace = str(workspace_of(Path("/var/lib/bureau-sandbox"), principal))
        the_worker = Worker(box, principal, workspace)
        the_worker.serving()
        yield the_worker


def _status(box: nspawn.Container, pid: str) -> dict[str, str]:
    text = box.path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _wait_active(box: nspawn.Container, unit: str) -> None:
    wait_until(
        lambda: box.show(unit, "ActiveState")["ActiveState"] == "active", 120, f"{unit} active"
    )


def test_each_unit_is_active_through_ready(worker: Worker) -> None:
    for unit in UNITS:
        shown = worker.box.show(
            unit, "Type", "ActiveState", "SubState", "NRestarts", "StatusText", "WatchdogUSec"
        )
        assert shown["Type"] == "notify", unit
        assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), (unit, shown)
        assert shown["NRestarts"] == "0", (unit, shown)
        # STATUS= went with READY=1 (and since).
        assert shown["StatusText"].startswith("synced" if unit == DAEMON else "serving"), shown
        assert shown["WatchdogUSec"] == ("0" if unit == SANDBOXD else "30s"), (unit, shown)
    for unit in (LAUNCHER, DAEMON):  # each has pinged its watchdog since
        pinged = worker.box.show(unit, "WatchdogTimestampMonotonic")
        assert pinged["WatchdogTimestampMonotonic"] not in {"", "0"}, (unit, pinged)
    doctor = worker.box.run("/opt/bureau/venv/bin/bureau", "machine", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def test_the_launcher_reads_its_key_through_load_credential_encrypted(worker: Worker) -> None:
    box = worker.box
    credentials = "/run/credentials/bureau-launcher.service"
    assert box.path("/var/lib/bureau/machine-key.cred").is_file()
    assert not box.path("/var/lib/bureau/machine-key.txt").exists()
    pid = box.show(LAUNCHER, "MainPID")["MainPID"]
    environ = box.path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"CREDENTIALS_DIRECTORY={credentials}".encode() in environ
    assert box.path(f"/proc/{pid}/root{credentials}/machine-key").is_file()
    loaded = box.journal(f"_PID={pid}", "BUREAU_EVENT=machine key loaded")
    assert [e["BUREAU_SOURCE"] for e in loaded] == [f"{credentials}/machine-key"]


def test_the_hardening_is_what_systemd_applied(worker: Worker) -> None:
    box = worker.box
    bureau = str(box.uid_of("bureau"))
    sandbox_capabilities = (1 << 0) | (1 << 5) | (1 << 6) | (1 << 7)  # CHOWN KILL SETGID SETUID
    views = {}
    for unit in UNITS:
        pid = box.show(unit, "MainPID")["MainPID"]
        status = _status(box, pid)
        assert status["Uid"].split() == [bureau] * 4, (unit, status["Uid"])
        assert status["NoNewPrivs"] == "1", unit
        assert status["Seccomp"] == "2", unit  # a filter
        bounding = int(status["CapBnd"], 16)
        assert bounding == (sandbox_capabilities if unit == SANDBOXD else 0), (unit, status)
        assert int(status["CapEff"], 16) & ~bounding == 0, (unit, status)
        views[unit] = box.path(f"/proc/{pid}/root")
    # InaccessiblePaths=, as each unit sees the files.
    key = "run/credentials/bureau-launcher.service"
    assert sorted(p.name for p in (views[LAUNCHER] / key).iterdir()) == ["machine-key"]
    for unit in (DAEMON, SANDBOXD):  # hidden; or, for what started first, never there
        assert not (views[unit] / key / "machine-key").exists(), unit
    assert (views[DAEMON] / "var/lib/bureau/machine-key.cred").stat().st_size == 0
    assert (views[DAEMON] / "var/lib/bureau/session.json").stat().st_size > 0
    assert list((views[SANDBOXD] / "var/lib/bureau").iterdir()) == []
    assert list((views[DAEMON] / "run/bureau/sandboxd").iterdir()) == []
    # Delegate=yes: bureau-sandboxd's cgroup (in the unified hierarchy) is its user's.
    group = box.show(SANDBOXD, "ControlGroup")["ControlGroup"].lstrip("/")
    unified = next(
        p / group
        for p in (box.path("/sys/fs/cgroup"), box.path("/sys/fs/cgroup/unified"))
        if (p / "cgroup.procs").exists()
    )
    assert str(unified.stat().st_uid) == bureau
    print(f"{SANDBOXD}: {box.show(SANDBOXD, 'StatusText')['StatusText']}")


def test_a_sandboxed_principal_serves(worker: Worker) -> None:
    beat = worker.serving()
    # The token reached the upstream; its echo showed the workload `*`s.
    assert f"Bearer {CANARY}" in echo_authorizations()
    assert beat["auth"] == f"Bearer {stars(CANARY)}"
    owner = worker.box.path(worker.workspace).stat().st_uid
    assert SANDBOX_UIDS[0] <= owner <= SANDBOX_UIDS[1]


def test_the_journal_tells_a_principals_story(worker: Worker) -> None:
    told: dict[str, set[str]] = {}
    for entry in worker.box.journal(f"BUREAU_PRINCIPAL={worker.principal}"):
        said = entry.get("BUREAU_EVENT") or entry["MESSAGE"]
        told.setdefault(entry["SYSLOG_IDENTIFIER"], set()).add(said)
    assert {"proxy started", "sandbox started"} <= told.get("bureau-launcher", set()), told
    assert "proxy serving" in told.get("bureau-proxy", set()), told
    assert "workload: the api answered 200" in told.get("bureau-sandbox", set()), told
    assert "principal running" in told.get("bureau-daemon", set()), told
    assert CANARY not in worker.box.check("journalctl", "--no-pager", "--output=json")


def _readme_exposure() -> dict[str, float]:
    """What README.md says `systemd-analyze security` gives each unit."""
    text = " ".join((REPO / "README.md").read_text().split())
    said = {
        LAUNCHER: r"the launcher was .*? it is \*\*(\d+\.\d)\*\* now",
        SANDBOXD: r"`bureau-sandboxd` is \*\*(\d+\.\d)\*\*",
        DAEMON: r"The daemon stays (\d+\.\d)",
    }
    found = {unit: re.search(pattern, text) for unit, pattern in said.items()}
    missing = [unit for unit, match in found.items() if match is None]
    assert not missing, f"README.md no longer gives the exposure of {missing}"
    return {unit: float(match.group(1)) for unit, match in found.items() if match}


def test_exposure_of_each_unit_stays_where_the_readme_says(worker: Worker) -> None:
    promised = _readme_exposure()
    for unit in UNITS:
        # Online: the unit as systemd loaded it, drop-ins and all.
        report = worker.box.check("systemd-analyze", "security", "--no-pager", unit)
        found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", report)
        assert found is not None, report
        print(f"{unit}: exposure {found.group(1)} (README: {promised[unit]})")
        assert float(found.group(1)) <= promised[unit], report


def test_a_launcher_restart_keeps_proxies_and_workloads_serving(worker: Worker) -> None:
    box = worker.box
    before = worker.serving()
    proxies = worker.proxies()
    assert proxies
    old = box.show(LAUNCHER, "MainPID")["MainPID"]
    box.check("systemctl", "restart", LAUNCHER, timeout=300)
    new = box.show(LAUNCHER, "MainPID", "ActiveState")
    assert new["ActiveState"] == "active"
    assert new["MainPID"] != old
    after = worker.serving(before)
    assert after["incarnation"] == before["incarnation"]  # the same workload
    assert after["failed"] == before["failed"]  # its API answered throughout
    assert worker.proxies() == proxies
    adopted = {
        e["BUREAU_EVENT"]
        for e in box.journal(f"_PID={new['MainPID']}", f"BUREAU_PRINCIPAL={worker.principal}")
    }
    assert {"adopted running proxy", "adopted running sandbox"} <= adopted, adopted
    # The daemon Requires= the launcher: systemd restarts it too, and it comes back.
    _wait_active(box, DAEMON)


def test_a_stopped_daemon_is_restarted_by_its_watchdog(worker: Worker) -> None:
    box = worker.box
    _wait_active(box, DAEMON)  # a start has no watchdog yet: TimeoutStartSec= rules it
    serving = worker.serving()
    before = box.show(DAEMON, "MainPID", "NRestarts")
    box.check("systemctl", "kill", "--signal=SIGSTOP", DAEMON)

    def restarted() -> dict[str, str] | None:
        now = box.show(DAEMON, "MainPID", "NRestarts", "ActiveState", "SubState")
        again = int(now["NRestarts"]) > int(before["NRestarts"])
        up = (now["ActiveState"], now["SubState"]) == ("active", "running")
        return now if again and up else None

    # A ping is due every 15 s, systemd waits 30 s, then RestartSec=5 and READY again.
    after = wait_until(restarted, 120, "the watchdog's restart of the daemon")
    assert after["MainPID"] != before["MainPID"]
    said = "\n".join(e["MESSAGE"] for e in box.journal(f"UNIT={DAEMON}", "_PID=1"))
    assert f"{DAEMON}: Watchdog timeout (limit 30s)!" in said, said
    killed = f"Killing process {before['MainPID']} (bureau-daemon) with signal SIGABRT."
    assert killed in said, said
    # The next daemon adopts the workload (a crashed daemon is no reason to restart it).
    after_restart = worker.serving(serving)
    assert after_restart["incarnation"] == serving["incarnation"]
