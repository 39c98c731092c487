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
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet
from fleet_helpers import (
    BUNDLE,
    fleet_room,
    fleet_value,
    node,
    provision_bundle,
    push_template,
    start_principal,
    user_of,
)
from launcher_proc import Service, broker_args, daemon, launcher, proxies_under
from machine_helpers import Enrolled, enroll, eventually, proxy_socket, served_token
from processes import echo_upstream

from bureau import age_keys
from bureau.operator.credentials import admin_client
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
    admin_client(fleet.creds).put_state(fleet_room(fleet), rooms.CREDENTIALS, BUNDLE, content)


def provision(
    fleet: Fleet, machines: list[Enrolled], secrets: dict[str, str], upstream: str
) -> None:
    """The operator's way (``bureau credentials provision --fleet-bundle``'s code): one
    shard."""
    assert provision_bundle(fleet, machines, secrets, upstream) == [BUNDLE]


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
            at = stack.enter_context(node(machine, fleet, started=started))
            worker = Worker(machine, principal, at.run_dir)
            if started:
                worker.launcher, worker.daemon = at.launcher, at.daemon
            out.append(worker)
        yield out


def start(fleet: Fleet, tmp_path: Path, upstream: str, worker: Worker, token: str) -> None:
    """The worker's principal, from the template naming the fleet bundle, with its own
    TOKEN."""
    start_principal(fleet, tmp_path, upstream, worker.machine, worker.principal, token=token)


def machine_status(fleet: Fleet, worker: Worker) -> dict[str, Any]:
    admin = admin_client(fleet.creds)
    server = fleet.hub.server_name
    room = admin.resolve_alias(names.room_alias(names.machine_room_localpart(fleet.name), server))
    assert room is not None
    key = names.state_key(worker.machine.machine.localpart, server)
    return admin.get_state(room, rooms.MACHINE_STATUS, key) or {}


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
        good = admin_client(fleet.creds).get_state(fleet_room(fleet), rooms.CREDENTIALS, BUNDLE)
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
