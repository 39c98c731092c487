"""Only the operator tells a worker what to run and with which credentials (#19 part 1):
a real hub, launcher and daemon, events written by `bureau` (signed) and by someone who
can write the machine's rooms but holds no operator key (forged). Every forgery has the
right shape and reaches the launcher through the real daemon; each is refused in one
line naming the principal and why, and what runs keeps running as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, run
from launcher_proc import RunningLauncher, broker_args, daemon, launcher, sandboxd
from machine_helpers import (
    Enrolled,
    assign,
    credentials_event,
    enroll,
    eventually,
    provision_credentials,
    proxy_socket,
    served_token,
    services_file,
)
from processes import echo_upstream
from sandbox_helpers import (
    PROXY_CLIENT,
    fleet_of,
    kill_sandboxes_under,
    python_template,
    workspace_of,
)

from bureau.operator import credentials
from bureau.operator.credentials import admin_client
from bureau.operator.principal_credentials import (
    CredentialRequest,
    build_event,
    config_room_of,
    machine_public_key,
)
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.service_route import ServiceRoute
from bureau.wire.signing import OperatorKey, sign


def _bundle(fleet: Fleet, machine: Enrolled, principal: str, token: str, upstream: str) -> Any:
    """A bundle of the right shape, encrypted to the machine's public key (which anyone can
    read) and bound as bureau binds them: unsigned."""
    admin = admin_client(fleet.creds)
    key = machine_public_key(admin, fleet.creds, machine.machine.localpart)
    request = CredentialRequest(
        machine=machine.machine.localpart,
        principal=f"{fleet.name}/{principal}",
        services={"api": ServiceRoute(upstream, {"Authorization": "TOKEN"}, "Bearer")},
        secrets={"TOKEN": Secret(token)},
        services_where="test",
    )
    return build_event(request, fleet.creds, key, None).to_json()


def _put(fleet: Fleet, machine: Enrolled, kind: str, key: str, content: Any) -> None:
    admin = admin_client(fleet.creds)
    room = config_room_of(admin, fleet.creds, machine.machine.localpart)
    admin.put_state(room, kind, key, content)


def _refused(the_launcher: RunningLauncher, at: int, principal: str, reason: str) -> int:
    """Waits for the launcher's one refusal line naming ``principal`` and ``reason``."""
    while True:  # the daemon retries earlier refusals meanwhile
        index = the_launcher.wait_for(reason, start=at)
        line = the_launcher.lines[index]
        if f'"principal": "{principal}"' in line:
            assert "request refused" in line
            return index + 1
        at = index + 1


