"""A principal from template to running workload, as an operator runs it: `bureau template
push`, `bureau agent create`, a real daemon and launcher. The workload, inside its sandbox,
is itself on Matrix through its proxy's `matrix` service (it never holds its token) and
calls its API through the same socket; machine_status reports it; a template change
restarts it; a broken template keeps it running; `agent destroy` stops it."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, run
from launcher_proc import broker_args, daemon, launcher, sandboxd
from machine_helpers import enroll, eventually, services_file
from processes import echo_authorizations, echo_upstream, stars
from sandbox_helpers import (
    PROXY_CLIENT,
    fleet_of,
    kill_sandboxes_under,
    python_template,
    workspace_of,
)

from bureau.launcher.processes import process_start_time
from bureau.operator import credentials
from bureau.wire import names, rooms

WORKLOAD = (
    PROXY_CLIENT
    + r"""
_, me = call("GET", "/http/matrix/_matrix/client/v3/account/whoami")
_, room = call("POST", "/http/matrix/_matrix/client/v3/createRoom", {"preset": "private_chat"})
status, sent = call("PUT", "/http/matrix/_matrix/client/v3/rooms/%s/send/m.room.message/t1"
                    % room["room_id"], {"msgtype": "m.text", "body": "hello from the sandbox"})
_, api = call("GET", "/http/api/x")
out = {"user_id": me.get("user_id"), "room_id": room.get("room_id"), "sent": status,
       "api": api["headers"].get("authorization"), "flavour": os.environ.get("FLAVOUR"),
       "pid": os.getpid()}
