"""Fleet bundles against a real hub, shared by tests/operator/test_fleet_bundles.py and
tests/system/test_fleet_bundles_{served,e2e}.py: a machine's own sandboxd, launcher and
daemon started at a moment the test chooses (after a timed first boot), the operator's
CLI and code, the fleet room read and opened with the age CLI, and what a proxy serves
through its fleet route."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_fleet import Fleet
from launcher_proc import Service, broker_args, daemon, launcher, sandboxd
from machine_helpers import Enrolled, proxy_socket
from processes import echo_received, run, unix_request
from sandbox_helpers import fleet_of, kill_sandboxes_under, python_template

from bureau import age_keys
from bureau.operator.credentials import admin_client
from bureau.operator.fleet_bundles import MAX_RECIPIENTS, FleetBundleRequest, provision_fleet_bundle
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import ESCROW_RECIPIENT
from bureau.wire.service_route import ServiceRoute

BUNDLE = "shared"
SLEEPER = "import time\nwhile True: time.sleep(60)\n"
TEMPLATE = "fleet-worker"


@dataclass
class Node:
    """An enrolled machine, its run dir and the services running for it."""

    machine: Enrolled
    run_dir: Path
    services: list[Service] = field(default_factory=list)

    @property
    def launcher(self) -> Service:
        return self.services[1]

    @property
    def daemon(self) -> Service:
        return self.services[2]

    def socket(self, principal: str) -> Path:
        return proxy_socket(self.run_dir, principal)

    def logs(self) -> str:
        return "".join(s.log() for s in self.services)


@contextlib.contextmanager
def node(machine: Enrolled, fleet: Fleet, *, started: bool = True) -> Iterator[Node]:
    """``machine``'s sandboxd, and (``started``) its launcher and daemon (otherwise the test
    starts them on ``run_dir``); all stopped, and their sandboxes killed, after."""
    run_dir = Path(tempfile.mkdtemp(prefix="bureau-run-", dir="/tmp"))
    run_dir.chmod(0o751)  # the sandbox's uid passes through to its socket link
    sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
    name, state = machine.machine.short_name, machine.state_dir
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, sandbox_dir, ignore_errors=True)
        stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
        stack.callback(kill_sandboxes_under, run_dir)
        out = Node(machine, run_dir)
        out.services.append(
            stack.enter_context(sandboxd(run_dir, state, sandbox_dir, **fleet_of(fleet)))
        )
        if started:
            out.services.append(
                stack.enter_context(launcher(name, state, run_dir, *broker_args(run_dir)))
            )
            out.services.append(stack.enter_context(daemon(name, state, run_dir)))
        yield out


def bureau_run(
    fleet: Fleet, *args: str | Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``bureau ARGS --credential-file ...``, run as the operator; whatever it did."""
    return run("bureau", *args, "--credential-file", fleet.credential_file, stdin=stdin)


