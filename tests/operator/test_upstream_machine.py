"""A principal provisioned the upstream way, on our worker (a real Synapse, bureau-sandboxd,
launcher and daemon): its account, an upstream-shaped template, machine config and
credentials bundle (no binding, no services), each written as upstream's tools write
them. A machine that does not allow unbound bundles refuses it in one line; one that does
runs its workload, which reaches its API with the template's route and Matrix as itself;
a launcher switched back to refusing them stops what it adopted. The daemon publishes
m.bureau.machine_info in upstream's shape."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet
from launcher_proc import UNSIGNED, broker_args, daemon, launcher, proxies_under, sandboxd
from machine_helpers import Enrolled, enroll, eventually
from processes import echo_authorizations, echo_upstream, stars
from sandbox_helpers import PROXY_CLIENT, PYTHON, SYSTEM, fleet_of, kill_sandboxes_under
from sandbox_helpers import workspace_of as workspace_dir
from upstream_shapes import go_base64, go_json

from bureau import age_keys
from bureau.matrix.client import MatrixHTTP
from bureau.operator import agents, credentials
from bureau.secret import Secret
from bureau.wire import names, rooms

CANARY = "ghp_upstream-canary-7"
WORKLOAD = (
    PROXY_CLIENT
    + r"""
_, api = call("GET", "/http/api/x")
_, me = call("GET", "/http/matrix/_matrix/client/v3/account/whoami")
out = {"api": api["headers"].get("authorization"), "user_id": me.get("user_id")}
with open("/workspace/.r", "w") as f: json.dump(out, f)
os.rename("/workspace/.r", "/workspace/result.json")
while True: time.sleep(60)
"""
)


def upstream_template(upstream: str) -> dict[str, Any]:
    """lib/schema/events_template.go (TemplateContent): command, environment_variables,
    filesystem (TemplateMount :855-880), namespaces (:885-901), resources,
    required_credentials (:480) and proxy_services (:592, TemplateProxyService :607-637,
    whose auth_scheme its docs spell "bearer")."""
    return {
        "description": "written by upstream's tools",
        "command": [PYTHON, "-c", "import base64, os; exec(base64.b64decode(os.environ['W']))"],
        "environment_variables": {
            "W": base64.b64encode(WORKLOAD.encode()).decode(),
            "HOME": "/workspace",
            "PATH": "/usr/bin:/bin",
        },
        "filesystem": SYSTEM,
        "namespaces": {"pid": True, "net": True, "ipc": True, "uts": True},
        "resources": {"pids_limit": 128},
        "required_credentials": ["github-token"],
        "proxy_services": {
            "api": {
                "upstream": upstream,
                "inject_headers": {"Authorization": "github-token"},
                "auth_scheme": "bearer",
                "strip_headers": ["x-agent-secret"],
            }
        },
    }


def _publish_upstream_principal(
    fleet: Fleet, machine: Enrolled, upstream: str
) -> tuple[str, dict[str, Any]]:
    """Everything an upstream operator publishes for a principal on this machine; the
    principal's user ID and the credentials content."""
    admin = credentials.admin_client(fleet.creds)
    server = fleet.hub.server_name
    localpart = f"{fleet.name}/agent/upstream"
    user = names.user_id(localpart, server)
    MatrixHTTP(fleet.hub.url).register_with_token(
        localpart, Secret(secrets.token_hex(16)), fleet.hub.token
    )
    matrix_token = agents.mint_token(admin, fleet.creds, localpart)
    template_room = admin.resolve_alias(
        names.room_alias(names.template_room_localpart(fleet.name), server)
    )
    assert template_room is not None
    admin.put_state(
        template_room, "m.bureau.template", "upstream-worker", upstream_template(upstream)
    )
    config_room = admin.resolve_alias(names.room_alias(machine.machine.localpart, server))
    assert config_room is not None
    ns = fleet.name.split("/")[0]
    # lib/schema/events_machine.go:361-381 and events_template.go:115-300: principals
    # with template and auto_start always written, plus fields we do not act on.
    admin.put_state(
        config_room,
        rooms.MACHINE_CONFIG,
        names.state_key(machine.machine.localpart, server),
        {
            "principals": [
                {
                    "principal": user,
                    "template": f"{ns}/template:upstream-worker",
                    "auto_start": True,
                    "labels": {"role": "agent"},
                    "payload": {"max_tokens": 4096},
                }
            ],
            "bureau_version": {
                "daemon_store_path": "/nix/store/a-bureau-daemon/bin/bureau-daemon",
                "launcher_store_path": "/nix/store/b-bureau-launcher/bin/bureau-launcher",
                "proxy_store_path": "/nix/store/c-bureau-proxy/bin/bureau-proxy",
            },
        },
    )
    # lib/credential/provision.go:96-159: the map as given, marshalled by encoding/json,
    # age-encrypted to the machine's published key; keys sorted; no services, no binding.
    plaintext = go_json({"MATRIX_TOKEN": matrix_token.reveal(), "github-token": CANARY})
    content = {
        "version": 1,
        "principal": user,
        "encrypted_for": [machine.machine.user_id],
        "keys": ["MATRIX_TOKEN", "github-token"],
        "ciphertext": go_base64(age_keys.encrypt(plaintext, [machine.public_key])),
        "provisioned_by": fleet.creds.admin_user,
        "provisioned_at": "2026-11-28T00:00:00Z",
        "signature": "",
    }
    admin.put_state(config_room, rooms.CREDENTIALS, names.state_key(localpart, server), content)
    return user, content


