"""Fleet bundles served end to end on real workers (#20 part 1): a real hub, and per
machine a real sandboxd, launcher and daemon. Principals run from a template whose
``credential_ref`` names a fleet bundle published in the fleet room; each machine's proxy
injects the fleet's credential beside the principal's own (read from what the echo
upstream received). A rotation is served by every machine; a machine the bundle does not
name runs no principal on it, and one the operator takes out of the bundle stops its
principal; logs name principal and bundle, never a value. A fleet key that collides with
the principal's, and forged bundles (unsigned, a stranger's key, the operator's signature
over other content), are refused and what runs runs on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, run
from launcher_proc import Service, broker_args, daemon, launcher, proxies_under, sandboxd
from machine_helpers import Enrolled, enroll, eventually, proxy_socket, served_token
from processes import echo_received, echo_upstream, unix_request
from sandbox_helpers import fleet_of, kill_sandboxes_under, python_template

from bureau import age_keys
from bureau.operator.credentials import admin_client
from bureau.operator.fleet_bundles import FleetBundleRequest, provision_fleet_bundle
from bureau.operator.principal_credentials import machine_public_key
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
    rfc3339_now,
)
from bureau.wire.fleet_bundle import binding_principal, signing_target
from bureau.wire.service_route import ServiceRoute
from bureau.wire.signing import OperatorKey, sign

BUNDLE = "shared"
SLEEPER = "import time\nwhile True: time.sleep(60)\n"
CANARY = "fleet-canary-"  # every fleet value starts with it; none may reach a log


@dataclass
class Worker:
    machine: Enrolled
    principal: str  # agent/<x>
    run_dir: Path
    launcher: Service | None = None
    daemon: Service | None = None

    @property
    def socket(self) -> Path:
        return proxy_socket(self.run_dir, self.principal)

    def logs(self) -> str:
        return "".join(s.log() for s in (self.launcher, self.daemon) if s is not None)


def _bureau(fleet: Fleet, *args: str | Path, stdin: str | None = None) -> None:
    done = run("bureau", *args, "--credential-file", fleet.credential_file, stdin=stdin)
    assert done.returncode == 0, done.stderr


def _fleet_room(fleet: Fleet) -> str:
    admin = admin_client(fleet.creds)
    alias = names.room_alias(names.fleet_room_localpart(fleet.name), fleet.hub.server_name)
    room = admin.resolve_alias(alias)
    assert room is not None
    return room


def fleet_bundle(
    fleet: Fleet,
    machines: list[Enrolled],
    secrets: dict[str, str],
    upstream: str,
    *,
    key: OperatorKey | None = None,
    signed: bool = True,
) -> dict[str, Any]:
    """A fleet bundle of the right shape, written by hand (wire/fleet_bundle.py): principal
    "", the machines and an escrow in encrypted_for, bound to fleet:<name> and its
    services, signed about its place in the fleet room by ``key`` (the operator's unless
    given), or not at all: what someone who can write the fleet room could forge."""
    admin = admin_client(fleet.creds)
    server = fleet.hub.server_name
    keys = [machine_public_key(admin, fleet.creds, m.machine.localpart) for m in machines]
    services = {"fleet": ServiceRoute(upstream, {"X-Api-Key": "FLEET_TOKEN"})}
    plaintext = bundle_plaintext(
        {k: Secret(v) for k, v in secrets.items()}, binding_principal(BUNDLE), services
    )
    escrow = age_keys.generate()[1]
    event = CredentialsEvent(
        principal="",
        encrypted_for=(*(m.machine.user_id for m in machines), ESCROW_RECIPIENT),
        keys=tuple(sorted(secrets)),
        ciphertext=age_keys.encrypt(plaintext, [*keys, escrow]),
        provisioned_by=fleet.creds.admin_user,
        provisioned_at=rfc3339_now(),
        signature=binding_digest(binding_principal(BUNDLE), services),
        services=services,
    )
    content = event.to_json()
    if not signed:
        return content
    target = signing_target(names.fleet_room_localpart(fleet.name), server, BUNDLE)
    signer = key or fleet.creds.signing_key
    assert signer is not None
    return sign(content, rooms.CREDENTIALS, target, signer)


def publish(fleet: Fleet, content: dict[str, Any]) -> None:
    """A bundle written by hand (a forgery's way in: anyone who can write the fleet room)."""
    admin_client(fleet.creds).put_state(_fleet_room(fleet), rooms.CREDENTIALS, BUNDLE, content)


def provision(
    fleet: Fleet, machines: list[Enrolled], secrets: dict[str, str], upstream: str
) -> None:
    """The operator's way: ``bureau credentials provision --fleet-bundle``'s code."""
    request = FleetBundleRequest(
        name=BUNDLE,
        machines=tuple(m.machine.localpart for m in machines),
        secrets={k: Secret(v) for k, v in secrets.items()},
        services={"fleet": ServiceRoute(upstream, {"X-Api-Key": "FLEET_TOKEN"})},
        services_where="test",
        escrow_recipient=age_keys.generate()[1],
    )
    assert provision_fleet_bundle(fleet.creds, request) == [BUNDLE]


def fleet_value(socket: Path) -> str | None:
    """The X-Api-Key the echo upstream received through the fleet route; None if the
    request did not go through."""
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


@contextlib.contextmanager
def workers(
    fleet: Fleet, tmp_path: Path, principals: list[str], *, started: bool = True
) -> Iterator[list[Worker]]:
    """One enrolled machine per principal, each with sandboxd, and (``started``) its
    launcher and daemon."""
    out: list[Worker] = []
    with contextlib.ExitStack() as stack:
        for index, principal in enumerate(principals):
            machine = enroll(fleet, tmp_path / f"m{index}")
            run_dir = Path(tempfile.mkdtemp(prefix="bureau-run-", dir="/tmp"))
            run_dir.chmod(0o751)  # the sandbox's uid passes through to its socket link
            sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
            stack.callback(shutil.rmtree, sandbox_dir, ignore_errors=True)
            stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
            stack.callback(kill_sandboxes_under, run_dir)
            name, state = machine.machine.short_name, machine.state_dir
            stack.enter_context(sandboxd(run_dir, state, sandbox_dir, **fleet_of(fleet)))
            worker = Worker(machine, principal, run_dir)
            out.append(worker)
            if not started:
                continue
            worker.launcher = stack.enter_context(
                launcher(name, state, run_dir, *broker_args(run_dir))
            )
            worker.daemon = stack.enter_context(daemon(name, state, run_dir))
        yield out


def start(fleet: Fleet, tmp_path: Path, upstream: str, worker: Worker, token: str) -> None:
    """The principal, from the template naming the fleet bundle, with its own TOKEN."""
    services = tmp_path / "own-services.json"
    route = {"upstream_url": upstream, "auth_scheme": "Bearer"}
    services.write_text(
        json.dumps({"api": {**route, "inject_headers": {"Authorization": "TOKEN"}}})
    )
    machine = worker.machine.machine.short_name
    _bureau(fleet, "agent", "create", "fleet-worker", "--machine", machine,
            "--name", worker.principal, "--services", services, "--secrets-file", "-",
            stdin=f"TOKEN={token}\n")  # fmt: skip


def push_template(fleet: Fleet, tmp_path: Path) -> None:
    ns = fleet.name.split("/")[0]
    body = {
        **python_template(f"{ns}/template:agent-base", SLEEPER),
        "credential_ref": f"${{FLEET_ROOM}}:{BUNDLE}",
    }
    path = tmp_path / "fleet-worker.json"
    path.write_text(json.dumps(body))
    _bureau(fleet, "template", "push", path, "--name", "fleet-worker")


def machine_status(fleet: Fleet, worker: Worker) -> dict[str, Any]:
    admin = admin_client(fleet.creds)
    server = fleet.hub.server_name
    room = admin.resolve_alias(names.room_alias(names.machine_room_localpart(fleet.name), server))
    assert room is not None
    key = names.state_key(worker.machine.machine.localpart, server)
    return admin.get_state(room, rooms.MACHINE_STATUS, key) or {}


def user_of(fleet: Fleet, principal: str) -> str:
    return names.user_id(f"{fleet.name}/{principal}", fleet.hub.server_name)


@pytest.mark.slow
def test_a_fleet_bundle_is_served_by_the_machines_it_names_and_only_them(
    fleet: Fleet, tmp_path: Path
) -> None:
    push_template(fleet, tmp_path)
    with (
        echo_upstream() as upstream,
        workers(fleet, tmp_path, ["agent/a", "agent/b", "agent/c"]) as (a, b, c),
    ):
        provision(fleet, [a.machine, b.machine], {"FLEET_TOKEN": CANARY + "1"}, upstream)
        for worker in (a, b, c):
            start(fleet, tmp_path, upstream, worker, f"{CANARY}own-{worker.principal[-1]}")
        # Both named machines inject the fleet's credential beside the principal's own.
        for worker in (a, b):
            eventually(lambda w=worker: fleet_value(w.socket) == CANARY + "1", 60)
            assert served_token(worker.socket) == f"Bearer {CANARY}own-{worker.principal[-1]}"
        # The third machine runs no principal on a bundle that does not name it: its daemon
        # says which principal and which bundle, and machine_status carries the reason.
        c_user = user_of(fleet, "agent/c")
        assert c.daemon is not None
        assert c.launcher is not None
        line = c.daemon.lines[c.daemon.wait_for("its fleet bundle is not served here")]
        assert c_user in line
        assert f'"bundle": "{BUNDLE}"' in line
        reason = eventually(
            lambda: machine_status(fleet, c).get("principals", {}).get(c_user, {}).get("error")
        )
        assert reason == f"fleet bundle {BUNDLE} names no shard for this machine; not served here"
        assert not c.socket.exists()
        assert "proxy started" not in c.launcher.log()

        # A rotation is served by both.
        provision(fleet, [a.machine, b.machine], {"FLEET_TOKEN": CANARY + "2"}, upstream)
        for worker in (a, b):
            eventually(lambda w=worker: fleet_value(w.socket) == CANARY + "2", 30)

        # The operator takes b out of the bundle: b's principal loses the credential, and so
        # stops; a serves the new one.
        provision(fleet, [a.machine], {"FLEET_TOKEN": CANARY + "3"}, upstream)
        eventually(lambda: fleet_value(a.socket) == CANARY + "3", 30)
        eventually(lambda: not b.socket.exists(), 30)
        assert served_token(a.socket) == f"Bearer {CANARY}own-a"
        logs = "".join(w.logs() for w in (a, b, c))
    assert CANARY not in logs


@pytest.mark.slow
def test_colliding_and_forged_fleet_bundles_are_refused_and_what_runs_runs_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    push_template(fleet, tmp_path)
    server = fleet.hub.server_name
    user = user_of(fleet, "agent/a")
    with echo_upstream() as upstream, workers(fleet, tmp_path, ["agent/a"]) as (a,):
        assert a.launcher is not None
        provision(fleet, [a.machine], {"FLEET_TOKEN": CANARY + "1"}, upstream)
        good = admin_client(fleet.creds).get_state(_fleet_room(fleet), rooms.CREDENTIALS, BUNDLE)
        assert good is not None
        start(fleet, tmp_path, upstream, a, f"{CANARY}own-a")
        eventually(lambda: fleet_value(a.socket) == CANARY + "1", 60)
        at = 0

        def refused(reason: str) -> None:
            nonlocal at
            assert a.launcher is not None
            while True:  # the daemon retries earlier refusals meanwhile
                index = a.launcher.wait_for(reason, start=at)
                at = index + 1
                line = a.launcher.lines[index]
                if f'"principal": "{user}"' in line and "request refused" in line:
                    assert f"fleet bundle {BUNDLE} for {user}" in line
                    return

        # A fleet key that the principal's own bundle holds too: named, never its value.
        both = {"FLEET_TOKEN": CANARY + "x", "TOKEN": CANARY + "y"}
        provision(fleet, [a.machine], both, upstream)
        refused("credential TOKEN is also in the principal's own bundle; refused")
        # Unsigned; signed by a key no machine trusts; the operator's signature over other
        # content (another bundle's).
        other = {"FLEET_TOKEN": CANARY + "f"}
        publish(fleet, fleet_bundle(fleet, [a.machine], other, upstream, signed=False))
        refused("signatures: absent: not signed by an operator")
        stranger = OperatorKey.generate()
        publish(fleet, fleet_bundle(fleet, [a.machine], other, upstream, key=stranger))
        refused("signed by no operator key this machine trusts")
        unsigned = fleet_bundle(fleet, [a.machine], other, upstream, signed=False)
        publish(fleet, {**unsigned, "signatures": good["signatures"]})
        refused("does not match this content")
        # Signed for another place: the bundle's shard 1 key, not its own.
        target = signing_target(names.fleet_room_localpart(fleet.name), server, BUNDLE + "#1")
        signing_key = fleet.creds.signing_key
        assert signing_key is not None
        publish(fleet, sign(unsigned, rooms.CREDENTIALS, target, signing_key))
        refused("does not match this content")
        # What ran, runs: the first fleet value and the principal's own.
        assert fleet_value(a.socket) == CANARY + "1"
        assert served_token(a.socket) == f"Bearer {CANARY}own-a"
        logs = a.logs()
    assert CANARY not in logs


@pytest.mark.slow
def test_a_proxy_with_a_fleet_bundle_starts_again_from_its_record(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A proxy that dies is started again, with the fleet bundle, by its launcher; one that
    died with its launcher, by the next launcher, from the spec it recorded (no daemon)."""
    push_template(fleet, tmp_path)
    with echo_upstream() as upstream, workers(fleet, tmp_path, ["agent/a"], started=False) as (a,):
        name, state = a.machine.machine.short_name, a.machine.state_dir
        provision(fleet, [a.machine], {"FLEET_TOKEN": CANARY + "1"}, upstream)
        with (
            launcher(name, state, a.run_dir, *broker_args(a.run_dir)) as first,
            daemon(name, state, a.run_dir) as the_daemon,
        ):
            start(fleet, tmp_path, upstream, a, f"{CANARY}own-a")
            eventually(lambda: fleet_value(a.socket) == CANARY + "1", 60)
            (pid,) = proxies_under(a.run_dir)
            os.kill(pid, signal.SIGKILL)
            eventually(lambda: proxies_under(a.run_dir) not in ([], [pid]), 30)
            eventually(lambda: fleet_value(a.socket) == CANARY + "1", 30)
            the_daemon.stop()
        # Leaving the launcher killed its proxies: the next one starts them from its records.
        with launcher(name, state, a.run_dir, *broker_args(a.run_dir)) as second:
            eventually(lambda: fleet_value(a.socket) == CANARY + "1", 30)
            assert served_token(a.socket) == f"Bearer {CANARY}own-a"
            logs = first.log() + the_daemon.log() + second.log()
    assert CANARY not in logs