def bureau(fleet: Fleet, *args: str | Path, stdin: str | None = None) -> str:
    """``bureau ARGS --credential-file ...``, which must succeed; its stdout and stderr."""
    done = bureau_run(fleet, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def escrow(tmp_path: Path) -> tuple[Path, str]:
    """The operator's escrow identity (0600, as age-keygen writes it) and its recipient,
    in ``tmp_path`` (made if need be: one test may keep two)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    identity = tmp_path / "escrow.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, check=True)
    identity.chmod(0o600)
    public = subprocess.run(
        ["age-keygen", "-y", str(identity)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return identity, public


def fleet_services(tmp_path: Path, upstream: str) -> Path:
    """The bundle's one route: ``fleet``, its X-Api-Key from FLEET_TOKEN."""
    path = tmp_path / "fleet-services.json"
    route = {"upstream_url": upstream, "inject_headers": {"X-Api-Key": "FLEET_TOKEN"}}
    path.write_text(json.dumps({"fleet": route}))
    return path


def provision_bundle(
    fleet: Fleet,
    machines: list[Enrolled],
    secrets: dict[str, str],
    upstream: str,
    *,
    max_recipients: int = MAX_RECIPIENTS,
) -> list[str]:
    """BUNDLE for ``machines``, its route ``fleet`` to ``upstream``, through the operator's
    code (``bureau credentials provision --fleet-bundle``'s); its shards' state keys.
    ``max_recipients`` 1 splits it one machine a shard, as a fleet past the cap gets it."""
    request = FleetBundleRequest(
        name=BUNDLE,
        machines=tuple(m.machine.localpart for m in machines),
        secrets={k: Secret(v) for k, v in secrets.items()},
        services={"fleet": ServiceRoute(upstream, {"X-Api-Key": "FLEET_TOKEN"})},
        services_where="test",
        escrow_recipient=age_keys.generate()[1],
    )
    return provision_fleet_bundle(fleet.creds, request, max_recipients=max_recipients)


def push_template(fleet: Fleet, tmp_path: Path) -> None:
    """The template naming the fleet bundle (``${FLEET_ROOM}:shared``)."""
    ns = fleet.name.split("/")[0]
    body = {
        **python_template(f"{ns}/template:agent-base", SLEEPER),
        "credential_ref": f"${{FLEET_ROOM}}:{BUNDLE}",
    }
    path = tmp_path / f"{TEMPLATE}.json"
    path.write_text(json.dumps(body))
    bureau(fleet, "template", "push", path, "--name", TEMPLATE)


def start_principal(
    fleet: Fleet, tmp_path: Path, upstream: str, machine: Enrolled, principal: str, *, token: str
) -> str:
    """``principal`` on ``machine`` from the fleet template, its own TOKEN behind ``api``
    (``bureau agent create``: credentials and assignment); the CLI's output."""
    services = tmp_path / "own-services.json"
    route = {"upstream_url": upstream, "auth_scheme": "Bearer"}
    services.write_text(
        json.dumps({"api": {**route, "inject_headers": {"Authorization": "TOKEN"}}})
    )
    return bureau(fleet, "agent", "create", TEMPLATE, "--machine", machine.machine.short_name,
                  "--name", principal, "--services", services, "--secrets-file", "-",
                  stdin=f"TOKEN={token}\n")  # fmt: skip


def fleet_value(socket: Path) -> str | None:
    """The X-Api-Key the echo upstream received through the fleet route; None if the
    request did not go through. The workload's answer never holds it."""
    request_id = uuid.uuid4().hex
    try:
        reply = unix_request(
            socket, "GET", "/http/fleet/x", headers={"X-Request-Id": request_id}, timeout=5
        )
    except OSError:
        return None
    if reply.status != 200:
        return None
    received = echo_received(request_id)
    assert received is not None
    value = received["headers"].get("x-api-key")
    assert value not in json.dumps(reply.json()), "the workload saw the fleet credential"
    return None if value is None else str(value)


def fleet_room(fleet: Fleet) -> str:
    """The fleet room's ID."""
    alias = names.room_alias(names.fleet_room_localpart(fleet.name), fleet.hub.server_name)
    room = admin_client(fleet.creds).resolve_alias(alias)
    assert room is not None
    return room


def room_events(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """The fleet room's credentials events, state key -> content (tombstones included)."""
    return {
        str(e["state_key"]): e["content"]
        for e in admin_client(fleet.creds).room_state_events(fleet_room(fleet))
        if e.get("type") == rooms.CREDENTIALS
    }


def machines_of(content: dict[str, Any]) -> list[str]:
    """The machines a bundle (or shard) is encrypted for, the escrow left out."""
    recipients = content["encrypted_for"]
    assert isinstance(recipients, list)
    return [str(u) for u in recipients if u != ESCROW_RECIPIENT]


def age_open(content: dict[str, Any], identity: Path) -> dict[str, str] | None:
    """The bundle opened by the age CLI with ``identity``; None when it cannot."""
    result = subprocess.run(
        ["age", "-d", "-i", str(identity)],
        input=base64.b64decode(content["ciphertext"]),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    opened: dict[str, str] = json.loads(result.stdout)
    return opened


def user_of(fleet: Fleet, principal: str) -> str:
    return names.user_id(f"{fleet.name}/{principal}", fleet.hub.server_name)


def recorded_fleet(run_dir: Path, principal_user: str) -> dict[str, Any] | None:
    """The fleet shard (``{"state_key", "content"}``) in the launcher's record of
    ``principal_user``'s proxy (R/launcher/proxies/*.json: the spec it serves); None
    without one."""
    for path in (run_dir / "launcher" / "proxies").glob("*.json"):
        record = json.loads(path.read_text())
        if record.get("principal") == principal_user:
            fleet: dict[str, Any] | None = record["content"].get("fleet_credentials")
            return fleet
    return None


def recorded_shard(run_dir: Path, principal_user: str) -> str | None:
    """The state key of the fleet shard the launcher serves ``principal_user`` from."""
    fleet = recorded_fleet(run_dir, principal_user)
    return None if fleet is None else str(fleet["state_key"])


def cached_ensure(state_dir: Path, principal_user: str) -> dict[str, Any]:
    """The signed ensure the daemon last sent for ``principal_user``, from its offline
    cache (daemon/offline_cache.py): launcher-protocol field names."""
    cache = json.loads((state_dir / "offline-cache.json").read_text())
    (entry,) = [e for e in cache["principals"] if e["principal"] == principal_user]
    found: dict[str, Any] = entry
    return found