with open("/workspace/.r", "w") as f: json.dump(out, f)
os.rename("/workspace/.r", "/workspace/result.json")
while True: time.sleep(60)
"""
)
CANARY = "principal-api-canary-42"


def _template(tmp_path: Path, ns: str, flavour: str, **extra: Any) -> Path:
    path = tmp_path / f"worker-{flavour}.json"
    body = python_template(f"{ns}/template:agent-base", WORKLOAD, FLAVOUR=flavour)
    body |= {"required_credentials": ["API_TOKEN"], **extra}
    path.write_text(json.dumps(body))
    return path


def _bureau(fleet: Fleet, *args: str | Path, stdin: str | None = None) -> Any:
    return run("bureau", *args, "--credential-file", fleet.credential_file, stdin=stdin)


def _status(fleet: Fleet, machine_localpart: str, user: str) -> dict[str, Any] | None:
    admin = credentials.admin_client(fleet.creds)
    server = fleet.hub.server_name
    room = admin.resolve_alias(names.room_alias(names.machine_room_localpart(fleet.name), server))
    assert room is not None
    content = admin.get_state(room, rooms.MACHINE_STATUS, f"{machine_localpart}:{server}")
    entry = (content or {}).get("principals", {}).get(user)
    return dict(entry) if entry else None


@pytest.mark.slow
def test_a_principal_runs_from_template_to_destroy(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    ns = fleet.name.split("/")[0]
    user = f"@{fleet.name}/agent/worker:{fleet.hub.server_name}"
    assert _bureau(fleet, "template", "push", _template(tmp_path, ns, "one"), "--name",
                   "worker").returncode == 0  # fmt: skip
    run_dir.chmod(0o751)  # the sandbox's uid passes through to its socket link
    sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
    workspace = workspace_of(sandbox_dir, user)
    result = workspace / "result.json"
    try:
        with (
            echo_upstream() as upstream,
            sandboxd(run_dir, state, sandbox_dir, **fleet_of(fleet)),
            launcher(name, state, run_dir, *broker_args(run_dir)) as the_launcher,
            daemon(name, state, run_dir) as the_daemon,
        ):
            services = services_file(tmp_path, upstream)
            created = _bureau(fleet, "agent", "create", "worker", "--machine", name, "--name",
                              "agent/worker", "--services", services, "--secrets-file", "-",
                              stdin=f"API_TOKEN={CANARY}\nTOKEN={CANARY}\n")  # fmt: skip
            assert created.returncode == 0, created.stderr
            first = json.loads(eventually(lambda: result.exists() and result.read_text(), 60))
            assert first["user_id"] == user
            assert first["sent"] == 200
            # The token reached the upstream; its echo showed the workload `*`s.
            assert f"Bearer {CANARY}" in echo_authorizations()
            assert first["api"] == f"Bearer {stars(CANARY)}"
            assert first["flavour"] == "one"
            admin = credentials.admin_client(fleet.creds)
            messages = admin.call(
                "GET", f"/_synapse/admin/v1/rooms/{first['room_id']}/messages?dir=b",
                what="messages",
            )  # fmt: skip
            bodies = [e["content"].get("body") for e in messages["chunk"]]
            assert "hello from the sandbox" in bodies
            status = eventually(lambda: _status(fleet, machine.machine.localpart, user))
            assert status["status"] == "running"
            assert status["template"] == f"{ns}/template:worker"
            assert status["restarts"] == 0
            assert status["memory_mb"] > 0  # the workload's cgroup (or its processes' RSS)
            assert isinstance(status["cpu_percent"], int)

            # A template change restarts the workload with the new template.
            result.unlink()
            assert _bureau(fleet, "template", "push", _template(tmp_path, ns, "two"), "--name",
                           "worker").returncode == 0  # fmt: skip
            second = json.loads(eventually(lambda: result.exists() and result.read_text(), 60))
            assert second["flavour"] == "two"
            assert second["pid"] != first["pid"] or second["room_id"] != first["room_id"]

            # A template that no longer resolves: one clear line, the workload runs on.
            room = admin.resolve_alias(
                names.room_alias(names.template_room_localpart(fleet.name), fleet.hub.server_name)
            )
            assert room is not None
            broken_template = {"inherits": [f"{ns}/template:missing"], "command": ["/bin/true"]}
            admin.put_state(room, "m.bureau.template", "worker", broken_template)
            the_daemon.wait_for("cannot resolve a principal's template")
            broken = eventually(
                lambda: (_status(fleet, machine.machine.localpart, user) or {}).get("error")
            )
            assert "missing" in broken
            assert (_status(fleet, machine.machine.localpart, user) or {})["status"] == "running"

            # A parent in a room that does not exist: named, and the daemon goes on (it
            # does not wait for the room to appear before serving anyone else).
            elsewhere = {"inherits": ["nosuch/template:x"], "command": ["/bin/true"]}
            admin.put_state(room, "m.bureau.template", "worker", elsewhere)
            unreadable = eventually(
                lambda: (
                    "nosuch"
                    in str((_status(fleet, machine.machine.localpart, user) or {}).get("error"))
                )
            )
            assert unreadable

            destroyed = _bureau(fleet, "agent", "destroy", "agent/worker")
            assert destroyed.returncode == 0, destroyed.stderr
            the_launcher.wait_for("sandbox stopped")
            logs = the_launcher.log() + the_daemon.log()
    finally:
        kill_sandboxes_under(run_dir)
    assert CANARY not in logs


@pytest.mark.slow
def test_decommission_stops_every_workload(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    ns = fleet.name.split("/")[0]
    template = _template(tmp_path, ns, "one")
    assert _bureau(fleet, "template", "push", template, "--name", "worker").returncode == 0
    run_dir.chmod(0o751)
    sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
    results = []
    try:
        with (
            echo_upstream() as upstream,
            sandboxd(run_dir, state, sandbox_dir, **fleet_of(fleet)),
            launcher(name, state, run_dir, *broker_args(run_dir)) as the_launcher,
            daemon(name, state, run_dir) as the_daemon,
        ):
            services = services_file(tmp_path, upstream)
            for agent in ("agent/w1", "agent/w2"):
                created = _bureau(fleet, "agent", "create", "worker", "--machine", name,
                                  "--name", agent, "--services", services, "--secrets-file",
                                  "-", stdin=f"API_TOKEN={CANARY}\nTOKEN={CANARY}\n")  # fmt: skip
                assert created.returncode == 0, created.stderr
                user = f"@{fleet.name}/{agent}:{fleet.hub.server_name}"
                results.append(workspace_of(sandbox_dir, user) / "result.json")
            for result in results:
                eventually(result.exists, 60)
            records = run_dir / "launcher" / "sandboxes"
            bwraps = [json.loads(p.read_text())["pid"] for p in records.glob("*.json")]
            assert len(bwraps) == 2
            decommissioned = run(
                "bureau", "machine", "decommission", name,
                "--credential-file", fleet.credential_file,
            )  # fmt: skip
            assert decommissioned.returncode == 0, decommissioned.stderr
            the_daemon.proc.wait(timeout=60)  # it lost its standing, stopped all, exited
            assert the_daemon.proc.returncode != 0
            assert the_launcher.log().count("sandbox stopped") == 2
            assert not list(records.glob("*.json"))
            # Gone: not a zombie the test could mistake, the pids are not running.
            for pid in bwraps:
                assert process_start_time(pid) is None  # gone (or a zombie being reaped)
    finally:
        kill_sandboxes_under(run_dir)


@pytest.mark.slow
def test_a_daemon_killed_and_started_again_keeps_every_workload(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """SIGKILL (or the watchdog's SIGABRT) is no clean stop: the next daemon's first pass
    must read the config room whatever its first sync carried, and adopt the running
    workload, not stop it and start it again."""
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    ns = fleet.name.split("/")[0]
    user = f"@{fleet.name}/agent/steady:{fleet.hub.server_name}"
    template = _template(tmp_path, ns, "one")
    assert _bureau(fleet, "template", "push", template, "--name", "worker").returncode == 0
    run_dir.chmod(0o751)
    sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
    result = workspace_of(sandbox_dir, user) / "result.json"
    try:
        with (
            echo_upstream() as upstream,
            sandboxd(run_dir, state, sandbox_dir, **fleet_of(fleet)),
            launcher(name, state, run_dir, *broker_args(run_dir)),
        ):
            with daemon(name, state, run_dir) as first:
                services = services_file(tmp_path, upstream)
                created = _bureau(fleet, "agent", "create", "worker", "--machine", name,
                                  "--name", "agent/steady", "--services", services,
                                  "--secrets-file", "-",
                                  stdin=f"API_TOKEN={CANARY}\nTOKEN={CANARY}\n")  # fmt: skip
                assert created.returncode == 0, created.stderr
                eventually(result.exists, 60)
                first.wait_for("principal running")
                workload = json.loads(result.read_text())["pid"]
                first.stop(signal.SIGKILL)
            with daemon(name, state, run_dir) as second:
                ready = second.wait_for("ready: first sync done")
                second.wait_for("heartbeat published", start=ready)  # and what follows READY
                log = second.log()
            assert "principal stopped" not in log
            assert "principal running" not in log  # adopted, never started again
            assert json.loads(result.read_text())["pid"] == workload
            assert process_start_time(workload) is not None
    finally:
        kill_sandboxes_under(run_dir)