def _machine_state(fleet: Fleet, machine: Enrolled, kind: str) -> dict[str, Any] | None:
    admin = credentials.admin_client(fleet.creds)
    server = fleet.hub.server_name
    room = admin.resolve_alias(names.room_alias(names.machine_room_localpart(fleet.name), server))
    assert room is not None
    return admin.get_state(room, kind, names.state_key(machine.machine.localpart, server))


def _principal_status(fleet: Fleet, machine: Enrolled, user: str) -> dict[str, Any]:
    status = _machine_state(fleet, machine, rooms.MACHINE_STATUS) or {}
    return dict(status.get("principals", {}).get(user) or {})


@pytest.mark.slow
def test_an_upstream_bundle_runs_only_where_the_machine_allows_it(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    run_dir.chmod(0o751)  # the sandbox's uid passes through to its socket link
    sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
    logs = ""
    try:
        with (
            echo_upstream() as upstream,
            sandboxd(run_dir, state, sandbox_dir, **fleet_of(fleet)),
        ):
            user, _ = _publish_upstream_principal(fleet, machine, upstream)
            result = workspace_dir(sandbox_dir, user) / "result.json"
            socket = run_dir / names.proxy_socket_relpath(names.parse_user_id(user)[0])

            # Refused by default: one line naming the principal and the choice.
            with (
                # Upstream writes nothing signed: both machines take unsigned events.
                launcher(name, state, run_dir, *broker_args(run_dir), *UNSIGNED) as refusing,
                daemon(name, state, run_dir) as the_daemon,
            ):
                error = eventually(lambda: _principal_status(fleet, machine, user).get("error"))
                assert error.startswith(f"credentials for {user}: unbound bundle refused")
                assert "--allow-unbound-bundles" in error
                assert "\n" not in error
                assert _principal_status(fleet, machine, user)["status"] == "failed"
                assert not socket.exists()
                assert not result.exists()
                # Published once at start, in upstream's shape.
                info = eventually(lambda: _machine_state(fleet, machine, rooms.MACHINE_INFO))
                assert info["principal"] == machine.machine.user_id
                assert {"hostname", "kernel_version", "cpu", "memory_total_mb"} <= set(info)
                assert the_daemon.log().count("machine info published") == 1
                logs += refusing.log() + the_daemon.log()

            # Allowed on this machine: served, routed by the template, Matrix as itself.
            with (
                launcher(
                    name,
                    state,
                    run_dir,
                    *broker_args(run_dir),
                    *UNSIGNED,
                    "--allow-unbound-bundles",
                )
                as allowing,
            ):  # fmt: skip
                with daemon(name, state, run_dir) as the_daemon:
                    served = json.loads(
                        eventually(lambda: result.exists() and result.read_text(), 60)
                    )
                    # The token reached the upstream; its echo showed the workload `*`s.
                    assert f"bearer {CANARY}" in echo_authorizations()
                    assert served == {"api": f"bearer {stars(CANARY)}", "user_id": user}
                    status = eventually(
                        lambda: (
                            _principal_status(fleet, machine, user).get("status") == "running"
                            and _principal_status(fleet, machine, user)
                        )
                    )
                    assert "error" not in status
                    assert status["template"].endswith("/template:upstream-worker")
                    allowing.wait_for("serving an unbound bundle")
                    logs += the_daemon.log()
                # Stopped, its proxy and workload run on (as a launcher's do) for the next.
                assert allowing.stop() == 0
                logs += allowing.log()
                assert socket.exists()
                assert len(proxies_under(run_dir)) == 1

                # Switched back to refusing: the next launcher stops what it adopted.
                with launcher(name, state, run_dir, *broker_args(run_dir)) as refusing:
                    at = refusing.wait_for("stopping an adopted proxy this launcher would not")
                    assert f"credentials for {user}: unbound bundle refused" in refusing.lines[at]
                    assert not socket.exists()
                    assert not list((run_dir / "launcher" / "sandboxes").glob("*.json"))
                    assert proxies_under(run_dir) == []
                    logs += refusing.log()
    finally:
        kill_sandboxes_under(run_dir)
    assert CANARY not in logs
