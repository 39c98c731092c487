"""bureau-sandboxd, the process that holds the capabilities sandboxes take (the launcher
holds none): it outlives its own restart without taking the sandboxes with it, answers its
own uid alone, and checks what it is asked itself: a pid must be the principal's, a spec
must pass its own policy, whoever asks."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import Fleet
from launcher_proc import UNSIGNED, broker_args, launcher, sandboxd
from processes import BIN, launcher_call
from sandbox_helpers import (
    fleet_of,
    python_spec,
    sandboxed,
    wait_until,
)

from bureau.launcher.children import LauncherError
from bureau.launcher.processes import process_start_time
from bureau.launcher.sandbox_broker import BrokerClient
from bureau.wire.sandbox_broker import Reply, Request, receive, send
from bureau.wire.sandbox_spec import SandboxSpec

SLEEP = "import time; open('/workspace/up', 'w').close(); time.sleep(600)"
NOBODY = 65534


FLEET = {"fleet": "bureau/fleet/prod", "server": "test"}


def _socket(run_dir: Path) -> Path:
    return run_dir / "sandboxd" / "sandboxd.sock"


@pytest.mark.slow
def test_sandboxes_outlive_a_killed_sandboxd_and_the_next_one_stops_them(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(SLEEP))["ok"]
        wait_until((box.workspace / "up").exists, what=box.launcher.log())
        workload = box.sandbox()["pid"]
        started = process_start_time(workload)
        box.host.stop(signal.SIGKILL)
        assert process_start_time(workload) == started, "the sandbox died with sandboxd"
        state = box.machine.state_dir
        with sandboxd(run_dir, state, box.sandbox_dir, **fleet_of(box.fleet)):
            # The next sandboxd did not start the keeper: it knows it by its uid.
            assert box.sandbox()["memory_mb"] > 0
            reply = launcher_call(
                box.launcher.socket, {"action": "stop", "principal": box.principal}
            )
            assert reply["ok"], (reply, box.launcher.log())
            assert reply["stopped"] is True, (reply, box.launcher.log())
            wait_until(lambda: process_start_time(workload) is None, what="the workload's end")


def test_with_sandboxd_down_a_start_fails_with_a_line_saying_so(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        box.host.stop()
        reply = box.ensure(python_spec(SLEEP))
        assert reply["ok"] is False
        assert str(_socket(run_dir)) in reply["error"]
        assert "is bureau-sandboxd running?" in reply["error"]
        assert "\n" not in reply["error"]


def _ask_as(uid: int, path: Path) -> str:
    """A request from another uid: what it got (a reply's error, or the OS's refusal)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(reader)
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(str(path))
                send(s, Request("hello").to_json())
                answer = Reply.from_json(receive(s)[0]).error or "answered"
        except OSError as exc:
            answer = f"{type(exc).__name__}"
        os.write(writer, answer.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as got:
        answer = got.read()
    os.waitpid(pid, 0)
    return answer


def test_sandboxd_answers_its_own_uid_alone(run_dir: Path, tmp_path: Path) -> None:
    with sandboxd(run_dir, tmp_path / "state", tmp_path / "sandbox", **FLEET) as host:
        path = _socket(run_dir)
        run_dir.chmod(0o755)  # as /run/bureau: others pass through
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert path.stat().st_mode & 0o777 == 0o600
        assert _ask_as(NOBODY, path) == "PermissionError"
        path.parent.chmod(0o711)
        assert _ask_as(NOBODY, path) == "PermissionError"
        path.chmod(0o666)  # past the modes, the peer's uid is checked
        assert _ask_as(NOBODY, path) == f"bureau-sandboxd: uid {NOBODY} may not ask"
        assert "refused a peer" in host.log()
        assert BrokerClient(path).mode in ("v1", "v2", "none")


def test_sandboxd_signals_no_process_but_the_principals_own(run_dir: Path, tmp_path: Path) -> None:
    principal = "@bureau/fleet/prod/agent/alpha:test"
    with (
        sandboxd(run_dir, tmp_path / "state", tmp_path / "sandbox", **FLEET),
        subprocess.Popen(["sleep", "600"]) as bystander,
    ):
        client = BrokerClient(_socket(run_dir))
        try:
            for ask in (client.kill, client.terminate, client.workload):
                with pytest.raises(LauncherError, match=f"pid {bystander.pid} is not its keeper"):
                    ask(principal, bystander.pid)
            assert bystander.poll() is None
        finally:
            bystander.kill()


def test_sandboxd_checks_a_spec_itself_whoever_sends_it(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """Straight to sandboxd, past the launcher: the state dir stays out of every sandbox,
    and nothing starts."""
    with sandboxed(fleet, tmp_path, run_dir) as box:
        spec = python_spec(SLEEP)
        state = str(box.machine.state_dir)
        spec["filesystem"] = [*spec["filesystem"], {"source": state, "dest": "/s", "mode": "ro"}]
        client = BrokerClient(_socket(run_dir))
        with pytest.raises(LauncherError, match=r"^sandbox for .*filesystem.* " + state):
            client.start(box.principal, SandboxSpec.from_json(spec), [])
        assert not box.workspace.exists()


def test_sandboxd_gives_a_uid_to_no_name_outside_the_fleet_nor_without_a_proxy(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """A name that is not one of the fleet's principals, or one whose proxy the launcher
    does not run, gets nothing: no uid, no workspace, no link to anyone's socket."""
    with sandboxed(fleet, tmp_path, run_dir) as box:
        client = BrokerClient(_socket(run_dir))
        alpha = box.principal.removesuffix(f":{fleet.hub.server_name}")
        for name, why in (
            (f"{alpha}:elsewhere", "not in this machine's fleet"),
            (
                alpha.replace("agent/alpha", "agent/x/../alpha") + ":" + fleet.hub.server_name,
                "has a segment starting with '.'",
            ),
            (f"@{fleet.name}/machine/m:{fleet.hub.server_name}", "is a machine"),
            (f"@{fleet.name}/agent/nobody:{fleet.hub.server_name}", "no proxy socket"),
        ):
            with pytest.raises(LauncherError, match=why):
                client.start(name, SandboxSpec.from_json(python_spec(SLEEP)), [])
        assert not (box.sandbox_dir / "sandbox-uids.json").exists()  # no uid given at all
        assert not (run_dir / "sandbox").exists()


def test_one_principals_keeper_is_not_anothers_to_kill(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    beta = f"@{fleet.name}/agent/beta:{fleet.hub.server_name}"
    sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
    sandbox_dir.mkdir(mode=0o711)
    uids = sandbox_dir / "sandbox-uids.json"
    uids.write_text(json.dumps({beta: 2_000_065_000}))
    uids.chmod(0o600)
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(SLEEP))["ok"]
        wait_until((box.workspace / "up").exists, what=box.launcher.log())
        keeper = int(
            json.loads(next((run_dir / "launcher" / "sandboxes").glob("*.json")).read_text())["pid"]
        )
        client = BrokerClient(_socket(run_dir))
        for ask in (client.kill, client.terminate, client.workload):
            with pytest.raises(LauncherError, match=f"pid {keeper} is not its keeper"):
                ask(beta, keeper)
        with pytest.raises(LauncherError, match="not its keeper"):
            client.finish(beta, keeper, reaped=False)
        assert box.sandbox()["status"] == "running"
        assert process_start_time(keeper) is not None


def test_a_launcher_adopts_its_sandboxes_while_sandboxd_is_down(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """Its records are its own: a sandboxd it cannot ask costs no workload its
    supervision, and the launcher serves."""
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(SLEEP))["ok"]
        wait_until((box.workspace / "up").exists, what=box.launcher.log())
        workload = box.sandbox()["pid"]
        box.launcher.proc.send_signal(signal.SIGKILL)
        box.launcher.proc.wait(timeout=10)
        box.host.stop(signal.SIGKILL)
        name, state = box.machine.machine.short_name, box.machine.state_dir
        with launcher(name, state, run_dir, *broker_args(run_dir), *UNSIGNED) as second:
            again = dataclasses.replace(box, launcher=second)
            assert again.sandbox()["status"] == "running", second.log()
            assert "adopting a sandbox unchecked" in second.log()
            assert "could not sweep sandboxes nobody adopted" in second.log()
            with sandboxd(run_dir, state, box.sandbox_dir, **fleet_of(fleet)):
                wait_until(lambda: again.sandbox()["pid"] == workload, what=second.log())


def test_sandboxd_refuses_host_network_where_it_has_none(tmp_path: Path) -> None:
    done = subprocess.run(
        ["unshare", "--net", str(BIN / "bureau-sandboxd"), "--run-dir", str(tmp_path / "r"),
         "--state-dir", str(tmp_path / "s"), "--sandbox-dir", str(tmp_path / "w"),
         "--allow-host-network", "--fleet", "bureau/fleet/prod", "--server-name", "test"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bureau-sandboxd: --allow-host-network: ")
    assert "PrivateNetwork=no" in lines[0]


def test_a_launcher_with_a_broker_refuses_sandbox_flags_of_its_own(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "bureau-launcher"), "--machine-name", "bureau/fleet/prod/machine/m",
         "--state-dir", str(tmp_path), "--sandbox-broker", str(tmp_path / "s.sock"),
         "--sandbox-uids", "3000000000-3000000010"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "bureau-launcher: --sandbox-uids: with --sandbox-broker, sandboxes are "
        "bureau-sandboxd's: give it there (BUREAU_SANDBOX_OPTIONS in machine.conf)"
    ]
    assert not list(tmp_path.iterdir())  # nothing made before the refusal


def test_a_launcher_without_a_broker_still_hosts_sandboxes_itself(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """As on a host without the units, run as root: the same sandbox, no sandboxd."""
    with sandboxed(fleet, tmp_path, run_dir, broker=False) as box:
        assert box.ensure(python_spec(SLEEP))["ok"]
        wait_until((box.workspace / "up").exists, what=box.launcher.log())
        assert box.sandbox()["status"] == "running"
        assert not _socket(run_dir).exists()
        stop = {"action": "stop", "principal": box.principal}
        assert launcher_call(box.launcher.socket, stop)["stopped"] is True