def _bureau(fleet: Fleet, *args: str | Path) -> Any:
    done = run("bureau", *args, "--credential-file", fleet.credential_file)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_forged_bundles_and_assignments_are_refused_and_rotation_works(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    server = fleet.hub.server_name
    alpha = names.user_id(f"{fleet.name}/agent/alpha", server)
    alpha_key = names.state_key(f"{fleet.name}/agent/alpha", server)
    first_key = fleet.creds.signing_key
    assert first_key is not None
    pinned = json.loads((state / "operator-keys.json").read_text())
    assert pinned == {"keys": {first_key.key_id: first_key.public.base64}, "revoked": {}}
    assert (state / "operator-keys.json").stat().st_mode & 0o777 == 0o644
    with (
        echo_upstream() as upstream,
        launcher(name, state, run_dir) as the_launcher,
        daemon(name, state, run_dir),
    ):
        services = services_file(tmp_path, upstream)
        done = provision_credentials(fleet, machine, "agent/alpha", services, "TOKEN=gen-1\n")
        assert done.returncode == 0, done.stderr
        assign(fleet, machine)
        socket = proxy_socket(run_dir)
        eventually(lambda: served_token(socket) == "Bearer gen-1")
        signed = credentials_event(fleet, machine)
        at = 0

        # A bundle of the right shape, with no signature.
        def bundle(token: str) -> Any:
            return _bundle(fleet, machine, "agent/alpha", token, upstream)

        _put(fleet, machine, rooms.CREDENTIALS, alpha_key, bundle("x-1"))
        at = _refused(the_launcher, at, alpha, "signatures: absent: not signed by an operator")
        # Signed, by a key no machine trusts.
        stranger = OperatorKey.generate()
        forged = sign(bundle("x-2"), rooms.CREDENTIALS, alpha, stranger)
        _put(fleet, machine, rooms.CREDENTIALS, alpha_key, forged)
        at = _refused(the_launcher, at, alpha, "signed by no operator key this machine trusts")
        # The operator's valid signature, over other content (another bundle's).
        other = {**bundle("x-3"), "signatures": signed["signatures"]}
        _put(fleet, machine, rooms.CREDENTIALS, alpha_key, other)
        at = _refused(the_launcher, at, alpha, "does not match this content")
        assert served_token(socket) == "Bearer gen-1"  # what ran, runs

        # An assignment forged for beta (whose bundle the operator did sign): unsigned,
        # then with alpha's valid entry signature copied onto it.
        done = provision_credentials(fleet, machine, "agent/beta", services, "TOKEN=beta\n")
        assert done.returncode == 0, done.stderr
        admin = admin_client(fleet.creds)
        room = config_room_of(admin, fleet.creds, machine.machine.localpart)
        config_key = names.state_key(machine.machine.localpart, server)
        config = admin.get_state(room, rooms.MACHINE_CONFIG, config_key)
        assert config is not None
        beta = names.user_id(f"{fleet.name}/agent/beta", server)
        entry = {"principal": beta, "auto_start": True}
        entries = config["principals"]
        _put(fleet, machine, rooms.MACHINE_CONFIG, config_key, {"principals": [*entries, entry]})
        at = _refused(the_launcher, at, beta, f"assignment of {beta}: signatures: absent")
        copied = {**entry, "signatures": config["principals"][0]["signatures"]}
        _put(fleet, machine, rooms.MACHINE_CONFIG, config_key, {"principals": [*entries, copied]})
        at = _refused(the_launcher, at, beta, "does not match this content")
        assert not proxy_socket(run_dir, "agent/beta").exists()
        assert served_token(socket) == "Bearer gen-1"

        # Rotation: the new key, stated by the old, is trusted once the daemon relays it;
        # the old one, once revoked, is refused from then on.
        _bureau(fleet, "operator-key", "rotate")
        new_key = credentials.load(fleet.credential_file).signing_key
        assert new_key is not None
        assert new_key.key_id != first_key.key_id
        done = provision_credentials(fleet, machine, "agent/alpha", services, "TOKEN=gen-2\n")
        assert done.returncode == 0, done.stderr
        eventually(lambda: served_token(socket) == "Bearer gen-2")
        _bureau(fleet, "operator-key", "revoke", first_key.key_id)
        the_launcher.wait_for(f"revoked {first_key.key_id}", start=at)
        by_old = sign(bundle("x-4"), rooms.CREDENTIALS, alpha, first_key)
        _put(fleet, machine, rooms.CREDENTIALS, alpha_key, by_old)
        _refused(the_launcher, at, alpha, f"signed by {first_key.key_id}, a removed operator key")
        assert served_token(socket) == "Bearer gen-2"
        logs = the_launcher.log()
    pinned = json.loads((state / "operator-keys.json").read_text())
    assert set(pinned["keys"]) == {new_key.key_id}
    assert set(pinned["revoked"]) == {first_key.key_id}
    for key in (first_key, new_key, stranger):
        assert key.reveal().reveal().split()[2] not in logs


TEMPLATE_WORKLOAD = (
    PROXY_CLIENT
    + r"""
with open("/workspace/.r", "w") as f: f.write("%d %s" % (os.getpid(), os.environ["FLAVOUR"]))
os.rename("/workspace/.r", "/workspace/result")
while True: time.sleep(60)
"""
)


@pytest.mark.slow
def test_forged_templates_are_refused_and_the_workload_runs_on(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    ns, server = fleet.name.split("/")[0], fleet.hub.server_name
    user = names.user_id(f"{fleet.name}/agent/worker", server)
    body = python_template(f"{ns}/template:agent-base", TEMPLATE_WORKLOAD, FLAVOUR="signed")
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(body))
    _bureau(fleet, "template", "push", path, "--name", "worker")
    run_dir.chmod(0o751)  # the sandbox's uid passes through to its socket link
    sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
    result = workspace_of(sandbox_dir, user) / "result"
    admin = admin_client(fleet.creds)
    room = admin.resolve_alias(names.room_alias(names.template_room_localpart(fleet.name), server))
    assert room is not None
    try:
        with (
            echo_upstream() as upstream,
            sandboxd(run_dir, state, sandbox_dir, **fleet_of(fleet)),
            launcher(name, state, run_dir, *broker_args(run_dir)) as the_launcher,
            daemon(name, state, run_dir),
        ):
            services = services_file(tmp_path, upstream)
            flags: list[str | Path] = ["--services", services, "--secrets-file", "-"]
            created = run("bureau", "agent", "create", "worker", "--machine", name,
                          "--name", "agent/worker", *flags, "--credential-file",
                          fleet.credential_file, stdin="TOKEN=t\n")  # fmt: skip
            assert created.returncode == 0, created.stderr
            running = eventually(lambda: result.exists() and result.read_text(), 60)
            assert running.endswith(" signed")
            signed = admin.get_state(room, "m.bureau.template", "worker")
            assert signed is not None
            at = 0
            # The operator's signature over other content: the same template, widened.
            variables = {**signed["environment_variables"], "FLAVOUR": "forged"}
            widened = {**signed, "environment_variables": variables}
            admin.put_state(room, "m.bureau.template", "worker", widened)
            at = _refused(the_launcher, at, user, "does not match this content")
            # Unsigned, as upstream writes templates.
            unsigned = {k: v for k, v in widened.items() if k != "signatures"}
            admin.put_state(room, "m.bureau.template", "worker", unsigned)
            at = _refused(the_launcher, at, user, "signatures: absent")
            # A parent forged under a signed child: the chain is checked, not its head.
            admin.put_state(room, "m.bureau.template", "worker", signed)
            base = admin.get_state(room, "m.bureau.template", "agent-base")
            assert base is not None
            variables = {**base.get("environment_variables", {}), "FORGED": "1"}
            forged_base = {**base, "environment_variables": variables}
            admin.put_state(room, "m.bureau.template", "agent-base", forged_base)
            _refused(the_launcher, at, user, f"template {ns}/template:agent-base")
            assert result.read_text() == running  # the same workload, untouched
    finally:
        kill_sandboxes_under(run_dir)
