"""A sandbox's lifecycle under a real launcher, real bubblewrap and the test Synapse: a
rotation swaps the proxy under a running workload; a changed spec restarts the workload and
the same spec changes nothing; the restart policy decides what an exit does; a killed
launcher's sandbox runs on and is adopted; stopping leaves no process behind; memory and
pids limits hold; the workload's output reaches the log or the journal.

Every wait is for something observable (a file the workload writes, the list answer, a
process gone), never a fixed sleep."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet
from journal_listener import Listener
from launcher_proc import UNSIGNED, broker_args, launcher, proxies_under
from machine_helpers import credentials_event, masked, provision_credentials, served_token
from processes import echo_received, launcher_call
from sandbox_helpers import PRINCIPAL, Sandboxed, python_spec, sandboxed, wait_until

from bureau import journal
from bureau.launcher.processes import process_start_time
from bureau.launcher.sandbox_start import descendants

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/workspace"}
CANARY = "Bearer sandbox-canary-1"
ROTATED = "Bearer sandbox-canary-2"

# Calls its service through the proxy socket in a loop, one line per request: the
# Authorization the upstream saw, or the error.
CALL_LOOP = """
import http.client, json, os, socket, time
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(os.environ["BUREAU_PROXY_SOCKET"])
n = 0
while True:
    n += 1
    request_id = "%d-%d" % (os.getpid(), n)
    try:
        c = Unix("proxy")
        c.request("GET", "/http/api/loop", headers={"X-Request-Id": request_id})
        seen = request_id + " " + json.loads(c.getresponse().read())["headers"]["authorization"]
        c.close()
    except Exception as exc:
        seen = "error " + type(exc).__name__ + " " + str(exc)
    with open("/workspace/seen.log", "a") as f:
        f.write(seen + "\\n")
    time.sleep(0.05)
"""

# Says it started (a file named by $MARK), then waits to be stopped.
MARK_AND_WAIT = """
import os, time
open("/workspace/started-" + os.environ["MARK"], "w").close()
time.sleep(3600)
"""

# Counts its runs in /workspace/runs-$NAME, then exits with $CODE.
RUN_AND_EXIT = """
import os, sys
with open("/workspace/runs-" + os.environ["NAME"], "a") as f:
    f.write("run\\n")
sys.exit(int(os.environ["CODE"]))
"""

# A workload with a child that ignores SIGTERM: stopping must not leave it behind.
PARENT_AND_STUBBORN_CHILD = """
import os, signal, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open("/workspace/child-" + os.environ["MARK"], "w").close()
    time.sleep(3600)
    os._exit(0)
time.sleep(3600)
"""

# Touches memory a MiB at a time until the cgroup's limit stops it.
MEMORY_HOG = """
with open("/workspace/runs-hog", "a") as f:
    f.write("run\\n")
hog = []
while True:
    hog.append(b"x" * (1 << 20))
"""

# Every process forks for ever; the first refused fork is reported in /workspace/full.
FORK_BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        open("/workspace/full", "w").close()
        time.sleep(0.05)
"""

SAYS = """
import sys
print("out: said on stdout", flush=True)
print("err: said on stderr", file=sys.stderr, flush=True)
"""


