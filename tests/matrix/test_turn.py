"""TURN end to end (`bureau hub up --turn`): a principal, on a real launcher and daemon,
asks its proxy's built-in `matrix` service for credentials as itself; coturn's own client
(turnutils_uclient) allocates a relay with them; coturn refuses them altered or expired;
and the shared secret they are made from is nowhere but the hub's two 0600 files.

turnutils_uclient exits 255 whether or not it allocated: after the allocation it binds a
channel to its peer, and the only peer there is here is on loopback, which the hub's
coturn refuses (403 Forbidden IP) as it must. Success is read from what it prints: the
relay address it was given, or "Cannot complete Allocation"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningHub, free_port, make_fleet, one_line_error, run
from hub_fleet import running_hub
from launcher_proc import daemon, launcher
from machine_helpers import enroll, eventually, proxy_socket
from processes import unix_request

TURN_SERVER = "/http/matrix/_matrix/client/v3/voip/turnServer"


@pytest.fixture(scope="module")
def turn_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state = tmp_path_factory.mktemp("turn-hub")
    with running_hub(state, bcrypt_rounds=4, turn_port=free_port()) as running:
        yield running


def _turn_port(hub: RunningHub) -> int:
    settings = hub.hub.settings()
    assert settings is not None
    assert settings.turn_port is not None
    return settings.turn_port


def _allocates(port: int, username: str, password: str) -> bool:
    """One allocation against the hub's coturn, as a TURN client makes it."""
    result = subprocess.run(
        ["turnutils_uclient", "-v", "-p", str(port), "-n", "1", "-c",
         "-e", "127.0.0.1", "-r", "3480", "-u", username, "-w", password,
         "127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    if "Received relay addr: 127.0.0.1:" in output:
        assert "channel bind: error 403 (Forbidden IP)" in output, output
        return True
    assert "Cannot complete Allocation" in output, output
    return False


def _mint(secret: bytes, user: str, expiry: int) -> tuple[str, str]:
    """Credentials as the TURN REST API makes them (what Synapse does with the secret)."""
    username = f"{expiry}:{user}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _turn_credentials(socket: Path) -> dict[str, Any] | None:
    try:
        reply = unix_request(socket, "GET", TURN_SERVER)
    except OSError:
        return None
    return reply.json() if reply.status == 200 else None


def _files_holding(needle: bytes, *roots: Path) -> set[Path]:
    found = set()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    if needle in path.read_bytes():
                        found.add(path)
                except OSError:
                    pass
    return found


def _processes_holding(needle: bytes) -> list[str]:
    """Every process's argv and environment on this machine, searched."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            for what in ("cmdline", "environ"):
                try:
                    if needle in (entry / what).read_bytes():
                        found.append(f"{entry.name}/{what}")
                except OSError:
                    pass  # gone meanwhile
    return found


@pytest.mark.slow
def test_a_principal_gets_turn_credentials_through_its_proxy_and_coturn_relays_with_them(
    turn_hub: RunningHub, tmp_path: Path, run_dir: Path
) -> None:
    fleet = make_fleet(turn_hub, tmp_path)
    machine = enroll(fleet, tmp_path)
    name = machine.machine.short_name
    ns = fleet.name.split("/")[0]
    user = f"@{fleet.name}/agent/caller:{turn_hub.server_name}"
    template = tmp_path / "caller.json"
    template.write_text(
        json.dumps({"inherits": [f"{ns}/template:agent-base"], "command": ["/usr/bin/env"]})
    )
    pushed = run("bureau", "template", "push", template, "--name", "caller",
                 "--credential-file", fleet.credential_file)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    port = _turn_port(turn_hub)
    with (
        launcher(name, machine.state_dir, run_dir) as the_launcher,
        daemon(name, machine.state_dir, run_dir) as the_daemon,
    ):
        created = run("bureau", "agent", "create", "caller", "--machine", name, "--name",
                      "agent/caller", "--credential-file", fleet.credential_file)  # fmt: skip
        assert created.returncode == 0, created.stderr
        socket = proxy_socket(run_dir, "agent/caller")
        before = int(time.time())
        turn = eventually(lambda: _turn_credentials(socket))
        after = int(time.time())
        logs = the_launcher.log() + the_daemon.log()

    # Minted by Synapse for the principal itself, for ten minutes, for this coturn.
    expiry, _, owner = turn["username"].partition(":")
    assert owner == user
    assert before + 600 <= int(expiry) <= after + 600
    assert turn["ttl"] == 600
    assert turn["uris"] == [
        f"turn:127.0.0.1:{port}?transport=udp",
        f"turn:127.0.0.1:{port}?transport=tcp",
    ]
    assert _allocates(port, turn["username"], turn["password"])

    # An altered password, and a username altered to last longer, are refused.
    password = turn["password"]
    altered = ("A" if password[0] != "A" else "B") + password[1:]
    assert not _allocates(port, turn["username"], altered)
    assert not _allocates(port, f"{int(expiry) + 3600}:{user}", password)

    # Expired credentials, correctly made from the real secret, are refused; the same
    # made to expire a minute from now are not, so the expiry is what coturn refused.
    secret = turn_hub.hub.turn_secret_file.read_bytes().strip()
    now = int(time.time())
    assert not _allocates(port, *_mint(secret, user, now - 60))
    assert _allocates(port, *_mint(secret, user, now + 60))

    # The secret: in the hub's 0600 secret file and coturn's 0600 config, nowhere else
    # (Synapse reads the file: its config names it); never in argv, environment or logs.
    state = turn_hub.hub.dir
    allowed = {turn_hub.hub.turn_secret_file, state / "turn" / "turnserver.conf"}
    assert {stat.S_IMODE(p.stat().st_mode) for p in allowed} == {0o600}
    assert _files_holding(secret, state, tmp_path, run_dir) == allowed
    assert _processes_holding(secret) == []
    for text in (logs, created.stdout, created.stderr, json.dumps(turn)):
        assert secret.decode() not in text


def test_status_names_turn_and_the_secret_stays_out_of_synapses_config(
    turn_hub: RunningHub,
) -> None:
    port = _turn_port(turn_hub)
    status = run("bureau", "hub", "status", "--state-dir", turn_hub.hub.dir)
    assert status.returncode == 0, status.stdout
    assert f"turn 127.0.0.1:{port} udp+tcp running pid=" in status.stdout
    config = (turn_hub.hub.dir / "homeserver.yaml").read_text()
    assert f"turn_shared_secret_path: {turn_hub.hub.turn_secret_file}" in config
    assert turn_hub.hub.turn_secret_file.read_text().strip() not in config


def test_turn_is_not_added_to_a_running_hub(hub: RunningHub) -> None:
    """Synapse reads its TURN settings at start: a running hub without them says how."""
    result = run("bureau", "hub", "up", "--state-dir", hub.hub.dir, "--turn")
    assert result.returncode == 1
    assert "this hub runs without TURN; `bureau hub down` it first" in one_line_error(result)
