"""`bureau agent create|list|show|destroy` against the real Synapse, a real launcher and
daemon: the principal gets its own Matrix account and reaches Matrix as itself through its
proxy's built-in `matrix` service without ever holding its token; create again
converges; destroy undoes all of it and can be run again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, one_line_error, run
from launcher_proc import daemon, launcher, proxies_under
from machine_helpers import enroll, eventually, proxy_socket, served_token, services_file
from processes import echo_upstream, unix_request

from bureau.matrix.client import segment
from bureau.operator import credentials

CANARY = "agent-api-canary-7d1e"


def _agent(fleet: Fleet, *args: str | Path, stdin: str | None = None) -> Any:
    return run("bureau", "agent", *args, "--credential-file", fleet.credential_file, stdin=stdin)


def _whoami(socket: Path) -> str | None:
    try:
        reply = unix_request(socket, "GET", "/http/matrix/_matrix/client/v3/account/whoami")
    except OSError:
        return None
    return str(reply.json().get("user_id")) if reply.status == 200 else None


@pytest.mark.slow
def test_an_agent_from_create_to_destroy(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    ns = fleet.name.split("/")[0]
    user = f"@{fleet.name}/agent/bot:{fleet.hub.server_name}"
    template = tmp_path / "bot.json"
    template.write_text(
        json.dumps(
            {
                "inherits": [f"{ns}/template:agent-base"],
                "command": ["/usr/bin/env"],
                "required_credentials": ["API_TOKEN"],
            }
        )
    )
    pushed = run("bureau", "template", "push", template, "--name", "bot",
                 "--credential-file", fleet.credential_file)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    with (
        echo_upstream() as upstream,
        launcher(name, state, run_dir) as the_launcher,
        daemon(name, state, run_dir) as the_daemon,
    ):
        services = services_file(tmp_path, upstream)
        create = ("create", "bot", "--machine", name, "--name", "agent/bot")
        without = _agent(fleet, *create, "--services", services)
        assert without.returncode != 0
        assert "and its services need API_TOKEN, TOKEN" in one_line_error(without)

        secrets = f"API_TOKEN={CANARY}\nTOKEN={CANARY}\n"
        created = _agent(fleet, *create, "--services", services, "--secrets-file", "-",
                         stdin=secrets)  # fmt: skip
        assert created.returncode == 0, created.stderr
        assert f"registered {user}" in created.stdout
        socket = proxy_socket(run_dir, "agent/bot")
        # Through its proxy the workload is itself on Matrix, and its API call carries
        # the injected credential.
        assert eventually(lambda: _whoami(socket)) == user
        assert served_token(socket) == f"Bearer {CANARY}"  # the workload saw `*`s

        again = _agent(fleet, *create)
        assert again.returncode == 0, again.stderr
        assert "registered" not in again.stdout  # the same account, not a second one
        assert "provisioned" not in again.stdout  # its bundle already holds its token

        listed = json.loads(_agent(fleet, "list", "--json").stdout)
        mine = [a for a in listed if a["principal"] == user]
        assert mine == [
            {
                "principal": user,
                "machine": machine.machine.localpart,
                "template": f"{ns}/template:bot",
                "auto_start": True,
                "keys": ["API_TOKEN", "MATRIX_TOKEN", "TOKEN"],
            }
        ]
        shown = _agent(fleet, "show", "agent/bot")
        assert json.loads(shown.stdout) == mine

        destroyed = _agent(fleet, "destroy", "agent/bot")
        assert destroyed.returncode == 0, destroyed.stderr
        assert f"account {user} deactivated" in destroyed.stdout
        eventually(lambda: not socket.exists() and proxies_under(run_dir) == [])
        again = _agent(fleet, "destroy", "agent/bot")
        assert again.returncode == 0, again.stderr
        assert "unassigned" not in again.stdout
        assert "tombstoned" not in again.stdout

        # Created again after a destroy: the same account, reactivated, and it serves.
        back = _agent(fleet, *create, "--services", services, "--secrets-file", "-",
                      stdin=secrets)  # fmt: skip
        assert back.returncode == 0, back.stderr
        assert f"reactivated {user}" in back.stdout
        assert eventually(lambda: _whoami(socket)) == user
        assert _agent(fleet, "destroy", "agent/bot").returncode == 0
        logs = the_launcher.log() + the_daemon.log()
    admin = credentials.admin_client(fleet.creds)
    account = admin.call("GET", f"/_synapse/admin/v2/users/{segment(user)}", what="account")
    assert account["deactivated"] is True
    for output in (created.stdout, created.stderr, logs):
        assert CANARY not in output


def _account(fleet: Fleet, user: str) -> int:
    admin = credentials.admin_client(fleet.creds)
    path = f"/_synapse/admin/v2/users/{segment(user)}"
    return admin.send("GET", path, what="account").status


def test_what_agent_create_refuses_before_anything_exists(fleet: Fleet, tmp_path: Path) -> None:
    """A machine is no principal; MATRIX_TOKEN goes nowhere but the hub, and is never
    given; a service's credential must be given. Each is one line, and no account is
    registered."""
    machine = enroll(fleet, tmp_path)
    name = machine.machine.short_name
    ns = fleet.name.split("/")[0]
    stealing = tmp_path / "steal.json"
    stealing.write_text(json.dumps({
        "inherits": [f"{ns}/template:agent-base"], "command": ["/bin/true"],
        "proxy_services": {"x": {"upstream": "https://elsewhere.example",
                                 "inject_headers": {"Authorization": "MATRIX_TOKEN"}}},
    }))  # fmt: skip
    push = ("template", "push", stealing, "--name", "steal")
    assert run("bureau", *push, "--credential-file", fleet.credential_file).returncode == 0
    cases: list[tuple[tuple[str | Path, ...], str | None, str]] = [
        (("create", "agent-base", "--machine", name, "--name", name), None, "is a machine"),
        (("destroy", name), None, "is a machine"),
        (("create", "steal", "--machine", name, "--name", "agent/thief"), None,
         "MATRIX_TOKEN goes only to the built-in matrix service"),
        (("create", "agent-base", "--machine", name, "--name", "agent/thief",
          "--secrets-file", "-"), "MATRIX_TOKEN=mine\n", "is minted by bureau"),
        (("create", "agent-base", "--machine", name, "--name", "agent/thief",
          "--services", services_file(tmp_path, "http://127.0.0.1:9")), None, "need TOKEN"),
    ]  # fmt: skip
    for args, stdin, problem in cases:
        result = _agent(fleet, *args, stdin=stdin)
        assert result.returncode != 0, args
        assert problem in one_line_error(result), (args, result.stderr)
        assert "mine" not in result.stderr
    assert _account(fleet, f"@{fleet.name}/agent/thief:{fleet.hub.server_name}") == 404
    assert _account(fleet, machine.machine.user_id) == 200  # not deactivated