def _key(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


def seen(box: Sandboxed) -> list[str]:
    """CALL_LOOP's outcomes so far: for each request answered, the Authorization the
    upstream received (its record), the workload having seen only its `*`s; or the error."""
    try:
        text = (box.workspace / "seen.log").read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.split("\n")[:-1]:
        request_id, _, echoed = line.partition(" ")
        if request_id == "error":
            out.append(line)
            continue
        received = echo_received(request_id, box.upstream)
        assert received is not None, line
        authorization = received["headers"]["authorization"]
        assert masked({"authorization": authorization}) == {"authorization": echoed}, line
        out.append(authorization)
    return out


def lines_of(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def environment(**values: str) -> dict[str, str]:
    return {**ENV, **values}


def record_of(box: Sandboxed) -> Path:
    """The launcher's adoption record of the principal's sandbox."""
    assert box.launcher.run_dir is not None
    return box.launcher.run_dir / "launcher" / "sandboxes" / f"{_key(box.principal)}.json"


def supervised_pid(box: Sandboxed) -> int:
    """The process the launcher supervises, from its adoption record."""
    return int(json.loads(record_of(box).read_text())["pid"])


Processes = list[tuple[int, int | None]]


def sandbox_processes(box: Sandboxed) -> Processes:
    """Every process of the running sandbox: the launcher's child, bwrap's and the
    workload's, each with its start time (a pid alone may be reused)."""
    top = supervised_pid(box)
    return [(pid, process_start_time(pid)) for pid in [top, *descendants(top)]]


def workload_processes(pid: int) -> list[int]:
    """The processes in ``pid``'s pid namespace, its init (bwrap's) aside."""
    namespace = Path(f"/proc/{pid}/ns/pid").readlink()
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and (entry / "ns" / "pid").readlink() == namespace:
                lines = (entry / "status").read_text().splitlines()
                (nspid,) = [line.split()[-1] for line in lines if line.startswith("NSpid:")]
                if nspid != "1":
                    found.append(int(entry.name))
    return found


def alive(processes: Processes) -> list[str]:
    """Those still running, each shown with its command line."""
    out = []
    for pid, start in processes:
        if process_start_time(pid) == start:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{pid}/stat").read_text()
                out.append(f"{pid} {stat[:60]} {b' '.join(argv).decode(errors='replace')[:80]}")
    return out


def cgroup_dirs(pid: int, principal: str) -> list[Path]:
    """The sandbox's own cgroup directories, from a process in it."""
    found = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if path.rstrip("/").endswith("/" + _key(principal)):
            name = "" if not controllers else controllers.split(",")[0]
            found.append(Path("/sys/fs/cgroup") / name / path.lstrip("/"))
    return found


def running_workload(box: Sandboxed, marker: Path) -> dict[str, Any]:
    """The sandbox as listed once its workload has written ``marker``."""
    wait_until(marker.exists, what=f"{marker.name}\n{box.launcher.log()}")
    state = box.sandbox()
    assert state["status"] == "running", state
    assert state["pid"] > 0, state
    return state


def rotate(box: Sandboxed, tmp_path: Path, bundle: str) -> dict[str, Any]:
    """Provision new credentials for the principal; the credentials event that carries
    them (the daemon's next ensure)."""
    services = tmp_path / "services.json"  # written by sandboxed()
    done = provision_credentials(box.fleet, box.machine, PRINCIPAL, services, bundle)
    assert done.returncode == 0, done.stderr
    content = credentials_event(box.fleet, box.machine)
    assert content != box.credentials
    return content


def calling(box: Sandboxed) -> dict[str, Any]:
    """Start the workload that calls its service in a loop; its spec, once it has."""
    the_spec = python_spec(CALL_LOOP)
    assert box.ensure(the_spec)["ok"], box.launcher.log()
    wait_until(lambda: CANARY in seen(box), what=f"a first request\n{box.launcher.log()}")
    return the_spec


# -- credentials and spec ------------------------------------------------------------------


@pytest.mark.slow
def test_rotation_swaps_the_proxy_under_a_running_workload(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        the_spec = calling(box)
        before = box.listed()
        workload = before["sandbox"]["pid"]
        started = process_start_time(workload)

        rotated = rotate(box, tmp_path, "TOKEN=sandbox-canary-2\n")
        reply = box.ensure(the_spec, credentials=rotated)
        assert reply["ok"], reply
        assert reply["changed"] is True, reply
        mark = len(seen(box))
        wait_until(lambda: len(seen(box)) >= mark + 4, what="requests after the rotation")

        after = box.listed()
        assert after["pid"] != before["pid"]  # a new proxy
        assert after["sandbox"]["pid"] == workload  # the same workload
        assert after["sandbox"]["status"] == "running"
        assert after["sandbox"]["restarts"] == 0
        assert process_start_time(workload) == started
        lines = seen(box)
        assert not [line for line in lines if line.startswith("error")], lines
        # Once the swap is answered, at most the one request then in flight went to the
        # old proxy; every request after the first rotated one carries the new value.
        since = lines[mark:]
        assert ROTATED in since[:2], since
        assert set(since[since.index(ROTATED) :]) == {ROTATED}, since


def test_a_changed_spec_restarts_the_workload_and_the_same_spec_changes_nothing(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        one = python_spec(MARK_AND_WAIT, environment=environment(MARK="one"))
        assert box.ensure(one)["changed"] is True
        first = running_workload(box, box.workspace / "started-one")
        old = sandbox_processes(box)

        two = python_spec(MARK_AND_WAIT, environment=environment(MARK="two"))
        reply = box.ensure(two)
        assert reply["ok"], reply
        assert reply["changed"] is True, reply
        assert alive(old) == []  # the old sandbox is gone before the new one starts
        second = running_workload(box, box.workspace / "started-two")
        assert second["pid"] != first["pid"]
        assert second["digest"] != first["digest"]

        # A changed command restarts it too.
        three = python_spec(
            MARK_AND_WAIT + "# another command\n", environment=environment(MARK="three")
        )
        assert box.ensure(three)["changed"] is True
        third = running_workload(box, box.workspace / "started-three")
        assert third["pid"] != second["pid"]

        # The same spec again: nothing changes, the workload runs on.
        reply = box.ensure(three)
        assert reply["ok"], reply
        assert reply["changed"] is False, reply
        again = box.sandbox()
        assert again["pid"] == third["pid"]
        assert again["status"] == "running"
        assert again["restarts"] == 0


# -- restart policy ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_restart_policy_decides_what_an_exit_does(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:

        def run(name: str, policy: str, code: int) -> Path:
            env = environment(NAME=name, CODE=str(code))
            reply = box.ensure(python_spec(RUN_AND_EXIT, environment=env, restart_policy=policy))
            assert reply["ok"], reply
            assert reply["changed"] is True, reply
            return box.workspace / f"runs-{name}"

        def first_exit() -> dict[str, Any] | None:
            # Its exit is recorded as the launcher decides whether to restart it.
            state = box.sandbox()
            return state if state["last_exit"] else None

        def restarted(runs: Path) -> dict[str, Any] | None:
            # restarted, and the new run has begun
            state = box.sandbox()
            return state if state["restarts"] >= 1 and len(lines_of(runs)) >= 2 else None

        # never: a failure stays down.
        runs = run("never", "never", 1)
        state = wait_until(first_exit, what=f"never: an exit\n{box.launcher.log()}")
        assert state["status"] == "exited", state
        assert state["last_exit"] == "status 1"
        assert state["restarts"] == 0
        assert state["pid"] == 0
        assert lines_of(runs) == ["run"]

        # on-failure: success stays down...
        runs = run("success", "on-failure", 0)
        state = wait_until(first_exit, what=f"on-failure, 0: an exit\n{box.launcher.log()}")
        assert state["status"] == "exited", state
        assert state["last_exit"] == "status 0"
        assert state["restarts"] == 0
        assert lines_of(runs) == ["run"]

        # ...a failure is restarted.
        runs = run("failure", "on-failure", 1)
        state = wait_until(
            lambda: restarted(runs), what=f"on-failure, 1: restarted\n{box.launcher.log()}"
        )
        assert state["last_exit"] == "status 1"
        assert state["status"] in {"running", "restarting"}

        # always: success is restarted too.
        runs = run("always", "always", 0)
        state = wait_until(
            lambda: restarted(runs), what=f"always, 0: restarted\n{box.launcher.log()}"
        )
        assert state["last_exit"] == "status 0"
        assert state["status"] in {"running", "restarting"}


# -- the launcher dies ---------------------------------------------------------------------


def test_a_killed_launchers_sandbox_runs_on_and_is_adopted(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        the_spec = calling(box)
        workload = box.sandbox()["pid"]
        processes = sandbox_processes(box)
        cgroups = cgroup_dirs(workload, box.principal)

        box.launcher.proc.send_signal(signal.SIGKILL)
        box.launcher.proc.wait(timeout=10)
        # No launcher: the workload goes on calling its service through the proxy.
        mark = len(seen(box))

        def served_or_died() -> bool:
            return len(seen(box)) >= mark + 3 or len(alive(processes)) < len(processes)

        wait_until(served_or_died, what="requests with no launcher")
        assert len(alive(processes)) == len(processes), "the sandbox died with its launcher"

        name, state = box.machine.machine.short_name, box.machine.state_dir
        with launcher(name, state, run_dir, *broker_args(run_dir), *UNSIGNED) as second:
            again = dataclasses.replace(box, launcher=second)
            adopted = again.sandbox()
            assert adopted["status"] == "running", second.log()
            assert adopted["pid"] == workload
            assert "adopted running sandbox" in second.log()
            # Adopted as it runs: the same spec changes nothing.
            reply = again.ensure(the_spec)
            assert reply["ok"], reply
            assert reply["changed"] is False, reply
            assert again.sandbox()["pid"] == workload

            reply = launcher_call(second.socket, {"action": "stop", "principal": box.principal})
            assert reply["ok"], reply
            assert reply["stopped"] is True, reply
            assert alive(processes) == []
            assert [d for d in cgroups if d.exists()] == []
            assert launcher_call(second.socket, {"action": "list"})["principals"] == []


@pytest.mark.slow
def test_a_sandbox_nobody_recorded_is_swept(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    """A sandbox whose record is gone (its launcher died before it could write it) is
    nobody's: the next launcher kills it rather than leave it running unsupervised."""
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(MARK_AND_WAIT, environment=environment(MARK="lost")))["ok"]
        running_workload(box, box.workspace / "started-lost")
        processes = sandbox_processes(box)
        box.launcher.proc.send_signal(signal.SIGKILL)
        box.launcher.proc.wait(timeout=10)
        record_of(box).unlink()

        name, state = box.machine.machine.short_name, box.machine.state_dir
        try:
            with launcher(name, state, run_dir, *broker_args(run_dir), *UNSIGNED) as second:
                assert dataclasses.replace(box, launcher=second).listed().get("sandbox") is None
                wait_until(
                    lambda: alive(processes) == [], what=f"{alive(processes)}\n{second.log()}"
                )
                assert "killed a sandbox that nobody adopted" in second.log()
        finally:  # the clean-up after each test finds sandboxes by their records
            keeper, started = processes[0]
            if process_start_time(keeper) == started:
                os.kill(keeper, signal.SIGKILL)


# -- stopping ------------------------------------------------------------------------------


def test_stopping_leaves_no_process_of_the_workload(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        # No "sandbox" in the ensure: the sandbox stops, the proxy serves on.
        reply = box.ensure(
            python_spec(PARENT_AND_STUBBORN_CHILD, environment=environment(MARK="a"))
        )
        assert reply["ok"], reply
        socket_path = Path(reply["socket"])
        state = running_workload(box, box.workspace / "child-a")
        processes = sandbox_processes(box)
        assert len(processes) >= 4, processes  # bwrap's, the workload and its child
        cgroups = cgroup_dirs(state["pid"], box.principal)
        assert cgroups, Path(f"/proc/{state['pid']}/cgroup").read_text()
        proxy = box.listed()["pid"]

        reply = box.ensure(None)
        assert reply["ok"], reply
        assert reply["changed"] is True, reply
        assert alive(processes) == []
        assert [d for d in cgroups if d.exists()] == []
        listed = box.listed()
        assert listed.get("sandbox") is None
        assert listed["pid"] == proxy
        assert listed["status"] == "running"
        assert served_token(socket_path) == CANARY

        # Stopping the principal stops its sandbox with its proxy.
        reply = box.ensure(
            python_spec(PARENT_AND_STUBBORN_CHILD, environment=environment(MARK="b"))
        )
        assert reply["ok"], reply
        running_workload(box, box.workspace / "child-b")
        processes = sandbox_processes(box)
        reply = launcher_call(box.launcher.socket, {"action": "stop", "principal": box.principal})
        assert reply["ok"], reply
        assert reply["stopped"] is True, reply
        assert alive(processes) == []
        assert launcher_call(box.launcher.socket, {"action": "list"})["principals"] == []
        assert proxies_under(run_dir) == []


# -- limits --------------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_and_pids_limits_hold(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    limits = {"memory_limit_mb": 32, "pids_limit": 32}
    # RLIMIT_NPROC counts every process of a uid: uids of its own, not those of launchers
    # that other tests run beside it.
    first = 2_100_000_000 + secrets.randbelow(10_000_000)
    uids = f"{first}-{first + 9}"
    with sandboxed(fleet, tmp_path, run_dir, "--sandbox-uids", uids) as box:
        # Past its memory: killed, and restarted as on-failure says.
        hog = python_spec(MEMORY_HOG, resources=limits, restart_policy="on-failure")
        assert box.ensure(hog)["ok"], box.launcher.log()
        runs = box.workspace / "runs-hog"

        def restarted_or_past_limit() -> dict[str, Any] | None:
            state = box.sandbox()
            restarted = state["restarts"] >= 1 and len(lines_of(runs)) >= 2
            return state if restarted or state["memory_mb"] > 48 else None

        state = wait_until(restarted_or_past_limit, what=f"hog restarted\n{box.launcher.log()}")
        assert state["memory_mb"] <= 48, state
        assert state["last_exit"] in {"signal SIGKILL", "status 137"}, state

        # A fork bomb stops at its pids limit; the launcher and the proxy go on serving.
        bomb = python_spec(FORK_BOMB, resources=limits, restart_policy="never")
        reply = box.ensure(bomb)
        assert reply["ok"], reply
        assert reply["changed"] is True, reply
        state = running_workload(box, box.workspace / "full")
        # A fork can be refused while another is still being torn down (the kernel counts
        # it until then), so the first refusal may come one short: every process keeps
        # trying, and the bomb fills its limit, and not one more.
        full = limits["pids_limit"]

        def filled() -> list[int] | None:
            found = workload_processes(state["pid"])
            return found if len(found) >= full else None

        workload = wait_until(filled, what=f"{full} processes in the sandbox")
        assert state["pid"] in workload
        assert len(workload) == full, len(workload)
        assert len(workload_processes(state["pid"])) == full
        assert served_token(Path(reply["socket"])) == CANARY
        assert box.sandbox()["status"] == "running"
        # And it stops like any other.
        processes = sandbox_processes(box)
        assert box.ensure(None)["changed"] is True
        assert alive(processes) == []


# -- output --------------------------------------------------------------------------------


def test_workload_output_reaches_the_log_file(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(SAYS))["ok"], box.launcher.log()
        log = run_dir / "launcher" / "logs" / f"{_key(box.principal)}.log"
        wanted = {
            f"{box.principal}: out: said on stdout",
            f"{box.principal}: err: said on stderr",
        }
        wait_until(lambda: wanted <= set(lines_of(log)), what=f"both lines in {log}")
        assert "sandbox-canary" not in log.read_text()


@pytest.fixture
def listener(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A journal for the launcher and what it starts (it inherits the variable)."""
    path = run_dir / "journal.sock"
    the_listener = Listener(path)
    monkeypatch.setenv(journal.SOCKET_ENV, str(path))
    try:
        yield the_listener
    finally:
        the_listener.sock.close()


@pytest.mark.slow
def test_workload_output_reaches_the_journal(
    fleet: Fleet, tmp_path: Path, run_dir: Path, listener: Listener
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(SAYS))["ok"], box.launcher.log()

        def said() -> list[dict[str, str]]:
            return [e for e in listener.drain() if e.get("SYSLOG_IDENTIFIER") == "bureau-sandbox"]

        wait_until(lambda: len(said()) >= 2, what="two bureau-sandbox entries")
        entries = said()
        assert {e["MESSAGE"] for e in entries} >= {
            "out: said on stdout",
            "err: said on stderr",
        }
        assert {e["BUREAU_PRINCIPAL"] for e in entries} == {box.principal}
        assert not (run_dir / "launcher" / "logs" / f"{_key(box.principal)}.log").exists()


WAIT_FOR_EXIT = (
    "import os, time\n"
    "while not os.path.exists('/workspace/exit'): time.sleep(0.05)\n"
    "raise SystemExit(int(open('/workspace/exit').read()))"
)


def test_an_adopted_sandbox_ends_as_its_workload_said(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """The next launcher cannot reap an adopted keeper; bwrap's status file (kept under
    the run dir, written through a descriptor) tells it the workload exited 0, so
    on-failure leaves it exited rather than run a finished job again."""
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(WAIT_FOR_EXIT, restart_policy="on-failure"))["ok"]
        wait_until(lambda: box.sandbox().get("pid"), what="the workload")
        box.launcher.proc.send_signal(signal.SIGKILL)
        box.launcher.proc.wait(timeout=10)
        name, state = box.machine.machine.short_name, box.machine.state_dir
        with launcher(name, state, run_dir, *broker_args(run_dir), *UNSIGNED) as second:
            again = dataclasses.replace(box, launcher=second)
            assert again.sandbox()["status"] == "running", second.log()
            (box.workspace / "exit").write_text("0")
            ended = wait_until(
                lambda: again.sandbox()["status"] != "running" and again.sandbox(),
                what=f"the adopted workload's exit\n{second.log()}",
            )
            assert ended["status"] == "exited", ended
            assert ended["last_exit"] == "status 0"
            assert ended["restarts"] == 0
